"""`journeymap simulate`: simulated customers as events, with the ground truth beside them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from processors.errors import ServiceError
from simulator.catalog import SEGMENT_NAMES
from simulator.model import SimConfig, Simulation
from simulator.model import simulate as run_simulation
from simulator.writer import write_simulation
from streams.cli import settings_from


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=False,
    )


def _produce(sim: Simulation, bootstrap: str, topic: str, rate: float | None,
             quiet: bool) -> None:
    from streams.producer import EventProducer, check_broker

    if not check_broker(bootstrap, topic):
        raise click.ClickException(
            f"topic {topic!r} does not exist at {bootstrap}; create it with "
            "`journeymap topics create`, or pass --topic"
        )
    producer = EventProducer(bootstrap, topic, rate_per_s=rate)
    started = time.perf_counter()
    with _progress(quiet) as bar:
        task = bar.add_task(f"producing to {topic}", total=len(sim.lines))
        for i, line in enumerate(sim.lines, 1):
            producer.send(line)
            if i % 5000 == 0:
                bar.update(task, completed=i)
        bar.update(task, completed=len(sim.lines))
        stats = producer.close(timeout_s=60.0)
    elapsed = time.perf_counter() - started
    click.echo(
        f"produced {stats.n_delivered}/{stats.n_sent} messages to {topic} in {elapsed:.1f} s"
        f" ({stats.n_delivered / max(elapsed, 1e-9):,.0f}/s)"
    )
    if not stats.ok:
        raise ServiceError(
            f"{stats.n_failed} messages failed and {stats.n_undelivered} were not delivered "
            f"in time; errors: {dict(stats.errors)}"
        )


@click.command("simulate")
@click.option("--customers", type=click.IntRange(0), default=1000, show_default=True,
              help="How many customers to simulate (about 10 events each).")
@click.option("--seed", type=click.IntRange(0, (1 << 24) - 1), default=0, show_default=True,
              help="Same seed, same bytes.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Events file (JSON Lines); the truth goes to <name>.truth.jsonl beside it.")
@click.option("--start", type=click.DateTime(formats=["%Y-%m-%d"]), default="2026-01-01",
              show_default=True, help="First day (UTC).")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=90.0,
              show_default=True, help="Length of the date range.")
@click.option("--gzip", "gzip_out", is_flag=True, help="Gzip both files (adds .gz).")
@click.option("--duplicates", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Share of events delivered twice.")
@click.option("--late", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Share of events delivered 1-10 minutes late.")
@click.option("--very-late", type=click.FloatRange(0, 1), default=0.001, show_default=True,
              help="Share delivered 75 min - 6 h late (past the allowed lateness).")
@click.option("--drift-segment", type=click.Choice([*SEGMENT_NAMES, "none"]),
              default="self_serve_dev", show_default=True,
              help="Segment whose conversion drops at the drift ('none': no drift).")
@click.option("--drift-day", type=click.FloatRange(min=0), default=None,
              help="Day of the drift after --start (default: the middle of the range).")
@click.option("--to-kafka", is_flag=True, help="Also produce the events, in file order.")
@click.option("--topic", default=None, help="Topic for --to-kafka (default: kafka.topics.raw).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Events per second for --to-kafka (default: as fast as possible).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def simulate(
    ctx: click.Context,
    customers: int,
    seed: int,
    out: Path | None,
    start: datetime,
    days: float,
    gzip_out: bool,
    duplicates: float,
    late: float,
    very_late: float,
    drift_segment: str,
    drift_day: float | None,
    to_kafka: bool,
    topic: str | None,
    rate: float | None,
    quiet: bool,
) -> None:
    """Simulate customer journeys with known ground truth.

    Writes the events in delivery order (with ~1% duplicates and late arrivals) to --out, and
    the truth (segments, identities, true sequences, outcomes, drift) beside it. With
    --to-kafka the same stream goes to Kafka. Example:

        journeymap simulate --customers 10000 --seed 7 --out data/events.jsonl
    """
    if out is None and not to_kafka:
        raise click.UsageError("give --out PATH, --to-kafka, or both")
    settings = settings_from(ctx)
    cfg = SimConfig(
        customers=customers,
        seed=seed,
        start_ms=int(start.replace(tzinfo=UTC).timestamp() * 1000),
        days=days,
        duplicate_rate=duplicates,
        late_rate=late,
        very_late_rate=very_late,
        allowed_lateness_s=settings.journey.allowed_lateness_s,
        drift_segment=None if drift_segment == "none" else drift_segment,
        drift_day=drift_day,
    )
    started = time.perf_counter()
    with _progress(quiet) as bar:
        task = bar.add_task("simulating customers", total=customers)
        sim = run_simulation(cfg, progress=lambda n: bar.advance(task, n))
    truth = sim.truth
    d = truth.delivery
    click.echo(
        f"{customers} customers, {truth.n_events} events, {d.n_lines} lines "
        f"({len(d.duplicates)} duplicates, {len(d.lateness_ms)} out of order, "
        f"{len(d.beyond_allowed_lateness)} past the allowed lateness) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    if out is not None:
        summary = write_simulation(sim, out, gzip_out)
        click.echo(
            f"wrote {summary.events_path} ({summary.n_bytes / 1e6:.1f} MB) and "
            f"{summary.truth_path} in {time.perf_counter() - started:.1f} s"
        )
    if to_kafka:
        _produce(sim, settings.kafka.bootstrap_servers, topic or settings.kafka.topics.raw,
                 rate, quiet)


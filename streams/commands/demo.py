"""`journeymap demo`: simulate, replay, report, on embedded defaults."""

from __future__ import annotations

from pathlib import Path

import click

from streams.commands.replay import run_replay
from streams.commands.report import show_report


@click.command("demo")
@click.option("--customers", default=5_000, show_default=True, type=click.IntRange(10),
              help="Customers to simulate (about 10 events each).")
@click.option("--seed", default=7, show_default=True, type=click.IntRange(0, 16_777_215))
@click.option("--dir", "workdir", default=".journeymap/demo", show_default=True,
              type=click.Path(file_okay=False), help="Where the events, database and report go.")
@click.option("--models/--no-models", "with_models", default=True, show_default=True)
@click.pass_context
def demo(ctx: click.Context, customers: int, seed: int, workdir: str, with_models: bool) -> None:
    """The whole product in one command, with nothing to install or start.

    Simulates CUSTOMERS customers with known ground truth (journeymap simulate), replays their
    events through validation, identity resolution, journeys, transitions, funnels, attribution
    and the online models into embedded ClickHouse (journeymap replay), then prints the journey
    map and writes it as HTML (journeymap report). Run it again to start afresh.
    """
    from streams.commands.simulate import simulate

    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    events = root / "events.jsonl"
    db = root / "chdb"
    if db.exists():
        import shutil

        shutil.rmtree(db)
    click.echo(f"1/3 simulating {customers:,} customers -> {events}", err=True)
    ctx.invoke(simulate, customers=customers, seed=seed, out=events)
    click.echo(f"2/3 replaying into embedded ClickHouse at {db}", err=True)
    run_replay(ctx, (str(events),), str(db), with_models, 20_000, False)
    click.echo("3/3 the journey map", err=True)
    show_report(ctx, str(db), str(root / "report.html"), False)
    click.echo(
        f"\nexplore it: journeymap query --clickhouse {db} "
        "\"SELECT channel, count() FROM touchpoints GROUP BY channel\"",
        err=True,
    )
    click.echo(f"see it live: journeymap dashboard --clickhouse {db}  (http://127.0.0.1:8080/)",
               err=True)

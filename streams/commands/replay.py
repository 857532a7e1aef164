"""`journeymap replay FILE...`: run a history through the whole pipeline into ClickHouse."""

from __future__ import annotations

import gc
import logging
import time

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from streams.cli import settings_from
from streams.files import Chunk

log = logging.getLogger(__name__)

# Young collections once per this many new container objects (CPython's default is 700).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Process-wide collector settings for a long batch job, once, after start-up.

    Everything imported so far moves to the permanent generation (`gc.freeze`), so collections
    no longer walk it, and young collections run less often: the chain allocates millions of
    short-lived tuples and records, almost none in cycles (reference counting frees them).
    Processors only pause the collector per batch (`processors.chain.gc_paused`).
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def run_replay(
    ctx: click.Context,
    files: tuple[str, ...],
    url: str | None,
    with_models: bool,
    chunk_lines: int,
    quiet: bool,
    serve_redis: bool | None = None,
) -> None:
    from processors.identity_native import engine_of
    from processors.journeys_native import engine_of as journey_engine_of
    from processors.validation import decode_engine
    from sinks.clickhouse import connect, migrate
    from streams.files import check_files, total_bytes
    from streams.replay import Replayer

    settings = settings_from(ctx)
    tune_gc()
    target = settings.clickhouse
    if url:
        target = target.model_copy(update={"url": url})
    paths = check_files(files)
    console = Console(stderr=True, quiet=quiet)
    with connect(target) as store:
        migrate(store, ttl_days=target.ttl_days, ttl_days_by_table=target.ttl_days_by_table)
        replayer = Replayer(
            settings.processing(),
            store,
            flush_rows=target.flush_rows,
            flush_interval_s=max(target.flush_interval_s, 5.0),
            retry_total_s=target.retry_total_s,
            with_models=with_models,
            chunk_lines=chunk_lines,
            models=settings.models,
        )
        where = f"embedded chDB at {target.url}" if store.embedded else target.url
        engine = engine_of(replayer.chain.resolver)
        journey_engine = journey_engine_of(replayer.chain.journeys)
        log.info("identity engine: %s (identity.engine = %s); journey engine: %s "
                 "(journey.engine = %s); decode engine: %s (decode.engine = %s)", engine,
                 settings.identity.engine, journey_engine, settings.journey.engine,
                 decode_engine(settings.decode.engine), settings.decode.engine)
        console.print(f"replaying {len(paths)} file(s) into {where} (database {store.database}); "
                      f"identity engine: {engine}; journey engine: {journey_engine}")
        with Progress(
            TextColumn("[bold]replay"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
        ) as bar:
            task = bar.add_task("replay", total=total_bytes(paths), rate="")
            started = time.perf_counter()

            def progress(chunk: Chunk, counters: dict[str, int]) -> None:
                rate = replayer.stats.n_lines / max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=chunk.bytes_done, rate=f"{rate:,.0f} events/s")

            stats = replayer.run(paths, progress)
        if serve_redis if serve_redis is not None else settings.serving.replay_to_redis:
            from streams.serve import publish_replay, serving_store

            n_states, n_ids = publish_replay(replayer, serving_store(settings))
            console.print(f"serving state: {n_states:,} customers, {n_ids:,} identifiers -> "
                          f"Redis at {settings.redis.url}")
    table = Table("counter", "value", title=f"replay: {stats.n_lines:,} lines in "
                  f"{stats.elapsed_s:.1f} s ({stats.events_per_s:,.0f} events/s)")
    for key, value in stats.counters.items():
        table.add_row(key, f"{value:,}")
    for key, value in sorted(stats.rows.items()):
        table.add_row(f"rows -> {key}", f"{value:,}")
    console.print(table)


@click.command("replay")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--clickhouse", "url", default=None,
              help="Override clickhouse.url: a path (embedded chDB) or http://host:8123.")
@click.option("--models/--no-models", "with_models", default=True, show_default=True,
              help="Run the online models (segments, propensity, sentiment, drift).")
@click.option("--chunk-lines", default=20_000, show_default=True, type=click.IntRange(100),
              help="Lines per processing batch.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("--serve-redis/--no-serve-redis", default=None,
              help="Also write every customer's serving state to Redis for the serving API "
                   "(default: the serving.replay_to_redis setting).")
@click.pass_context
def replay(ctx: click.Context, files: tuple[str, ...], url: str | None, with_models: bool,
           chunk_lines: int, quiet: bool, serve_redis: bool | None) -> None:
    """Replay JSON Lines history FILES (plain or .gz) through validation, identity resolution,
    journeys, transitions, funnels, attribution and the models, into ClickHouse.

    Embedded chDB at clickhouse.url by default. Replaying the same files again leaves the same
    tables (rows are idempotent), so an interrupted replay is resumed by running it again.
    Bad lines are kept in the `dead_letters` table with their reason and file:line.
    """
    run_replay(ctx, files, url, with_models, chunk_lines, quiet, serve_redis)

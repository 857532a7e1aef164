"""`journeymap worker`: one streaming worker (Faust) of the consumer group."""

from __future__ import annotations

import click

from streams.cli import settings_from


@click.command("worker")
@click.option("--web-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the worker's web server (/metrics), on 127.0.0.1 "
                   "(default: worker.web_port, 6066). Give each worker on a machine its own.")
@click.option("--loglevel", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), default=".journeymap/worker",
              show_default=True, help="Where Faust keeps its local files.")
@click.option("--models/--no-models", "with_models", default=True, show_default=True,
              help="Run the online models (scores, segments, sentiment, drift alerts).")
@click.pass_context
def worker(ctx: click.Context, web_port: int | None, loglevel: str, workdir: str,
           with_models: bool) -> None:
    """Run a streaming worker: validate and resolve touchpoints.raw, then journeys, transitions,
    funnels and models per customer partition, into ClickHouse, scores and alerts.

    Start several (each with its own --web-port) to share the partitions of one consumer group;
    a crashed or stopped worker's partitions move to the others, restored from their Redis
    checkpoints. Needs Kafka topics (`journeymap topics create`), Redis and a migrated
    ClickHouse (`journeymap migrate`). SIGTERM flushes rows and checkpoints, then exits.
    """
    from pathlib import Path

    from faust.worker import Worker

    from sinks.clickhouse import check_schema, connect
    from streams import drain
    from streams.app import Runtime, create_app
    from streams.topics import check_topics

    overrides = {}
    settings = settings_from(ctx)
    if web_port is not None:
        overrides["worker"] = settings.worker.model_copy(update={"web_port": web_port})
        settings = settings.model_copy(update=overrides)
    partitions = check_topics(settings.kafka)
    with connect(settings.clickhouse) as store:
        check_schema(store)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    runtime = Runtime(settings, with_models=with_models)
    runtime.resolved_partitions = partitions[settings.kafka.topics.resolved]
    app = create_app(settings, runtime=runtime)
    faust_worker = Worker(
        app,
        loglevel=loglevel,
        workdir=workdir,
        redirect_stdouts=False,
    )
    # Faust's startup spinner (at --loglevel warning or above) sets the root logger to DEBUG so
    # that every log record spins it: then each message sent built a debug record in Faust and
    # aiokafka, about 6 % of a busy worker's CPU (py-spy, issue 6). Without it the root logger
    # keeps --loglevel.
    faust_worker.spinner = None
    # Faust's fetcher wrapped each message's delivery in four asyncio tasks: a third of a Faust
    # agent's event loop (streams.drain, bench/bench_passthrough.py, issue 6).
    drain.install()
    faust_worker.execute_from_commandline()

"""`journeymap dashboard`: the live dashboard and the serving API, in one local web server."""

from __future__ import annotations

import click

from streams.cli import settings_from


@click.command("dashboard")
@click.option("--clickhouse", "url", default=None,
              help="Override clickhouse.url: a path for embedded chDB (default .journeymap/chdb) "
                   "or http://host:8123 for a ClickHouse server.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Keep loopback unless a proxy with authentication "
                   "sits in front: the dashboard has no login.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="Port to listen on.")
@click.pass_context
def dashboard(ctx: click.Context, url: str | None, host: str, port: int) -> None:
    """Serve the dashboard (journey map, funnel, segments, attribution, at-risk list, adoption
    gaps, alerts, experiment results) over the analyst tables, and the serving API under /api.

    Every page takes filters as query parameters (segment, channel, cohort, window, end) and
    shows each figure against the previous period. With embedded chDB the dashboard owns the
    data directory while it runs: stop it (Ctrl-C) before `journeymap replay` writes there, or
    point both at a ClickHouse server. Example after `journeymap demo`:

        journeymap dashboard --clickhouse .journeymap/demo/chdb
    """
    import uvicorn

    from sinks.clickhouse import check_schema, connect
    from streams.web.app import create_app
    from streams.web.dashboard import close_store

    settings = settings_from(ctx)
    if url:
        settings = settings.model_copy(
            update={"clickhouse": settings.clickhouse.model_copy(update={"url": url})}
        )
    store = connect(settings.clickhouse)  # fails now, with its message, if locked or down
    try:
        check_schema(store)
    except Exception:
        store.close()
        raise
    app = create_app(settings)
    app.state.dashboard_store = store
    where = "embedded chDB at " + store.url if store.embedded else store.url
    click.echo(f"dashboard on http://{host}:{port}/ reading {where} (Ctrl-C stops it)", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        close_store(app)

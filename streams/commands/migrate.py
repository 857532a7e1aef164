"""`journeymap migrate`: bring the ClickHouse schema up to this version of journeymap."""

from __future__ import annotations

import click

from sinks.clickhouse import connect
from sinks.clickhouse import migrate as apply_migrations
from streams.cli import settings_from


@click.command("migrate")
@click.option("--clickhouse", "url", default=None, help="Override clickhouse.url (path or URL).")
@click.pass_context
def migrate(ctx: click.Context, url: str | None) -> None:
    """Apply pending schema migrations (idempotent) and set the TTLs (clickhouse.ttl_days*).

    Workers and the replay refuse to start on a database that is behind; this fixes it.
    """
    settings = settings_from(ctx)
    target = settings.clickhouse
    if url:
        target = target.model_copy(update={"url": url})
    with connect(target) as store:
        result = apply_migrations(
            store, ttl_days=target.ttl_days, ttl_days_by_table=target.ttl_days_by_table
        )
    where = "embedded chDB at " + store.url if store.embedded else store.url
    for migration in result.applied:
        click.echo(f"applied {migration.version:04d}_{migration.name}")
    if result.applied:
        click.echo(
            f"database {result.database} ({where}): version {result.before} -> {result.after}"
        )
    else:
        click.echo(f"database {result.database} ({where}) is up to date at version {result.after}")
    click.echo(f"retention (TTL): {result.ttl}")

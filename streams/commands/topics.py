"""`journeymap topics create|list`: the public Kafka topics."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from streams.cli import settings_from


@click.group("topics")
def topics() -> None:
    """Create and list journeymap's Kafka topics (partitions and retention from settings)."""


@topics.command("create")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def create(ctx: click.Context, timeout_s: float) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    from streams.topics import create_topics

    settings = settings_from(ctx)
    table = Table("topic", "partitions", "retention", "status", "purpose")
    for spec, status in create_topics(settings.kafka, timeout_s):
        days = "forever" if spec.retention_ms < 0 else f"{spec.retention_ms / 86_400_000:g} d"
        table.add_row(spec.name, str(spec.partitions), days, status, spec.purpose)
    Console().print(table)


@topics.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """Show the topics journeymap expects and whether they exist."""
    from streams.topics import admin_client, topic_specs

    settings = settings_from(ctx)
    meta = admin_client(settings.kafka).list_topics(timeout=10)
    table = Table("topic", "expected partitions", "actual partitions", "purpose")
    for spec in topic_specs(settings.kafka):
        actual = meta.topics.get(spec.name)
        table.add_row(
            spec.name,
            str(spec.partitions),
            str(len(actual.partitions)) if actual else "missing",
            spec.purpose,
        )
    Console().print(table)

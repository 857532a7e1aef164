"""`journeymap services up|down|status`: local Kafka, Redis and ClickHouse without Docker."""

from __future__ import annotations

from collections.abc import Sequence

import click
from rich.console import Console
from rich.table import Table

from streams.cli import settings_from
from streams.services import ServiceManager, ServiceStatus, parse_only

_ONLY = click.option(
    "--only",
    default=None,
    metavar="NAMES",
    help="Comma-separated subset of kafka,redis,clickhouse (default: all three).",
)
_STYLE = {
    "running": "green",
    "external": "cyan",
    "stopped": "dim",
    "stale": "yellow",
    "unhealthy": "red",
}


def _manager(
    ctx: click.Context, start_timeout_s: float = 120.0, stop_timeout_s: float = 30.0
) -> ServiceManager:
    return ServiceManager(
        settings_from(ctx), start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s
    )


def _print(rows: Sequence[ServiceStatus]) -> None:
    table = Table(title="journeymap services")
    for column in ("service", "state", "pid", "address", "log"):
        table.add_column(column)
    for row in rows:
        style = _STYLE.get(row.state, "")
        table.add_row(
            row.name,
            f"[{style}]{row.state}[/{style}]" if style else row.state,
            str(row.pid or ""),
            row.address,
            str(row.log_file),
        )
    Console(width=160).print(table)


@click.group("services")
def services() -> None:
    """Start, stop and check local Kafka (KRaft), Redis and ClickHouse on 127.0.0.1.

    Ports come from the settings (kafka.bootstrap_servers, services.kafka_controller_port,
    redis.url, clickhouse.url when http://127.0.0.1:PORT else 8123, services.clickhouse_tcp_port).
    Logs, pid files and data live under services.home (default .journeymap/services).
    """


@services.command("up")
@_ONLY
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for each service to answer.",
)
@click.pass_context
def up(ctx: click.Context, only: str | None, timeout_s: float) -> None:
    """Start what is not running and wait until each service answers (idempotent)."""
    manager = _manager(ctx, start_timeout_s=timeout_s)
    _print(manager.up(parse_only(only)))


@services.command("down")
@_ONLY
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL.",
)
@click.pass_context
def down(ctx: click.Context, only: str | None, timeout_s: float) -> None:
    """Stop the services `up` started (by pid). External servers are left alone."""
    manager = _manager(ctx, stop_timeout_s=timeout_s)
    _print(manager.down(parse_only(only)))


@services.command("status")
@_ONLY
@click.pass_context
def status(ctx: click.Context, only: str | None) -> None:
    """Show each service's state; exit status 1 when any is not answering."""
    rows = _manager(ctx).status(parse_only(only))
    _print(rows)
    if any(row.state not in ("running", "external") for row in rows):
        ctx.exit(1)

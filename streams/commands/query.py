"""`journeymap query "SQL"`: read-only, parameterized SQL against the analyst tables."""

from __future__ import annotations

import csv
import io
from typing import Any

import click
import orjson

from sinks.clickhouse import QueryResult, check_schema, connect, parse_params, run_query
from streams.cli import settings_from


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def _render(result: QueryResult, fmt: str) -> str:
    if fmt == "json":
        records = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
        return orjson.dumps(records, default=str, option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([_text(v) for v in row] for row in result.rows)
        return out.getvalue().rstrip("\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(*result.columns, show_lines=False)
    for row in result.rows:
        table.add_row(*(_text(v) for v in row))
    console = Console(file=io.StringIO(), width=200)
    console.print(table)
    console.print(f"{len(result.rows)} row(s)")
    return console.file.getvalue().rstrip("\n")  # type: ignore[attr-defined]


@click.command("query")
@click.argument("sql")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A value for a {NAME:Type} placeholder in the SQL (repeatable).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option("--clickhouse", "url", default=None, help="Override clickhouse.url (path or URL).")
@click.pass_context
def query(ctx: click.Context, sql: str, params: tuple[str, ...], fmt: str, url: str | None) -> None:
    """Run one read-only SQL query; values go in as server-side parameters, never as text.

    Example: journeymap query "SELECT touchpoint, count() FROM touchpoints
    WHERE occurred_at >= now() - INTERVAL {days:UInt32} DAY GROUP BY touchpoint" -p days=7
    """
    settings = settings_from(ctx)
    target = settings.clickhouse
    if url:
        target = target.model_copy(update={"url": url})
    values = parse_params(params)
    with connect(target) as store:
        check_schema(store)
        result = run_query(store, sql, values)
    click.echo(_render(result, fmt))

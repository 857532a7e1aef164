"""`journeymap report`: the journey map in the terminal, or as a self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from streams.cli import settings_from


def show_report(ctx: click.Context, url: str | None, html_out: str | None, quiet: bool) -> None:
    from sinks.clickhouse import check_schema, connect
    from streams.report import gather, print_report, render_html

    settings = settings_from(ctx)
    target = settings.clickhouse
    if url:
        target = target.model_copy(update={"url": url})
    with connect(target) as store:
        check_schema(store)
        report = gather(store, list(settings.outcomes.conversion))
    if not quiet:
        print_report(report, Console())
    if html_out:
        Path(html_out).write_text(render_html(report), encoding="utf-8")
        click.echo(f"wrote {html_out}", err=True)


@click.command("report")
@click.option("--clickhouse", "url", default=None, help="Override clickhouse.url.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as one self-contained HTML file with charts.")
@click.option("--quiet", is_flag=True, help="Do not print the report in the terminal.")
@click.pass_context
def report(ctx: click.Context, url: str | None, html_out: str | None, quiet: bool) -> None:
    """Print the journey map from the analyst tables: overview, top paths, the transition
    matrix of the most common touchpoints, funnels with drop-off, attribution by channel,
    segments and the latest alerts."""
    show_report(ctx, url, html_out, quiet)

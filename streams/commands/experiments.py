"""`journeymap experiments record|assign|analyse|list`: the experiment loop from the terminal."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import Any

import click
import orjson

from streams.cli import settings_from


def _store(ctx: click.Context, url: str | None) -> Any:
    from sinks import clickhouse as ch

    settings = settings_from(ctx)
    target = settings.clickhouse
    if url:
        target = target.model_copy(update={"url": url})
    store = ch.connect(target)
    try:
        ch.check_schema(store)
    except Exception:
        store.close()
        raise
    return store


def _find(store: Any, experiment: str) -> tuple[Any, list[Any]]:
    from sinks import experiments as xs

    every = xs.interventions(store)
    mine = [i for i in every if i.experiment == experiment]
    if not mine:
        raise click.ClickException(
            f"no intervention names experiment {experiment!r}: record it first with "
            "`journeymap experiments record NAME --experiment ...`"
        )
    return mine[-1], every


_url = click.option("--clickhouse", "url", default=None,
                    help="Override clickhouse.url: a path (embedded chDB) or http://host:8123.")


@click.group("experiments")
def experiments() -> None:
    """Record interventions and A/B tests, assign customers to variants, analyse the outcomes.

    `record` says what changed, when and for which segment; with --experiment, --variants,
    --control and --outcome it is an A/B test. `assign` puts the customers of the segment
    (segment of their latest touchpoint) into variants (a stable hash: the same customer always
    gets the same variant).
    `analyse` compares each variant with the control per segment with a two-proportion z-test,
    says how many customers the minimum detectable effect needs, and warns on peeking and on
    overlapping interventions. See docs/experiments.md.
    """


@experiments.command("record")
@click.argument("name")
@click.option("--started-at", required=True,
              help="When the change went live: RFC 3339 with offset, e.g. 2026-03-01T00:00:00Z.")
@click.option("--ended-at", default=None, help="When it stopped (default: still running).")
@click.option("--segment", default="*", show_default=True, help="Segment it targets ('*': all).")
@click.option("--channel", default="*", show_default=True, help="Channel it targets ('*': all).")
@click.option("--description", default="", help="What changed, in words.")
@click.option("--experiment", default="", help="A/B test name (needs variants and a control).")
@click.option("--variants", default="", help="Comma-separated variant names, e.g. control,b.")
@click.option("--control", default="", help="The control variant.")
@click.option("--outcome", "outcomes", multiple=True,
              help="Touchpoint that counts as success (repeatable), e.g. --outcome purchase.")
@click.option("--planned-n", default=0, show_default=True, type=click.IntRange(0),
              help="Customers per variant planned before looking (0: not planned).")
@_url
@click.pass_context
def record(ctx: click.Context, name: str, started_at: str, ended_at: str | None, segment: str,
           channel: str, description: str, experiment: str, variants: str, control: str,
           outcomes: tuple[str, ...], planned_n: int, url: str | None) -> None:
    """Record an intervention NAME (a change for customers, or an A/B test)."""
    from pydantic import ValidationError

    from sinks import experiments as xs
    from streams.web.api import InterventionIn

    try:
        body = InterventionIn(
            name=name, description=description, segment=segment, channel=channel,
            experiment=experiment, variants=[v.strip() for v in variants.split(",") if v.strip()],
            control=control, outcome_touchpoints=list(outcomes),
            started_at=started_at, ended_at=ended_at,  # type: ignore[arg-type]
            planned_n_per_variant=planned_n,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'input'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        raise click.BadParameter(problems) from None
    iv = body.to_intervention("cli", int(time.time() * 1000))
    store = _store(ctx, url)
    try:
        xs.record_intervention(store, iv)
        overlapping = [o.name for o in xs.interventions(store) if iv.overlaps(o)]
    finally:
        store.close()
    click.echo(f"recorded intervention {iv.intervention_id} ({iv.name})")
    if overlapping:
        click.echo(f"warning: overlaps {', '.join(overlapping)} (same segment and time): their "
                   "effects cannot be told apart", err=True)


@experiments.command("assign")
@click.argument("experiment")
@click.option("--limit", default=100_000, show_default=True, type=click.IntRange(1),
              help="At most this many customers (by customer id).")
@click.option("--at", "at", default=None,
              help="Assignment time (RFC 3339); default: the intervention's start.")
@_url
@click.pass_context
def assign(ctx: click.Context, experiment: str, limit: int, at: str | None,
           url: str | None) -> None:
    """Assign the customers of EXPERIMENT's segment to its variants (once each)."""
    from processors.experiments import Assignment, assign_variant
    from sinks import experiments as xs

    store = _store(ctx, url)
    try:
        iv, _ = _find(store, experiment)
        at_ms = iv.started_at_ms
        if at:
            try:
                at_ms = int(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() * 1000)
            except ValueError:
                raise click.BadParameter(f"{at!r} is not an RFC 3339 time",
                                         param_hint="--at") from None
        customers = xs.customers_in_segment(store, iv.segment, limit)
        known = xs.assigned(store, experiment, [c for c, _ in customers])
        new = [
            Assignment(experiment, cid, assign_variant(experiment, cid, iv.variants), seg, at_ms)
            for cid, seg in customers if cid not in known
        ]
        xs.record_assignments(store, new)
    finally:
        store.close()
    per = Counter(a.variant for a in new)
    click.echo(f"assigned {len(new):,} new customers ({len(known):,} already assigned): "
               + ", ".join(f"{v} {per.get(v, 0):,}" for v in iv.variants))


@experiments.command("analyse")
@click.argument("experiment")
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0, 0.5,
              min_open=True, max_open=True), help="Significance level (before Bonferroni).")
@click.option("--power", default=0.8, show_default=True, type=click.FloatRange(0.5, 1,
              min_open=True, max_open=True), help="Power for the required sample size.")
@click.option("--mde", default=0.02, show_default=True, type=click.FloatRange(0, 1,
              min_open=True, max_open=True), help="Minimum detectable effect (absolute lift).")
@click.option("--save", is_flag=True, help="Also write the results to `experiment_results`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_url
@click.pass_context
def analyse_cmd(ctx: click.Context, experiment: str, alpha: float, power: float, mde: float,
                save: bool, as_json: bool, url: str | None) -> None:
    """Compare each variant of EXPERIMENT with the control, per segment and overall."""
    from rich.console import Console
    from rich.table import Table

    from processors.experiments import analyse
    from sinks import experiments as xs

    store = _store(ctx, url)
    try:
        iv, every = _find(store, experiment)
        report = analyse(iv, xs.outcomes(store, experiment), every, alpha=alpha, power=power,
                         mde=mde)
        if save:
            xs.save_results(store, report, int(time.time() * 1000))
    finally:
        store.close()
    if as_json:
        click.echo(orjson.dumps({
            "experiment": experiment, "warnings": list(report.warnings),
            "comparisons": [c.as_row(experiment, 0) for c in report.comparisons],
        }, option=orjson.OPT_INDENT_2).decode())
        return
    console = Console()
    table = Table("segment", "variant", "n", "rate", "control n", "control rate", "diff",
                  "95% CI", "p", "significant", "needed n",
                  title=f"{experiment}: {iv.name} (control {iv.control})")
    for c in report.comparisons:
        table.add_row(c.segment, c.variant, f"{c.n:,}", f"{c.rate:.2%}", f"{c.control_n:,}",
                      f"{c.control_rate:.2%}", f"{c.test.diff:+.2%}",
                      f"[{c.test.ci_low:+.2%}, {c.test.ci_high:+.2%}]", f"{c.test.p_value:.4f}",
                      "yes" if c.significant else "no", f"{c.required_n_per_variant:,}")
    console.print(table)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    for c in report.comparisons:
        for w in c.warnings:
            console.print(f"[yellow]{c.segment}/{c.variant}:[/] {w}")


@experiments.command("list")
@_url
@click.pass_context
def list_cmd(ctx: click.Context, url: str | None) -> None:
    """Every recorded intervention, oldest first."""
    from sinks import experiments as xs

    store = _store(ctx, url)
    try:
        for i in xs.interventions(store):
            span = f"{_iso(i.started_at_ms)} .. {_iso(i.ended_at_ms) or 'running'}"
            ab = ""
            if i.experiment:
                ab = f" experiment={i.experiment} variants={','.join(i.variants)}"
            click.echo(f"{i.intervention_id}  {i.name}  segment={i.segment}  {span}{ab}")
    finally:
        store.close()


def _iso(ms: int | None) -> str | None:
    from streams.web.api import _iso as iso

    return iso(ms)

"""`journeymap evaluate`: the online models measured against the simulator's ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from simulator.catalog import SEGMENT_NAMES


@click.command("evaluate")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--truth", "truth_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Ground truth of FILE (default: <name>.truth.jsonl beside it).")
@click.option("--customers", type=click.IntRange(min=1), default=4000, show_default=True,
              help="Customers to simulate when no FILE is given (about 10 events each).")
@click.option("--seed", type=click.IntRange(0, (1 << 24) - 2), default=1, show_default=True,
              help="Simulator seed; the stationary runs use the seeds after it.")
@click.option("--days", type=click.FloatRange(min=1), default=90.0, show_default=True,
              help="Length of the simulated history (the propensity horizon is 30 days).")
@click.option("--drift", "drift_segment", type=click.Choice([*SEGMENT_NAMES, "none"]),
              default="self_serve_dev", show_default=True,
              help="Segment whose conversion drops to a fifth halfway through ('none': none).")
@click.option("--stationary-customers", type=click.IntRange(min=0), default=None,
              help="Customers per stationary run (no drift) counting false alarms "
                   "(default: as many as the main run; 0: no stationary run).")
@click.option("--stationary-runs", type=click.IntRange(min=0), default=1, show_default=True,
              help="How many stationary runs (fresh models, seeds after --seed).")
@click.option("--river/--no-river", default=True, show_default=True,
              help="River's own models as baselines on the same examples: online logistic "
                   "regressions beside our propensity, KMeans / DBSTREAM beside our segments.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def evaluate(
    ctx: click.Context,
    file: Path | None,
    truth_path: Path | None,
    customers: int,
    seed: int,
    days: float,
    drift_segment: str,
    stationary_customers: int | None,
    stationary_runs: int,
    river: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Measure the online models against the simulator's ground truth, in one run.

    Simulates --customers (or reads FILE, written by `journeymap simulate`, and its truth file),
    feeds every event once, in event time, to fresh models and prints: segment recovery
    (adjusted Rand index vs the true segments, target >= 0.8) next to its Bayes ceiling (the
    maximum-posterior true segment under the simulator's own parameters), on all customers and
    by number of events, prequential ROC AUC of conversion
    propensity next to offline scikit-learn models trained on the same features with a time
    split (target within 0.02), the drift alert delay after the injected drift in events of the
    affected segment (target <= 2,000), false alarms before it and on stationary runs (target 0
    per 1M events), sentiment accuracy on held-out texts (the last 20 %) and, beside ours,
    River's own models on the same examples (--no-river to skip them). The models use the
    configured settings (session gap, outcomes, horizons), as the replay does. Needs
    scikit-learn (the dev extra). Examples:

        journeymap evaluate --customers 20000 --stationary-runs 5

        journeymap evaluate data/events.jsonl --json
    """
    from streams import evaluate as ev
    from streams.cli import settings_from
    from streams.replay import model_config

    try:
        ev.need_sklearn()
    except ev.MissingDependency as exc:
        raise click.ClickException(str(exc)) from None
    settings = settings_from(ctx)
    config = model_config(settings.processing(), settings.models)
    console = Console(stderr=True, quiet=quiet)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=as_json) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        if file is None:
            sim_task = bar.add_task(f"simulating {customers} customers", total=None)
            data = ev.simulated(customers, seed, days=days,
                                drift_segment=None if drift_segment == "none" else drift_segment)
            bar.update(sim_task, total=1, completed=1)
            n_customers = customers
        else:
            read_task = bar.add_task(f"reading {file}", total=None)
            data = ev.from_file(file, truth_path)
            bar.update(read_task, total=1, completed=1)
            n_customers = len(data.true_segment)
        if not data.events:
            raise click.ClickException("no events to evaluate (is FILE a journeymap simulation?)")
        report: dict[str, Any] = ev.evaluate(
            data,
            stationary_customers=n_customers if stationary_customers is None
            else stationary_customers,
            stationary_runs=stationary_runs,
            seed=seed,
            days=days,
            progress=progress,
            config=config,
            river=river,
            sentiment_corpus=settings.models.sentiment_corpus,
        )
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    else:
        for line in ev.text_report(report):
            click.echo(line)

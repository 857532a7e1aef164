"""The report and the demo command on embedded chDB: what a user sees comes from the tables."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from simulator.model import SimConfig, simulate
from simulator.writer import write_simulation
from sinks.clickhouse import connect, migrate, run_query
from streams.replay import Replayer
from streams.report import gather, print_report, render_html
from streams.settings import ClickHouseSettings, Settings


def test_report_matches_the_tables(tmp_path: Path, jm_settings: Settings) -> None:
    sim = simulate(SimConfig(customers=200, seed=3))
    events = tmp_path / "events.jsonl"
    write_simulation(sim, events)
    with connect(ClickHouseSettings(url=str(tmp_path / "chdb"))) as store:
        migrate(store)
        Replayer(jm_settings.processing(), store, with_models=False).run([events])
        report = gather(store, list(jm_settings.outcomes.conversion))
        n_events = run_query(store, "SELECT count() FROM touchpoints").rows[0][0]

    assert report.overview["events"] == n_events > 0
    funnel = report.funnels["signup_to_purchase"]
    assert [stage for stage, *_ in funnel] == ["visit", "signup", "activation", "purchase"]
    first_entered = funnel[0][1]
    for _, entered, advanced, dropped in funnel:
        assert advanced + dropped <= entered <= first_entered  # every run starts at stage 0
    for src in report.states:
        assert abs(sum(p for _, p in report.next_steps[src]) - 1.0) < 1e-9
    assert {"markov_1", "markov_2", "first_touch", "last_touch", "linear"} <= set(
        report.attribution
    )

    out = io.StringIO()
    print_report(report, Console(file=out, width=120))
    text = out.getvalue()
    assert "Top paths" in text and "Funnel signup_to_purchase" in text
    page = render_html(report)
    assert page.startswith("<!doctype html>") and "<svg" in page and "Transition matrix" in page


def test_demo_command_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--customers", "150", "--dir",
         str(tmp_path / "demo")],
        capture_output=True, timeout=600, check=False,
    )
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    assert "Funnel signup_to_purchase" in output
    assert (tmp_path / "demo" / "report.html").stat().st_size > 1000
    assert (tmp_path / "demo" / "events.truth.jsonl").exists()

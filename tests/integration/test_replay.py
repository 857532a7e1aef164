"""The replay end to end, against embedded chDB and the ClickHouse server, checked against the
simulator's ground truth: every event accounted for, transitions equal a recount, idempotent."""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from processors.config import ProcessingConfig
from processors.journeys import event_digest
from simulator.model import SimConfig, simulate
from simulator.truth import Truth
from simulator.writer import write_simulation
from sinks.clickhouse import Store, connect, migrate, run_query
from streams.replay import Replayer
from streams.settings import ClickHouseSettings, Settings

CUSTOMERS = 300


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    sim = simulate(SimConfig(customers=CUSTOMERS, seed=11))
    out = tmp_path_factory.mktemp("history") / "events.jsonl"
    write_simulation(sim, out)
    return out, sim.truth


def _store(kind: str, tmp_path: Path, jm_settings: Settings, clickhouse_url: str) -> Store:
    if kind == "embedded":
        target = ClickHouseSettings(url=str(tmp_path / "chdb"))
    else:
        database = f"replay_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
        target = jm_settings.clickhouse.model_copy(
            update={"url": clickhouse_url, "database": database}
        )
    store = connect(target)
    migrate(store)
    return store


def _rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    return run_query(store, sql).rows


def expected_transitions(
    truth: Truth, customer_of: dict[str, str], config: ProcessingConfig, final_watermark_ms: int
) -> Counter[tuple[str, str]]:
    """First-order transitions recounted from the true sequences, grouped by resolved customer.

    Independent of processors.journeys: start -> first touchpoint; a conversion touchpoint goes
    to `conversion` and a churn touchpoint to `null`, both ending the journey; a gap of the null
    horizon ends it in `null`, as does idleness past the horizon at the end of the data.
    """
    conv, churn = set(config.outcomes.conversion), set(config.outcomes.churn)
    horizon = config.outcomes.null_horizon_s * 1000
    frontier = final_watermark_ms - config.journey.allowed_lateness_s * 1000
    per_customer: dict[str, list[tuple[int, bytes, str]]] = {}
    for c in truth.customers:
        for e in c.events:
            cid = customer_of.get(e.event_id)
            if cid is not None:
                per_customer.setdefault(cid, []).append(
                    (e.ts_ms, event_digest(e.event_id), e.touchpoint)
                )
    counts: Counter[tuple[str, str]] = Counter()
    for events in per_customer.values():
        events.sort()
        src, last = None, None
        for ts, _, tp in events:
            if src is not None and last is not None and ts - last >= horizon:
                counts[(src, "null")] += 1
                src = None
            prev = src or "start"
            if tp in conv:
                counts[(prev, "conversion")] += 1
                src = None
            elif tp in churn:
                counts[(prev, "null")] += 1
                src = None
            else:
                counts[(prev, tp)] += 1
                src = tp
            last = ts
        if src is not None and last is not None and last + horizon < frontier:
            counts[(src, "null")] += 1
    return counts


@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_replay_against_ground_truth(
    kind: str, history: tuple[Path, Truth], tmp_path: Path, jm_settings: Settings,
    clickhouse_url: str,
) -> None:
    path, truth = history
    # Keep whole histories, so merges recombine complete journeys, and keep panes for the whole
    # history (a 120-day window), so merge corrections to old panes are published too: under
    # these conditions the tables must equal a recount from the truth exactly.
    config = jm_settings.processing()
    config = config.model_copy(
        update={
            "journey": config.journey.model_copy(update={"last_touchpoints_kept": 100}),
            "windows": config.windows.model_copy(update={"sizes_s": [86_400, 120 * 86_400]}),
        }
    )
    store = _store(kind, tmp_path, jm_settings, clickhouse_url)
    try:
        replayer = Replayer(config, store, with_models=False, chunk_lines=700)
        stats = replayer.run([path])

        applied = dict(_rows(store, "SELECT event_id, customer_id FROM touchpoints"))
        late = {r[0] for r in _rows(store, "SELECT event_id FROM late_events")}
        dead = _rows(store, "SELECT stage, count() FROM dead_letters GROUP BY stage")
        true_ids = {e.event_id for c in truth.customers for e in c.events}
        # every true event is in exactly one place: applied, late, or dead (unusable identity)
        assert not (set(applied) & late)
        assert set(applied) | late <= true_ids
        n_dead = sum(n for _, n in dead)
        assert len(applied) + len(late) + n_dead == len(true_ids)
        assert {stage for stage, _ in dead} <= {"resolve"}
        assert late <= set(truth.delivery.beyond_allowed_lateness)
        assert stats.counters["duplicates"] == len(truth.delivery.duplicates)

        got = Counter({
            (src, dst): n
            for src, dst, n in _rows(
                store,
                "SELECT src, dst, sum(n) FROM transition_cells_current GROUP BY src, dst "
                "HAVING sum(n) != 0",
            )
        })
        winner = dict(_rows(store, "SELECT customer_id, winner FROM customer_map"))
        final_customer = {e: winner.get(c, c) for e, c in applied.items()}
        want = expected_transitions(
            truth, final_customer, config, replayer.chain.current_watermark_ms()
        )
        assert got == want
    finally:
        if kind == "server":
            store.client.command(f"DROP DATABASE IF EXISTS {store.database}")
        store.close()


FINGERPRINTS = {
    "touchpoints": "SELECT count(), sum(cityHash64(event_id, customer_id, channel, touchpoint, "
    "session_id, segment, revenue)) FROM touchpoints",
    "late_events": "SELECT count(), sum(cityHash64(event_id, customer_id)) FROM late_events",
    "dead_letters": "SELECT count(), sum(cityHash64(reason, stage, source_offset)) "
    "FROM dead_letters",
    "identity_links": "SELECT count(), sum(cityHash64(customer_id, kind, id_hash)) "
    "FROM identity_links",
    "identity_merges": "SELECT count(), sum(cityHash64(loser, winner)) FROM identity_merges",
    "transitions": "SELECT count(), sum(cityHash64(window_start, segment, channel, order, src1, "
    "src, dst, n)) FROM transitions",
    "funnel_progress": "SELECT count(), sum(cityHash64(customer_id, funnel, from_stage, to_stage,"
    " ts)) FROM funnel_progress",
    "funnel_dropoff": "SELECT count(), sum(cityHash64(funnel, stage, segment, cohort_week, "
    "entered, advanced, dropped)) FROM funnel_dropoff "
    "WHERE as_of = (SELECT max(as_of) FROM funnel_dropoff)",
    "attribution": "SELECT count(), sum(cityHash64(model, level, key, round(conversions_attributed"
    ", 6))) FROM attribution WHERE as_of = (SELECT max(as_of) FROM attribution)",
}


def fingerprint(db: Path) -> dict[str, tuple[Any, ...]]:
    with connect(ClickHouseSettings(url=str(db))) as store:
        return {name: tuple(_rows(store, sql)[0]) for name, sql in FINGERPRINTS.items()}


def _replay_cli(path: Path, db: Path, flush_rows: int = 50_000) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JOURNEYMAP_CLICKHOUSE__FLUSH_ROWS": str(flush_rows)}
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "replay", str(path), "--clickhouse", str(db),
         "--no-models", "--chunk-lines", "300", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )


def _data_parts(root: Path) -> int:
    """Month-partitioned data parts under `root` so far. os.walk skips what vanishes while it
    looks (chDB renames and deletes its temporary insert folders all the time; `rglob` raised
    FileNotFoundError on one of them once in CI)."""
    return sum(1 for _, dirs, _ in os.walk(root) for d in dirs
               if fnmatch.fnmatch(d, "20[0-9][0-9][01][0-9]_*_*_*"))


def test_replay_is_idempotent_and_survives_a_kill(
    history: tuple[Path, Truth], tmp_path: Path
) -> None:
    path, _ = history
    clean = tmp_path / "clean"
    proc = _replay_cli(path, clean)
    assert proc.wait(timeout=600) == 0, proc.stdout.read() if proc.stdout else ""
    reference = fingerprint(clean)
    assert reference["touchpoints"][0] > 0

    # the same files again into the same database: the same tables
    proc = _replay_cli(path, clean)
    assert proc.wait(timeout=600) == 0
    assert fingerprint(clean) == reference

    # killed in the middle (after it wrote some rows), then run again: a clean run's tables
    killed = tmp_path / "killed"
    proc = _replay_cli(path, killed, flush_rows=200)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        # month-partitioned data parts (e.g. 202601_3_3_0) appear once analyst rows are flushed
        if _data_parts(killed) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the replay finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc = _replay_cli(path, killed)
    assert proc.wait(timeout=600) == 0, proc.stdout.read() if proc.stdout else ""
    assert fingerprint(killed) == reference


def test_replay_scores_the_sentiment_of_texts(
    history: tuple[Path, Truth], tmp_path: Path, jm_settings: Settings
) -> None:
    """The replay's models learn the shipped corpus first: every text's touchpoint row carries a
    sentiment, of the sign of the simulator's label; customers' scores carry the label."""
    path, truth = history
    label_of = {e.event_id: e.sentiment for c in truth.customers for e in c.events if e.sentiment}
    assert len(label_of) > 30
    store = _store("embedded", tmp_path, jm_settings, "")
    try:
        Replayer(jm_settings.processing(), store, with_models=True).run([path])
        rows = _rows(store, "SELECT event_id, has_text, sentiment FROM touchpoints FINAL")
        scored = {event_id: s for event_id, has_text, s in rows if has_text}
        assert scored and all(s is not None for s in scored.values())
        assert all(s is None for _, has_text, s in rows if not has_text)
        by_label: dict[str, list[float]] = {}
        for event_id in sorted(scored):
            by_label.setdefault(label_of[event_id], []).append(scored[event_id])
        assert set(by_label) == {"negative", "neutral", "positive"}
        assert all(s < -0.5 for s in by_label["negative"][:5])
        assert all(s > 0.5 for s in by_label["positive"][:5])
        assert all(abs(s) < 0.5 for s in by_label["neutral"][:5])
        labels = {label for (label,) in _rows(
            store, "SELECT sentiment FROM customer_scores FINAL WHERE sentiment != ''")}
        assert labels and labels <= {"negative", "neutral", "positive"}
    finally:
        store.close()

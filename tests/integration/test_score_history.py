"""`customer_score_history` (migration 0010) from a replay on embedded chDB: real history (several
event-time days per customer), its last row per customer equal to `customer_scores`, the same rows
after replaying the same events again, and the retention setting applied to it."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from simulator.model import SimConfig, simulate
from simulator.writer import write_simulation
from sinks.clickhouse import Store, connect, migrate, run_query
from sinks.migrations import RETENTION_COLUMNS
from streams.replay import Replayer
from streams.settings import ClickHouseSettings, load_settings

HISTORY = ("SELECT customer_id, day, ts, segment, p_convert, p_churn, lookalike, next_best_action "
           "FROM customer_score_history FINAL ORDER BY customer_id, day")


def _rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    return run_query(store, sql).rows


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("score-history") / "events.jsonl"
    write_simulation(simulate(SimConfig(customers=150, seed=5)), out)
    return out


def test_a_replay_keeps_each_customers_last_score_per_day(events: Path, tmp_path: Path) -> None:
    settings = load_settings()
    with connect(ClickHouseSettings(url=str(tmp_path / "chdb"))) as store:
        migrate(store)
        Replayer(settings.processing(), store, with_models=True).run([events])
        history = _rows(store, HISTORY)
        latest = {r[0]: r for r in _rows(
            store, "SELECT customer_id, ts, segment, p_convert, p_churn "
            "FROM customer_scores FINAL")}
        n_raw = _rows(store, "SELECT count() FROM customer_score_history")[0][0]

        per: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for r in history:
            per[r[0]].append(r)
        assert set(latest) <= set(per)
        several = [c for c, rows in per.items() if len(rows) > 1]
        assert len(several) > len(per) / 2, "most customers are scored on several days"
        for rows in per.values():
            days = [r[1] for r in rows]
            assert days == sorted(set(days))  # one row per customer and day
            for r in rows:  # the row's event time lies in its day
                assert r[2].astimezone(UTC).date() == r[1]
        for cid, (_, ts, segment, p_convert, p_churn) in latest.items():
            last = per[cid][-1]  # the newest day's last score is the customer's latest score
            assert (last[2], last[3], last[4], last[5]) == (ts, segment, p_convert, p_churn), cid

        # Replaying the same events rewrites the same rows: FINAL reads what it read before.
        Replayer(settings.processing(), store, with_models=True).run([events])
        assert _rows(store, HISTORY) == history
        assert _rows(store, "SELECT count() FROM customer_score_history")[0][0] >= n_raw


def test_retention_applies_to_the_history(tmp_path: Path) -> None:
    assert RETENTION_COLUMNS["customer_score_history"] == "day"
    with connect(ClickHouseSettings(url=str(tmp_path / "chdb"))) as store:
        migrate(store, ttl_days_by_table={"customer_score_history": 400})
        ddl = str(_rows(store, "SHOW CREATE TABLE customer_score_history")[0][0])
        assert "TTL toDateTime(day) + toIntervalDay(400)" in ddl
        migrate(store)
        ddl = str(_rows(store, "SHOW CREATE TABLE customer_score_history")[0][0])
        assert " TTL " not in ddl
        # an old row ages out once the TTL is set (a forced merge applies it)
        store.client.insert("customer_score_history",
                            [["c1", datetime(2020, 1, 1, tzinfo=UTC).date(),
                              datetime(2020, 1, 1, 12, tzinfo=UTC), "s0", 0.5, 0.1, None, ""]],
                            column_names=["customer_id", "day", "ts", "segment", "p_convert",
                                          "p_churn", "lookalike", "next_best_action"])
        migrate(store, ttl_days_by_table={"customer_score_history": 400})
        store.client.command("OPTIMIZE TABLE customer_score_history FINAL")
        assert _rows(store, "SELECT count() FROM customer_score_history")[0][0] == 0

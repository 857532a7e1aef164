"""The sink against real ClickHouse: the same assertions on embedded chDB and on a server.

The server is `JOURNEYMAP_CLICKHOUSE__URL` (default http://127.0.0.1:8123, started by
`journeymap services up`) when it answers; otherwise the tests start a private one with
`python -m streams.chdb_server`. The outage test always uses a private server it can stop.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from online_models.drift import Alert
from online_models.segments import SegmentProfile
from online_models.suite import Scores
from processors.attribution import Attribution
from processors.config import WindowsConfig
from processors.errors import QueryError, SchemaError
from processors.funnels import FunnelStageStats, FunnelTransition
from processors.identity import Conflict
from processors.journeys import LateEvent, Step
from processors.transitions import (
    ALL,
    CellRow,
    TransitionCounter,
    TransitionCounts,
    gap_bucket,
)
from sinks import clickhouse as ch
from sinks.clickhouse import SinkWriter, Store, check_schema, connect, migrate, run_query
from tests.factories import resolved

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "analysts.md"
T0 = 1_772_323_200_000  # 2026-03-01T00:00:00Z in epoch ms
COHORT = date(2026, 2, 23)  # the Monday of that week
OUTAGE_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class PrivateServer:
    """A chDB server of our own (streams.chdb_server) that a test may stop and restart."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.http_port, self.tcp_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.xml").write_text(
            "<clickhouse><listen_host>127.0.0.1</listen_host>"
            f"<http_port>{self.http_port}</http_port><tcp_port>{self.tcp_port}</tcp_port>"
            "</clickhouse>\n"
        )

    def start(self) -> None:
        log = (self.home / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.chdb_server", "--http-port", str(self.http_port),
             "--tcp-port", str(self.tcp_port), "--data", str(self.home / "data")],
            cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 60
        while not _answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.home / "server.log").read_text()[-2000:])
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("JOURNEYMAP_CLICKHOUSE__URL", "http://127.0.0.1:8123")
    if url.startswith("http") and _answers(url):
        yield url
        return
    server = PrivateServer(tmp_path_factory.mktemp("chdb-server"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _target(url: str, database: str) -> SimpleNamespace:
    return SimpleNamespace(url=url, database=database, user="default", password="")


@pytest.fixture(params=["embedded", "server"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A store URL and a fresh database name; the server's test database is dropped after."""
    database = f"jm_test_{uuid.uuid4().hex[:12]}"
    if request.param == "embedded":
        yield _target(str(tmp_path / "chdb"), database)
        return
    url = request.getfixturevalue("server_url")
    yield _target(url, database)
    with connect(_target(url, database)) as store:
        store.client.command(f"DROP DATABASE IF EXISTS `{database}`")


@pytest.fixture
def store(target: SimpleNamespace) -> Iterator[Store]:
    with connect(target) as opened:
        migrate(opened)
        yield opened


# ------------------------------------------------------------------------------------------
# A small, complete data set: every analyst table gets rows.


def seed_rows() -> dict[str, list[dict[str, Any]]]:
    def tp(eid: str, cust: str, touchpoint: str, minute: int, channel: str = "web",
           revenue: float = 0.0) -> dict[str, Any]:
        return {"event_id": eid, "occurred_at": T0 + minute * 60_000, "customer_id": cust,
                "channel": channel, "touchpoint": touchpoint, "session_id": f"s-{cust}",
                "segment": "all", "revenue": revenue, "properties": {"plan": "pro"},
                "has_text": False, "sentiment": None, "ingested_at": T0 + 10**6}

    def cell(shard: int, version: int, prev2: str, src: str, dst: str, n: int,
             gap_ms: int) -> dict[str, Any]:
        row = CellRow(T0, 3600, "all", "web", prev2, src, dst, gap_bucket(gap_ms), n, n * gap_ms)
        return ch.transition_cell_row(row, shard, T0 + version)

    return {
        "transition_cells": [
            # shard 0, first emission of pane [T0, T0 + 1h)
            cell(0, 1, "", "start", "landing_page", 2, 0),
            cell(0, 1, "start", "landing_page", "blog_post", 1, 180_000),
            cell(0, 1, "start", "landing_page", "ads_click", 1, 60_000),
            # shard 1 (another partition's customers), the same pane
            cell(1, 1, "", "start", "landing_page", 1, 0),
            cell(1, 1, "start", "landing_page", "pricing_page", 1, 60_000),
            cell(1, 1, "landing_page", "pricing_page", "conversion", 1, 180_000),
            # shard 0 re-emits the pane: a new cell, and landing_page -> ads_click is gone
            cell(0, 2, "", "start", "landing_page", 2, 0),
            cell(0, 2, "start", "landing_page", "blog_post", 1, 180_000),
            cell(0, 2, "start", "landing_page", "pricing_page", 1, 60_000),
            cell(0, 2, "landing_page", "pricing_page", "conversion", 1, 60_000),
        ],
        "late_events": [
            ch.late_event_row(LateEvent(resolved("c2", "pricing_page", T0 - 86_400_000,
                                                 event_id="late-1"), T0, T0 - 3_600_000),
                              received_at_ms=T0 + 5),
        ],
        "identity_conflicts": [
            ch.identity_conflict_row(Conflict("unique_kind", "e7", T0, "c1", "c2", ("h1", "h2"))),
        ],
        "touchpoints": [
            tp("e1", "c1", "landing_page", 0), tp("e2", "c1", "pricing_page", 1),
            tp("e3", "c1", "purchase", 2, revenue=99.0), tp("e4", "c2", "landing_page", 0),
            tp("e5", "c2", "blog_post", 3), tp("e6", "c3", "landing_page", 5, channel="email"),
            tp("e7", "c3", "pricing_page", 6), tp("e8", "c3", "purchase", 9, revenue=49.5),
        ],
        "dead_letters": [
            {"received_at": T0, "reason": "not valid JSON", "stage": "validate",
             "source_topic": "touchpoints.raw", "source_partition": 0, "source_offset": 7,
             "errors": "[]", "raw_b64": "e30="},
        ],
        "identity_links": [
            {"customer_id": "c1", "kind": "email", "id_hash": "h-mail", "first_seen": T0},
            {"customer_id": "c2", "kind": "anonymous_id", "id_hash": "h-anon", "first_seen": T0},
            {"customer_id": "c3", "kind": "device_id", "id_hash": "h-dev", "first_seen": T0},
            {"customer_id": "c4", "kind": "crm_id", "id_hash": "h-crm", "first_seen": T0},
        ],
        "identity_merges": [
            {"loser": "c3", "winner": "c1", "evidence_event_id": "e8", "merged_at": T0 + 1,
             "reason": "shared_identifier"},
            {"loser": "c4", "winner": "c3", "evidence_event_id": "e6", "merged_at": T0,
             "reason": "shared_identifier"},
        ],
        "funnel_progress": [
            FunnelTransition(c, "signup_to_purchase", fi, ti, f, t, T0 + m * 60_000, d, "all",
                             COHORT).as_row()
            for c, fi, ti, f, t, m, d in [("c1", -1, 0, "", "visit", 0, None),
                                          ("c1", 0, 3, "visit", "purchase", 2, 120_000),
                                          ("c2", -1, 0, "", "visit", 0, None)]
        ],
        "funnel_dropoff": [
            ch.funnel_dropoff_row(
                FunnelStageStats("signup_to_purchase", i, s, seg, week, e, a, d, med, p90),
                T0 + 5, shard=shard)
            for shard, s, i, seg, week, e, a, d, med, p90 in [
                (0, "visit", 0, "all", COHORT, 1, 1, 0, 120_000.0, 120_000.0),
                (1, "visit", 0, "all", COHORT, 1, 0, 1, None, None),
                (0, "purchase", 3, "all", COHORT, 1, 0, 0, None, None),
                (0, "visit", 0, "*", None, 1, 1, 0, 120_000.0, 120_000.0)]
        ],
        "attribution": [
            Attribution(m, k, r, c, v).as_row(T0, "channel")
            for m, k, r, c, v in [("markov_1", "web", 0.8, 1.5, 100.0),
                                  ("markov_1", "email", 0.3, 0.5, 48.5),
                                  ("last_touch", "web", None, 2.0, 148.5)]
        ],
        "customer_scores": [
            ch.customer_score_row(Scores("c2", T0, "all", 0.4, 0.1, (("pricing_page", 0.3),),
                                         "email_offer", 0.05, None, "positive", 0.5), T0 + 1),
        ],
        "customer_score_history": [  # two days of c2 (the second day's later score wins)
            ch.customer_score_history_row(Scores("c2", t, "all", p, 0.1, (), "email_offer", 0.05,
                                                 None, None, None))
            for t, p in ((T0 - 86_400_000, 0.6), (T0 + 60_000, 0.5), (T0 + 120_000, 0.4))
        ],
        "segments": [
            ch.segment_row(SegmentProfile("browsers", 2, 0.5, {"web": 0.9}, 0.5, ("c1", "c2")),
                           T0),
        ],
        "alerts": [
            ch.alert_row(Alert("a1", T0 + 3_600_000, "drift", "warning", "all", "p_convert",
                               "conversion rate dropped", {"before": 0.5, "after": 0.2})),
        ],
    }


def write_seed(store: Store) -> None:
    writer = SinkWriter(store.client, flush_rows=3)
    for table, rows in seed_rows().items():
        if table == "transition_cells":  # a pane re-emitted later, in another insert
            writer.add(table, rows[:6])
            writer.flush()
            writer.add(table, rows[6:])
        else:
            writer.add(table, rows)
    writer.flush()
    assert writer.pending_rows == 0


PROBES = {
    "touchpoints": "SELECT count(), sum(revenue), uniqExact(customer_id) FROM touchpoints",
    "dead_letters": "SELECT count() FROM dead_letters",
    "customer_map": "SELECT customer_id, winner, hops FROM customer_map ORDER BY customer_id",
    "transitions": "SELECT count(), sum(n), sum(gap_sum_ms) FROM transitions",
    "matrix": "SELECT order, src1, src, dst, n, round(p, 4), mean_gap_ms FROM transition_matrix("
              "window_size_s=3600, segment='*', window_end='latest') "
              "ORDER BY order, src1, src, dst",
    "funnels": "SELECT count() FROM funnel_progress",
    "others": "SELECT (SELECT count() FROM attribution), (SELECT count() FROM customer_scores), "
              "(SELECT count() FROM segments), (SELECT count() FROM alerts), "
              "(SELECT count() FROM funnel_dropoff), (SELECT count() FROM identity_links), "
              "(SELECT count() FROM late_events), (SELECT count() FROM identity_conflicts)",
}


def probe(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    return {name: run_query(store, sql).rows for name, sql in PROBES.items()}


# ------------------------------------------------------------------------------------------


def test_migrations_are_idempotent_and_recorded(target: SimpleNamespace) -> None:
    with connect(target) as store:
        first = migrate(store)
        assert [m.version for m in first.applied] == list(range(1, ch.required_version() + 1))
        tables = store.client.query("SHOW TABLES").result_rows
        second = migrate(store, ttl_days=30)
        assert second.applied == [] and second.before == second.after == ch.required_version()
        assert store.client.query("SHOW TABLES").result_rows == tables
        recorded = store.client.query(
            "SELECT version, name, checksum FROM schema_migrations FINAL ORDER BY version"
        ).result_rows
        assert recorded == [(m.version, m.name, m.checksum) for m in ch.load_migrations()]
        ddl = store.client.query("SHOW CREATE TABLE touchpoints").result_rows[0][0]
        assert "TTL" in ddl
        migrate(store, ttl_days=0)
        assert "TTL" not in store.client.query("SHOW CREATE TABLE touchpoints").result_rows[0][0]
        assert check_schema(store) == ch.required_version()


def test_retention_is_set_per_table_and_removed_again(target: SimpleNamespace) -> None:
    def ddl(store: Store, table: str) -> str:
        return str(store.client.query(f"SHOW CREATE TABLE {table}").result_rows[0][0])

    with connect(target) as store:
        result = migrate(store, ttl_days=90, ttl_days_by_table={"alerts": 365, "touchpoints": 30})
        assert "toIntervalDay(30)" in ddl(store, "touchpoints")
        assert "toIntervalDay(90)" in ddl(store, "dead_letters")
        assert "toIntervalDay(365)" in ddl(store, "alerts")
        assert " TTL " not in ddl(store, "transition_cells")
        assert result.ttl.startswith("touchpoints 30 days, dead_letters 90 days")
        migrate(store, ttl_days_by_table={"transition_cells": 400})
        assert " TTL " not in ddl(store, "touchpoints") and " TTL " not in ddl(store, "alerts")
        assert "toIntervalDay(400)" in ddl(store, "transition_cells")
        with pytest.raises(SchemaError, match="no TTL for table 'identity_links'"):
            migrate(store, ttl_days_by_table={"identity_links": 5})


def test_an_unmigrated_or_older_database_is_refused_with_the_fix(
    target: SimpleNamespace,
) -> None:
    need = ch.required_version()
    with connect(target) as store:
        with pytest.raises(SchemaError) as err:
            check_schema(store)
        assert str(err.value) == (
            f"database {target.database} is at version 0, this journeymap needs {need}: "
            "run `journeymap migrate`"
        )
        migrate(store)
        # Pretend only the first two migrations ran: the worker refuses, migrate fixes it.
        store.client.command("ALTER TABLE schema_migrations DELETE WHERE version > 2 "
                             "SETTINGS mutations_sync = 2")
        with pytest.raises(SchemaError, match=f"is at version 2, this journeymap needs {need}"):
            check_schema(store)
        again = migrate(store)
        assert [m.version for m in again.applied] == list(range(3, need + 1))
        assert check_schema(store) == need


def test_a_batch_written_twice_leaves_the_same_query_results(store: Store) -> None:
    write_seed(store)
    once = probe(store)
    assert once["touchpoints"] == [(8, 148.5, 3)]
    assert once["customer_map"] == [("c1", "c1", 0), ("c2", "c2", 0), ("c3", "c1", 1),
                                    ("c4", "c1", 2)]
    # Shards add up; shard 0's dropped cell (landing_page -> ads_click) is gone.
    assert once["transitions"] == [(7, 13, 1_080_000)]
    assert once["matrix"] == [
        (1, "", "landing_page", "blog_post", 1, 0.3333, 180_000.0),
        (1, "", "landing_page", "pricing_page", 2, 0.6667, 60_000.0),
        (1, "", "pricing_page", "conversion", 2, 1.0, 120_000.0),
        (1, "", "start", "landing_page", 3, 1.0, 0.0),
        (2, "landing_page", "pricing_page", "conversion", 2, 1.0, 120_000.0),
        (2, "start", "landing_page", "blog_post", 1, 0.3333, 180_000.0),
        (2, "start", "landing_page", "pricing_page", 2, 0.6667, 60_000.0),
    ]
    assert once["others"] == [(3, 1, 1, 1, 4, 4, 1, 1)]
    write_seed(store)  # at-least-once: the whole batch again, in new insert blocks
    assert probe(store) == once
    store.client.command("OPTIMIZE TABLE touchpoints FINAL")
    assert store.client.query("SELECT count() FROM touchpoints").result_rows == [(8,)]


def test_a_revived_customer_stays_canonical_whatever_order_the_merge_rows_arrive_in(
    store: Store,
) -> None:
    """A into B (seq 1), later B back into A (seq 2, earlier evidence): two workers, or a batch
    written again after an outage, can insert the first merge's row last."""
    from processors.identity import MergeRecord
    from streams.outputs import merge_rows_of

    first = MergeRecord("A", "B", "e-late", T0 + 5, "shared_identifier", seq=1)
    revival = MergeRecord("B", "A", "e-early", T0, "earlier_evidence", seq=2)
    writer = SinkWriter(store.client)
    writer.add("identity_links", [{"customer_id": c, "kind": "email", "id_hash": f"h-{c}",
                                   "first_seen": T0} for c in "AB"])
    for batch in ([revival], [first]):  # commit order reversed on the way to ClickHouse
        writer.add("identity_merges", [ch.identity_merge_row(m) for m in merge_rows_of(batch)])
        writer.flush()
    assert run_query(store, PROBES["customer_map"]).rows == [("A", "A", 0), ("B", "A", 1)]
    store.client.command("OPTIMIZE TABLE identity_merges FINAL")
    assert run_query(store, "SELECT loser, winner, seq FROM identity_merges ORDER BY loser"
                     ).rows == [("A", "A", 2), ("B", "A", 2)]


def test_upgrading_to_merge_seq_keeps_each_losers_current_merge(
    target: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at schema 11 with merges (one revived id) migrates to 12 (identity_merges by
    `seq`) with the same customer_map, and new merges then go by seq."""
    from processors.identity import MergeRecord
    from streams.outputs import merge_rows_of

    every = ch.load_migrations()
    with connect(target) as store:
        monkeypatch.setattr(ch, "load_migrations", lambda: every[:11])
        migrate(store)
        old = [MergeRecord("A", "B", "e1", T0, "shared_identifier"),
               MergeRecord("B", "A", "e0", T0 - 5, "earlier_evidence"),
               MergeRecord("C", "A", "e2", T0 + 9, "shared_identifier")]
        writer = SinkWriter(store.client)
        writer.add("identity_links", [{"customer_id": c, "kind": "email", "id_hash": f"h-{c}",
                                       "first_seen": T0} for c in "ABCD"])
        for mr in merge_rows_of(old):  # in commit order, one insert each (as before 12)
            row = ch.identity_merge_row(mr)
            del row["seq"]
            writer.add("identity_merges", [row])
            writer.flush()
        before = run_query(store, PROBES["customer_map"]).rows
        assert before == [("A", "A", 0), ("B", "A", 1), ("C", "A", 1), ("D", "D", 0)]
        monkeypatch.setattr(ch, "load_migrations", lambda: every)
        assert [m.version for m in migrate(store).applied] == [12]
        assert run_query(store, PROBES["customer_map"]).rows == before
        assert check_schema(store) == ch.required_version()
        # D takes A in later (seq 5), and the inserts arrive out of order: seq decides.
        newer = MergeRecord("A", "D", "e3", T0 + 20, "shared_identifier", seq=5)
        stale = MergeRecord("A", "B", "e1", T0, "shared_identifier", seq=1)
        for mr in (newer, stale):
            writer.add("identity_merges", [ch.identity_merge_row(mr)])
            writer.flush()
        assert run_query(store, PROBES["customer_map"]).rows == [
            ("A", "D", 1), ("B", "D", 2), ("C", "D", 2), ("D", "D", 0)]


DAILY_ROLLUP = """
SELECT day, channel, touchpoint, uniqExactMerge(events), uniqExactMerge(customers)
FROM touchpoints_daily GROUP BY day, channel, touchpoint ORDER BY day, channel, touchpoint
"""
DAILY_DIRECT = """
SELECT toDate(occurred_at) AS day, channel, touchpoint, uniqExact(event_id), uniqExact(customer_id)
FROM touchpoints GROUP BY day, channel, touchpoint ORDER BY day, channel, touchpoint
"""


def test_the_daily_rollup_follows_inserts_and_counts_a_redelivered_batch_once(
    store: Store,
) -> None:
    write_seed(store)
    direct = store.client.query(DAILY_DIRECT).result_rows
    assert direct and sum(row[3] for row in direct) == 8
    assert store.client.query(DAILY_ROLLUP).result_rows == direct
    write_seed(store)  # at-least-once: the same rows again, before any merge collapses them
    assert store.client.query(DAILY_ROLLUP).result_rows == direct


def test_the_daily_rollup_migration_folds_in_rows_written_before_it(
    target: SimpleNamespace,
) -> None:
    with connect(target) as store:
        migrate(store)
        write_seed(store)
        direct = store.client.query(DAILY_DIRECT).result_rows
        # An older database: the rollup did not exist when these rows were written.
        store.client.command("DROP VIEW touchpoints_daily_mv")
        store.client.command("DROP TABLE touchpoints_daily")
        store.client.command("ALTER TABLE schema_migrations DELETE WHERE version >= 9 "
                             "SETTINGS mutations_sync = 2")
        applied = [m.version for m in migrate(store).applied]
        assert applied == list(range(9, ch.required_version() + 1))
        assert store.client.query(DAILY_ROLLUP).result_rows == direct


def test_every_row_helper_round_trips(store: Store) -> None:
    write_seed(store)
    seed = seed_rows()
    # the history keeps one row per customer and day: the day's last score
    seed["customer_score_history"] = [seed["customer_score_history"][i] for i in (0, 2)]
    for table in ("late_events", "identity_conflicts", "customer_scores", "segments", "alerts",
                  "attribution", "funnel_progress", "funnel_dropoff", "customer_score_history"):
        names = list(seed[table][0])
        order = ", ".join(f"`{n}`" for n in names)
        got = store.client.query(f"SELECT {order} FROM {table} FINAL ORDER BY {order}")
        back = [dict(zip(names, row, strict=True)) for row in got.result_rows]
        assert len(back) == len(seed[table]), table
        for row in back:
            for name, value in row.items():
                if isinstance(value, datetime):
                    row[name] = int(value.replace(tzinfo=UTC).timestamp() * 1000)
                elif isinstance(value, float):
                    row[name] = round(value, 5)
        want = [{k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()}
                for r in seed[table]]
        key = repr
        assert sorted(back, key=key) == sorted(want, key=key), table


def _steps(customer: str, segment: str, path: list[str], start_ms: int) -> list[Step]:
    """A journey as transition steps, one touchpoint every 7 minutes."""
    out, prev2, src = [], "", "start"
    for i, dst in enumerate(path):
        out.append(Step(customer, segment, "web", dst, src, dst, prev2, 0 if i == 0 else 420_000,
                        start_ms + i * 420_000, "s", i == 0, 0.0, 0))
        prev2, src = src, dst
    return out


def test_transition_views_equal_the_processors_counts_across_shards_and_reemissions(
    store: Store,
) -> None:
    """Two shards count disjoint customers; one re-emits a pane after a retraction."""
    touchpoints = ["landing_page", "pricing_page", "blog_post", "demo", "purchase"]
    windows = WindowsConfig(sizes_s=[7200], step_s=3600)
    counters = [TransitionCounter(windows), TransitionCounter(windows)]
    reference = TransitionCounts()
    writer = SinkWriter(store.client, flush_rows=7)
    clock = ch.EmissionClock()
    for i in range(40):
        path = [touchpoints[(i * k + k * k) % 5] for k in range(1, 2 + i % 6)]
        steps = _steps(f"c{i}", "sA" if i % 3 else "sB", path, T0 + (i * 173_000) % 4_000_000)
        counters[i % 2].update(steps)
        for st in steps:
            reference.update(st.src, st.dst, prev2=st.prev2, gap_ms=st.gap_ms,
                             segment=st.segment, channel=st.channel)
    rare = _steps("c-rare", "sA", ["landing_page", "rare_touch"], T0 + 600_000)
    counters[0].update(rare)

    def emit(shard: int) -> None:
        version = clock(T0 + 10**7)  # the same wall-clock ms: the clock still moves on
        rows = counters[shard].advance(T0 + 7_200_000)
        writer.add("transition_cells", [ch.transition_cell_row(r, shard, version) for r in rows])

    emit(0)
    emit(1)
    writer.flush()
    counters[0].update([rare[1]._replace(sign=-1), rare[0]._replace(sign=-1)])
    emit(0)  # pane 0 again, without the rare cells
    writer.flush()

    def matrix(segment: str) -> dict[tuple[int, str, str, str], int]:
        got = run_query(store, "SELECT order, src1, src, dst, n FROM transition_matrix("
                        "window_size_s=7200, segment={s:String}, window_end='latest')",
                        {"s": segment}).rows
        return {(o, a, b, c): n for o, a, b, c, n in got}

    def expected(segment: str) -> dict[tuple[int, str, str, str], int]:
        out = {(1, "", a, b): n for (a, b), n in reference.pairs(segment=segment).items()}
        out.update({(2, a, b, c): n
                    for (a, b, c), n in reference.triples(segment=segment).items()})
        return out

    assert "rare_touch" not in str(matrix(ALL))
    assert matrix(ALL) == expected(ALL)
    assert matrix("sB") == expected("sB") and matrix("sB") != matrix(ALL)
    per_pane = run_query(store, "SELECT sum(n) FROM transitions WHERE order = 1").rows
    assert per_pane == [(sum(reference.pairs().values()),)]
    latest = run_query(store, "SELECT window_end, n_shards FROM transition_latest").rows
    assert latest == [(datetime(2026, 3, 1, 2, 0), 2)]


def test_a_retried_insert_with_its_token_is_not_stored_twice(store: Store) -> None:
    columns = {"alert_id": ["x1", "x2"], "ts": [T0, T0], "kind": ["drift"] * 2,
               "severity": ["info"] * 2, "segment": ["all"] * 2, "metric": ["m"] * 2,
               "message": ["", ""], "evidence": ["{}", "{}"]}
    for _ in range(2):
        store.client.insert("alerts", list(columns.values()), column_names=list(columns),
                            column_oriented=True,
                            settings={"insert_deduplication_token": "jm-same-token"})
    # No FINAL here: the retry was dropped at insert time, not at merge time.
    assert store.client.query("SELECT count() FROM alerts SETTINGS final = 0").result_rows == [
        (2,)]


def test_every_sql_example_in_the_analyst_docs_runs(store: Store) -> None:
    write_seed(store)
    blocks = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 20
    for sql in blocks:
        params = dict(re.findall(r"^-- param (\w+)=(.*)$", sql, re.M))
        try:
            run_query(store, sql, params)
        except QueryError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"docs example failed: {exc}\n{sql}")


def test_queries_are_read_only_even_past_the_statement_check(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ch, "check_read_only", lambda sql: None)
    with pytest.raises(QueryError, match=r"readonly|READONLY"):
        run_query(store, "INSERT INTO alerts (alert_id) VALUES ('x')")
    with pytest.raises(QueryError, match="UInt8"):
        run_query(store, "SELECT {x:UInt8}", {"x": "1; DROP TABLE alerts"})
    # A parameter is a value, never SQL: the quote stays inside the string.
    assert run_query(store, "SELECT {s:String}", {"s": "a' OR '1'='1"}).rows == [
        ("a' OR '1'='1",)]


def _journeymap(*args: str, target: SimpleNamespace) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOURNEYMAP_CLICKHOUSE__URL": target.url,
           "JOURNEYMAP_CLICKHOUSE__DATABASE": target.database, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", "from streams.cli import main; main()", *args],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
    )


def test_migrate_and_query_commands(target: SimpleNamespace) -> None:
    refused = _journeymap("query", "SELECT 1", target=target)
    assert refused.returncode == 2 and "run `journeymap migrate`" in refused.stderr
    done = _journeymap("migrate", target=target)
    assert done.returncode == 0, done.stderr
    assert "applied 0001_touchpoints" in done.stdout
    assert "up to date" in _journeymap("migrate", target=target).stdout
    ok = _journeymap("query", "SELECT {n:UInt32} + 1 AS n, {s:String} AS s", "--param", "n=41",
                     "-p", "s=it's", "--format", "json", target=target)
    assert ok.returncode == 0, ok.stderr
    assert '"n": 42' in ok.stdout and '"s": "it\'s"' in ok.stdout
    for args, message in [
        (("SELECT nope FROM touchpoints",), "UNKNOWN_IDENTIFIER"),
        (("SELECT {n:UInt32}", "-p", "n=many"), "cannot be parsed as UInt32"),
        (("SELECT {n:UInt32}",), "add --param n=VALUE"),
        (("DELETE FROM touchpoints WHERE 1",), "only read-only queries"),
        (("SELECT 1", "-p", "oops"), "expected name=value"),
    ]:
        bad = _journeymap("query", *args, target=target)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_an_embedded_directory_has_one_owner(tmp_path: Path) -> None:
    target = _target(str(tmp_path / "chdb"), "journeymap")
    with connect(target):
        code = (
            "import sys; from types import SimpleNamespace as N\n"
            "from processors.errors import StoreLockedError\n"
            "from sinks.clickhouse import connect\n"
            f"try: connect(N(url={target.url!r}, database='journeymap', user='', password=''))\n"
            "except StoreLockedError as e: print(e); sys.exit(3)\n"
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert other.returncode == 3, other.stderr
        assert str(tmp_path / "chdb") in other.stdout and f"pid {os.getpid()}" in other.stdout
        # The same process may open it again (one owner, shared).
        with connect(target) as again:
            assert again.client.query("SELECT 1").result_rows == [(1,)]
    # Released on close: another process can take it now.
    free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert free.returncode == 0, free.stdout + free.stderr


def test_writes_wait_for_a_stopped_server_and_lose_nothing(tmp_path: Path) -> None:
    server = PrivateServer(tmp_path / "server")
    server.start()
    try:
        target = _target(server.url, "journeymap")
        with connect(target) as store:
            migrate(store)
            writer = SinkWriter(store.client, flush_rows=10**6, retry_total_s=120,
                                backoff_max_s=1.0)
            rows = seed_rows()["touchpoints"]
            writer.add("touchpoints", rows[:4])
            assert writer.flush() == 4
            server.stop()
            writer.add("touchpoints", rows[4:])
            restarter = threading.Timer(OUTAGE_S, server.start)
            restarter.start()
            t0 = time.monotonic()
            assert writer.flush() == 4  # blocks while the server is down, then writes
            restarter.join()
            assert time.monotonic() - t0 >= OUTAGE_S and writer.n_retries >= 5
            assert run_query(store, "SELECT count(), sum(revenue) FROM touchpoints").rows == [
                (8, 148.5)]
    finally:
        server.stop()

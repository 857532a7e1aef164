"""SinkWriter batching, retries and row shapes, against a fake client (no I/O, no real waiting)."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from online_models.drift import Alert
from online_models.segments import SegmentProfile
from online_models.suite import Scores
from processors.attribution import Attribution
from processors.config import WindowsConfig
from processors.errors import QueryError, SchemaError, ServiceUnavailable
from processors.funnels import FunnelStageStats, FunnelTransition
from processors.identity import Conflict, IdentityLink, MergeRecord
from processors.journeys import LateEvent, Step
from processors.transitions import TransitionCounter, gap_bucket
from processors.validation import DeadLetter, Source
from sinks.clickhouse import (
    EmissionClock,
    SinkWriter,
    alert_row,
    check_read_only,
    customer_score_row,
    dead_letter_row,
    funnel_dropoff_row,
    identity_conflict_row,
    identity_link_row,
    identity_merge_row,
    late_event_row,
    parse_params,
    segment_row,
    touchpoint_row,
    transition_cell_row,
)
from tests.factories import T0_MS, resolved


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeClient:
    """Records inserts; fails the next `fail_next` inserts with `error`."""

    def __init__(self, schema: dict[str, dict[str, str]] | None = None) -> None:
        self.inserts: list[dict[str, Any]] = []
        self.attempts: list[str] = []
        self.fail_next = 0
        self.error: Exception = OperationalError("Connection refused")
        self.schema = schema or {}  # table -> column -> type, as DESCRIBE TABLE answers
        self.described: list[str] = []

    def query(self, sql: str) -> Any:
        table = sql.removeprefix("DESCRIBE TABLE ")
        self.described.append(table)
        rows = [(name, kind, "", "", "", "", "") for name, kind in
                self.schema.get(table, {}).items()]
        return SimpleNamespace(result_rows=rows)

    def insert(self, table: str, data: list[list[Any]], *, column_names: list[str],
               column_type_names: list[str] | None, column_oriented: bool,
               settings: dict[str, Any]) -> None:
        token = settings["insert_deduplication_token"]
        self.attempts.append(token)
        if self.fail_next:
            self.fail_next -= 1
            raise self.error
        assert column_oriented
        self.inserts.append(
            {"table": table, "columns": dict(zip(column_names, data, strict=True)),
             "token": token, "types": column_type_names}
        )

    def rows(self, table: str) -> list[dict[str, Any]]:
        out = []
        for ins in self.inserts:
            if ins["table"] == table:
                cols = ins["columns"]
                n = len(next(iter(cols.values())))
                out.extend({k: v[i] for k, v in cols.items()} for i in range(n))
        return out


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "n": i} for i in range(start, start + n)]


def writer(client: FakeClient, clock: FakeClock, **kw: Any) -> SinkWriter:
    kw.setdefault("flush_rows", 10)
    kw.setdefault("flush_interval_s", 5.0)
    kw.setdefault("retry_total_s", 30.0)
    return SinkWriter(client, clock=clock, sleep=clock.sleep, **kw)


def test_rows_wait_in_the_buffer_until_flush_rows_then_go_in_one_column_oriented_insert() -> None:
    client, clock = FakeClient(), FakeClock()
    w = writer(client, clock)
    assert w.add("touchpoints", rows(9)) == 0
    assert client.inserts == [] and w.pending_rows == 9
    assert w.add("touchpoints", rows(3, start=9)) == 12
    [ins] = client.inserts
    assert ins["columns"] == {"event_id": [f"e{i}" for i in range(12)], "n": list(range(12))}
    assert w.pending_rows == 0 and w.n_rows_written == 12 and w.n_batches_written == 1


def test_flush_rows_is_per_table_and_flush_writes_every_table() -> None:
    client, clock = FakeClient(), FakeClock()
    w = writer(client, clock)
    w.add("alerts", rows(2))
    w.add("touchpoints", rows(10))
    assert [i["table"] for i in client.inserts] == ["touchpoints"]
    assert w.pending_rows == 2
    assert w.flush() == 2
    assert [i["table"] for i in client.inserts] == ["touchpoints", "alerts"]
    assert w.flush() == 0


def test_the_interval_flushes_everything_once_the_oldest_row_is_old_enough() -> None:
    # t=0 add 1 row | t=4 add 1 row (no flush) | t=5 maybe_flush -> both rows written
    client, clock = FakeClient(), FakeClock()
    w = writer(client, clock)
    w.add("touchpoints", rows(1))
    clock.now += 4
    assert w.add("touchpoints", rows(1, start=1)) == 0
    assert not w.due()
    clock.now += 1
    assert w.due()
    assert w.maybe_flush() == 2
    assert not w.due() and w.maybe_flush() == 0
    # the interval restarts with the next row, not from the last flush
    clock.now += 100
    w.add("touchpoints", rows(1, start=2))
    assert w.pending_rows == 1


def test_retries_back_off_exponentially_reuse_the_token_and_write_once() -> None:
    client, clock = FakeClient(), FakeClock()
    w = writer(client, clock, backoff_initial_s=0.1, backoff_max_s=1.0)
    w.add("touchpoints", rows(3))
    client.fail_next = 6
    assert w.flush() == 3
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert len(set(client.attempts)) == 1, "every retry carries the same dedup token"
    assert len(client.inserts) == 1 and w.n_retries == 6
    assert [r["event_id"] for r in client.rows("touchpoints")] == ["e0", "e1", "e2"]


def test_after_retry_total_s_it_raises_and_keeps_every_row_for_the_next_flush() -> None:
    client, clock = FakeClient(), FakeClock()
    w = writer(client, clock, retry_total_s=10.0, backoff_max_s=2.0)
    w.add("touchpoints", rows(4))
    client.fail_next = 10_000
    start = clock.now
    with pytest.raises(ServiceUnavailable, match="kept buffered"):
        w.flush()
    assert clock.now - start == pytest.approx(10.0)
    assert w.pending_rows == 4 and client.inserts == []
    first_token = client.attempts[0]
    # More rows arrive while ClickHouse is down: they are buffered before the timed flush fails.
    with pytest.raises(ServiceUnavailable):
        w.add("touchpoints", rows(2, start=4))
    assert w.pending_rows == 6
    client.fail_next = 0
    assert w.flush() == 6
    assert [r["event_id"] for r in client.rows("touchpoints")] == [f"e{i}" for i in range(6)]
    assert client.inserts[0]["token"] == first_token, "the failed batch keeps its token"
    assert client.inserts[1]["token"] != first_token
    assert w.pending_rows == 0


def test_holds_says_whether_a_tables_rows_are_not_yet_written() -> None:
    """Buffered, or sealed by a flush that failed: held until an insert confirms them (the
    worker acknowledges identity links in Redis only once their table holds none)."""
    client, clock = FakeClient(), FakeClock()
    w = writer(client, clock, retry_total_s=1.0)
    assert not w.holds("identity_links")
    w.add("identity_links", rows(2))
    w.add("touchpoints", rows(1))
    assert w.holds("identity_links") and w.holds("touchpoints")
    w.flush(tables=["touchpoints"])
    assert w.holds("identity_links") and not w.holds("touchpoints")
    client.fail_next = 10_000
    with pytest.raises(ServiceUnavailable):
        w.flush()
    assert w.holds("identity_links")  # sealed, not written
    client.fail_next = 0
    w.flush()
    assert not w.holds("identity_links")


def test_a_schema_error_is_not_retried_and_keeps_the_rows() -> None:
    client, clock = FakeClient(), FakeClock()
    w = writer(client, clock)
    w.add("touchpoints", rows(2))
    client.fail_next = 1
    client.error = DatabaseError("Code: 60. DB::Exception: Table journeymap.touchpoints does "
                                 "not exist. (UNKNOWN_TABLE)")
    with pytest.raises(SchemaError, match="journeymap migrate"):
        w.flush()
    assert clock.sleeps == [] and w.pending_rows == 2
    assert w.flush() == 2


def test_rows_of_one_table_must_share_their_keys_and_a_bad_row_leaves_the_buffer_aligned() -> None:
    client, clock = FakeClient(), FakeClock()
    w = writer(client, clock)
    w.add("touchpoints", rows(2))
    with pytest.raises(ValueError, match="lacks column 'n'"):
        w.add("touchpoints", [{"event_id": "ok", "n": 5}, {"event_id": "x", "m": 1}])
    with pytest.raises(ValueError, match="expected"):
        w.add("touchpoints", [{"event_id": "ok", "n": 6}, {"event_id": "x"}])
    with pytest.raises(ValueError, match="same keys"):
        w.add("touchpoints", [{"event_id": "x"}])
    with pytest.raises(ValueError, match="same keys"):
        w.add_columns("touchpoints", {"other": [1]})
    with pytest.raises(ValueError, match="different lengths"):
        w.add_columns("alerts", {"a": [1, 2], "b": [1]})
    with pytest.raises(ValueError, match="not a table name"):
        w.add("touchpoints; DROP TABLE x", rows(1))
    # A rejected call buffers none of its rows, not even the good ones before the bad one.
    assert w.pending_rows == 2
    w.add("touchpoints", [{"n": 7, "event_id": "late"}])  # key order does not matter
    w.flush()
    assert client.rows("touchpoints") == [*rows(2), {"event_id": "late", "n": 7}]


def test_add_columns_appends_prepared_columns() -> None:
    client, clock = FakeClient(), FakeClock()
    w = writer(client, clock, flush_rows=5)
    assert w.add_columns("transitions", {"src": ["a", "b"], "n": [1, 2]}) == 0
    assert w.add_columns("transitions", {"src": ["c", "d", "e"], "n": [3, 4, 5]}) == 5
    assert client.inserts[0]["columns"] == {"src": list("abcde"), "n": [1, 2, 3, 4, 5]}


def test_touchpoint_row_carries_the_event_and_the_customer() -> None:
    ev = resolved("c-1", "pricing_page", T0_MS + 5, segment="s2", channel="web",
                  session_id="sess", revenue=12.5, text="hello",
                  properties={"plan": "pro", "seats": 3, "trial": True, "x": None})
    row = touchpoint_row(ev, ingested_at_ms=T0_MS + 99, sentiment=0.25)
    assert row == {
        "event_id": ev.event.event_id, "occurred_at": T0_MS + 5, "customer_id": "c-1",
        "channel": "web", "touchpoint": "pricing_page", "session_id": "sess", "segment": "s2",
        "revenue": 12.5,
        "properties": {"plan": "pro", "seats": "3", "trial": "true", "x": "null"},
        "has_text": True, "sentiment": 0.25, "ingested_at": T0_MS + 99,
    }
    bare = touchpoint_row(resolved("c-2", "landing_page", T0_MS), ingested_at_ms=T0_MS)
    assert bare["revenue"] == 0.0 and bare["session_id"] == "" and bare["properties"] == {}
    assert bare["has_text"] is False and bare["sentiment"] is None


def test_dead_letter_row_keeps_the_original_bytes_and_where_they_came_from() -> None:
    dead = DeadLetter(b"\xff{", "not valid JSON", Source("touchpoints.raw", 3, 42),
                      [{"field": "<root>", "type": "json_invalid", "message": "bad"}])
    row = dead_letter_row(dead, received_at_ms=7)
    assert row["raw_b64"] == "/3s=" and row["reason"] == "not valid JSON"
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == (
        "touchpoints.raw", 3, 42)
    assert row["stage"] == "validate" and '"json_invalid"' in row["errors"]


def test_transition_cell_rows_are_the_pane_cells_with_their_shard_and_version() -> None:
    counter = TransitionCounter(WindowsConfig(sizes_s=[7200], step_s=3600), corrections="cells")

    def step(src: str, dst: str, prev2: str, gap_ms: int, minute: int) -> Step:
        return Step("c1", "s1", "web", dst, src, dst, prev2, gap_ms, T0_MS + minute * 60_000,
                    "sess", False, 0.0, 0)

    counter.update([step("start", "landing_page", "", 0, 1),
                    step("landing_page", "pricing_page", "start", 90_000, 3),
                    step("landing_page", "pricing_page", "start", 95_000, 4)])
    cells = counter.advance(T0_MS + 3_600_000)
    rows = sorted((transition_cell_row(c, 3, T0_MS + 9) for c in cells), key=lambda r: r["src"])
    assert rows == [
        {"shard": 3, "pane_start": T0_MS // 1000, "pane_size_s": 3600, "segment": "s1",
         "channel": "web", "prev2": "start", "src": "landing_page", "dst": "pricing_page",
         "gap_bucket": gap_bucket(90_000), "n": 2, "gap_sum_ms": 185_000,
         "updated_at": T0_MS + 9, "partial": 0},
        {"shard": 3, "pane_start": T0_MS // 1000, "pane_size_s": 3600, "segment": "s1",
         "channel": "web", "prev2": "", "src": "start", "dst": "landing_page", "gap_bucket": 0,
         "n": 1, "gap_sum_ms": 0, "updated_at": T0_MS + 9, "partial": 0},
    ]
    with pytest.raises(ValueError, match="UInt16"):
        transition_cell_row(cells[0], 70_000, 0)
    # A correction to the published pane: only the changed cell, its new value, partial = 1.
    counter.update([step("landing_page", "pricing_page", "start", 95_000, 4)._replace(sign=-1)])
    (update,) = counter.advance(T0_MS + 3_600_000)
    assert transition_cell_row(update, 3, T0_MS + 10) == {
        **rows[0], "n": 1, "gap_sum_ms": 90_000, "updated_at": T0_MS + 10, "partial": 1}


def test_emission_versions_strictly_increase_even_within_one_millisecond() -> None:
    clock = EmissionClock()
    assert [clock(5), clock(5), clock(4), clock(100), clock(100)] == [5, 6, 7, 100, 101]


def test_funnel_rows_match_the_funnel_tables() -> None:
    moved = FunnelTransition("c1", "f", -1, 0, "", "visit", T0_MS, None, "s1", date(2026, 2, 23))
    assert moved.as_row() == {
        "customer_id": "c1", "funnel": "f", "from_stage": "", "to_stage": "visit",
        "ts": T0_MS, "time_in_prev_stage_ms": None, "segment": "s1",
        "cohort_week": date(2026, 2, 23)}
    stats = FunnelStageStats("f", 1, "trial", "*", None, 5, 3, 1, 1500.0, None)
    assert funnel_dropoff_row(stats, T0_MS, shard=2) == {
        "funnel": "f", "stage": "trial", "stage_index": 1, "segment": "*", "cohort_week": None,
        "entered": 5, "advanced": 3, "dropped": 1, "median_time_to_advance_ms": 1500.0,
        "p90_time_to_advance_ms": None, "as_of": T0_MS, "shard": 2}


def test_late_event_row_says_why_and_when() -> None:
    ev = resolved("c-9", "pricing_page", T0_MS - 5000, segment="s3", channel="email")
    late = LateEvent(ev, watermark_ms=T0_MS, frontier_ms=T0_MS - 1000)
    assert late_event_row(late, received_at_ms=T0_MS + 1) == {
        "event_id": ev.event.event_id, "occurred_at": T0_MS - 5000, "customer_id": "c-9",
        "channel": "email", "touchpoint": "pricing_page", "segment": "s3",
        "watermark": T0_MS, "frontier": T0_MS - 1000,
        "reason": "older than the watermark minus the allowed lateness",
        "received_at": T0_MS + 1}


def test_model_rows_serialize_nested_values_as_json_and_missing_ones_as_defaults() -> None:
    alert = Alert("a1", T0_MS, "drift", "critical", "s1", "p_convert", "dropped",
                  {"before": 0.5, "after": np.float64(0.25), "since": T0_MS})
    scores = Scores("c1", T0_MS, "s1", 0.25, 0.5, (("n_pricing", 0.7), ("recency", -0.2)),
                    "email_offer", 0.03, None, "negative", -0.6, (alert,))
    assert customer_score_row(scores, as_of_ms=T0_MS + 7) == {
        "customer_id": "c1", "as_of": T0_MS + 7, "ts": T0_MS, "segment": "s1",
        "p_convert": 0.25, "p_churn": 0.5, "next_best_action": "email_offer",
        "expected_lift": 0.03, "lookalike": None,
        "top_features": '{"n_pricing":0.7,"recency":-0.2}', "sentiment": "negative",
        "sentiment_score": -0.6}
    bare = customer_score_row(
        Scores("c2", T0_MS, "all", 0.5, 0.5, (), None, 0.0, 0.9, None, None), as_of_ms=1)
    assert (bare["next_best_action"], bare["sentiment"], bare["top_features"],
            bare["lookalike"], bare["sentiment_score"]) == ("", "", "{}", 0.9, None)
    profile = SegmentProfile("s1", 40, 0.4, {"web": 0.9, "email": 0.1}, 0.125, ("c1", "c2"))
    assert segment_row(profile, as_of_ms=T0_MS) == {
        "segment": "s1", "as_of": T0_MS, "size": 40, "sample_share": 0.4,
        "centroid": '{"web":0.9,"email":0.1}', "conversion_rate": 0.125,
        "examples": ["c1", "c2"]}
    assert alert_row(alert) == {
        "alert_id": "a1", "ts": T0_MS, "kind": "drift", "severity": "critical",
        "segment": "s1", "metric": "p_convert", "message": "dropped",
        "evidence": f'{{"before":0.5,"after":0.25,"since":{T0_MS}}}'}


def test_attribution_row_matches_the_table() -> None:
    row = Attribution("markov_1", "web", 0.8, 1.5, 99.0).as_row(T0_MS, "channel")
    assert row == {"as_of": T0_MS, "model": "markov_1", "level": "channel", "key": "web",
                   "removal_effect": 0.8, "conversions_attributed": 1.5,
                   "revenue_attributed": 99.0}


def test_identity_conflict_row() -> None:
    row = identity_conflict_row(Conflict("unique_kind", "ev-1", T0_MS, "c1", "c2", ("h1", "h2")))
    assert row == {"event_id": "ev-1", "ts": T0_MS, "reason": "unique_kind",
                   "customer_a": "c1", "customer_b": "c2", "id_hashes": ["h1", "h2"]}


def test_identity_rows() -> None:
    link = identity_link_row(IdentityLink("c1", "email", "h1", T0_MS))
    assert link == {"customer_id": "c1", "kind": "email", "id_hash": "h1", "first_seen": T0_MS}
    merge = identity_merge_row(MergeRecord("c2", "c1", "ev-9", T0_MS, "shared_identifier", 7))
    assert merge == {"loser": "c2", "winner": "c1", "evidence_event_id": "ev-9",
                     "merged_at": T0_MS, "reason": "shared_identifier", "seq": 7}


@pytest.mark.parametrize("sql", [
    "SELECT 1", "  with x AS (SELECT 1) SELECT * FROM x", "-- note\nSELECT 1;",
    "(SELECT 1) UNION ALL (SELECT 2)", "SHOW TABLES", "DESCRIBE touchpoints",
    "EXPLAIN SELECT 1", "SELECT ';' AS semicolon",
])
def test_read_only_statements_pass(sql: str) -> None:
    check_read_only(sql)


@pytest.mark.parametrize(("sql", "message"), [
    ("INSERT INTO touchpoints VALUES (1)", "read-only"),
    ("drop table touchpoints", "read-only"),
    ("/* hi */ ALTER TABLE t DELETE WHERE 1", "read-only"),
    ("SELECT 1; DROP TABLE touchpoints", "one statement"),
    ("   ", "empty"),
])
def test_anything_else_is_refused_with_a_reason(sql: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        check_read_only(sql)


def test_params_are_name_value_pairs() -> None:
    assert parse_params(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    for bad in (["novalue"], ["1x=2"], ["a=1", "a=2"]):
        with pytest.raises(QueryError):
            parse_params(bad)


def test_column_types_are_asked_once_per_table_and_again_after_a_failed_insert() -> None:
    """clickhouse-connect asks the server for the column types before every insert unless it is
    given them: the writer asks once per table (issue 6), and again when an insert failed (a
    migration may have changed the table) or a column is new to it."""
    client = FakeClient({"touchpoints": {"event_id": "String", "n": "UInt32", "x": "Float64"}})
    w = SinkWriter(client, flush_rows=10**6)
    for start in (0, 2, 4):
        w.add("touchpoints", rows(2, start))
        w.flush()
    assert client.described == ["touchpoints"]
    assert [i["types"] for i in client.inserts] == [["String", "UInt32"]] * 3
    client.fail_next, client.error = 1, DatabaseError("Code: 202. DB::Exception: Too many")
    w.add("touchpoints", rows(1, 6))
    w.flush()
    assert client.described == ["touchpoints", "touchpoints"]
    w.add("touchpoints", [{"event_id": "e9", "n": 9, "new": 1}])
    w.flush()  # a column the table does not have (yet): asked again, then left to the client
    assert client.described == ["touchpoints"] * 3 and client.inserts[-1]["types"] is None

"""SinkWriter batching, retries and row shapes, against a fake client (no I/O, no real waiting)."""

from __future__ import annotations

from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from processors.errors import QueryError, SchemaError, ServiceUnavailable
from processors.identity import IdentityLink, MergeRecord
from processors.transitions import TransitionRow
from processors.validation import DeadLetter, Source
from sinks.clickhouse import (
    SinkWriter,
    check_read_only,
    dead_letter_row,
    identity_link_row,
    identity_merge_row,
    parse_params,
    touchpoint_row,
    transition_row,
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

    def __init__(self) -> None:
        self.inserts: list[dict[str, Any]] = []
        self.attempts: list[str] = []
        self.fail_next = 0
        self.error: Exception = OperationalError("Connection refused")

    def insert(self, table: str, data: list[list[Any]], *, column_names: list[str],
               column_oriented: bool, settings: dict[str, Any]) -> None:
        token = settings["insert_deduplication_token"]
        self.attempts.append(token)
        if self.fail_next:
            self.fail_next -= 1
            raise self.error
        assert column_oriented
        self.inserts.append(
            {"table": table, "columns": dict(zip(column_names, data, strict=True)),
             "token": token}
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


def test_transition_rows_are_full_values_with_the_all_channel_as_empty_string() -> None:
    first = TransitionRow(T0_MS, 86_400, "*", "*", 1, "", "landing_page", "pricing_page",
                          3, 90_000, (1, 2) + (0,) * 48)
    row = transition_row(first, updated_at_ms=T0_MS + 1)
    assert row["window_start"] == T0_MS // 1000 and row["channel"] == "" and row["segment"] == "*"
    assert (row["order"], row["src1"], row["n"], row["gap_count"], row["gap_sum_ms"]) == (
        1, "", 3, 3, 90_000)
    assert row["gap_buckets"][:3] == [1, 2, 0] and row["updated_at"] == T0_MS + 1
    second = TransitionRow(T0_MS, 86_400, "s1", "web", 2, "a", "b", "c", 2, 0, ())
    row2 = transition_row(second, updated_at_ms=0)
    assert (row2["channel"], row2["src1"], row2["gap_count"], row2["gap_buckets"]) == (
        "web", "a", 0, [])


def test_identity_rows() -> None:
    link = identity_link_row(IdentityLink("c1", "email", "h1", T0_MS))
    assert link == {"customer_id": "c1", "kind": "email", "id_hash": "h1", "first_seen": T0_MS}
    merge = identity_merge_row(MergeRecord("c2", "c1", "ev-9", T0_MS, "shared_identifier"))
    assert merge == {"loser": "c2", "winner": "c1", "evidence_event_id": "ev-9",
                     "merged_at": T0_MS, "reason": "shared_identifier"}


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

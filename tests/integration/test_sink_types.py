"""The writer's inserts keep every value exactly, now that it gives clickhouse-connect the
column types (asked once per table) instead of letting it ask before every insert (issue 6).

Every column type the writer sends is written through SinkWriter and read back: the values equal
what was given (times as epoch ms, in a zone other than UTC too, NULLs, empty and non-ASCII
strings, arrays, maps, extreme integers), and the rows render the same text in ClickHouse as rows
inserted the way the writer did before (clickhouse-connect's own DESCRIBE). The dedup token
still drops a retried batch; a column added by a migration after the first insert is written.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import clickhouse_connect
import pytest

from sinks.clickhouse import SinkWriter
from tests.integration.test_clickhouse_sink import _answers

pytestmark = pytest.mark.integration

URL = os.environ.get("JOURNEYMAP_CLICKHOUSE__URL", "http://127.0.0.1:8123")
T0 = 1_772_323_200_123  # 2026-03-01T00:00:00.123Z

COLUMNS = """
    k UInt32,
    s String,
    lc LowCardinality(String),
    t64 DateTime64(3, 'UTC'),
    t64_berlin DateTime64(3, 'Europe/Berlin'),
    t64_null Nullable(DateTime64(3, 'UTC')),
    t DateTime('UTC'),
    d Date,
    d_null Nullable(Date),
    f64 Float64,
    f32 Float32,
    f32_null Nullable(Float32),
    f64_null Nullable(Float64),
    u8 UInt8,
    u16 UInt16,
    u64 UInt64,
    u64_null Nullable(UInt64),
    i32 Int32,
    i64 Int64,
    b Bool,
    arr Array(String),
    m Map(String, String),
    mu Map(String, UInt64)
"""


def rows() -> list[dict[str, Any]]:
    out = []
    for k, text in enumerate(["", "plain", "ünïcødé ✓ 数据", "quote ' and \\ and \" and \n"]):
        out.append({
            "k": k, "s": text, "lc": ["web", "app", "", "email"][k],
            "t64": T0 + k * 86_400_001, "t64_berlin": T0 - k * 3_600_007,
            "t64_null": None if k % 2 else T0 + k,
            "t": T0 // 1000 + k, "d": date(2026, 3, 1 + k),
            "d_null": None if k else date(1970, 1, 2),
            "f64": [0.0, -1.5, 1e300, 0.1][k], "f32": [0.0, 0.5, -2.25, 1024.0][k],
            "f32_null": None if k == 1 else 0.25 * k, "f64_null": None if k == 2 else 1.0 / 3,
            "u8": [0, 1, 254, 255][k], "u16": [0, 7, 65_534, 65_535][k],
            "u64": [0, 1, 2**63, 2**64 - 1][k], "u64_null": None if k == 3 else k * 10**15,
            "i32": [0, -1, 2**31 - 1, -(2**31)][k], "i64": [0, -(2**63), 2**63 - 1, 42][k],
            "b": bool(k % 2),
            "arr": [[], ["a"], ["x", "ü", ""], ["q"] * 5][k],
            "m": [{}, {"plan": "pro"}, {"ü": "✓", "": ""}, {"a": "1", "b": "2"}][k],
            "mu": [{}, {"n": 1}, {"big": 2**64 - 1}, {"a": 0, "b": 3}][k],
        })
    return out


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    if not (URL.startswith("http") and _answers(URL)):
        pytest.skip(f"no ClickHouse server at {URL} (journeymap services up)")
    name = f"jm_types_{uuid.uuid4().hex[:10]}"
    client = clickhouse_connect.get_client(dsn=URL)
    client.command(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        client.command(f"DROP DATABASE IF EXISTS {name}")


def _client(database: str) -> Any:
    return clickhouse_connect.get_client(dsn=URL, database=database)


def _as_written(value: Any) -> Any:
    """A value read back, in the form the writer was given it."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return round(value.timestamp() * 1000)
    return value


def test_every_column_type_the_writer_sends_round_trips(database: str) -> None:
    client = _client(database)
    client.command(f"CREATE TABLE every_type ({COLUMNS}) ENGINE = MergeTree ORDER BY k")
    writer = SinkWriter(client, flush_rows=1_000)
    given = rows()
    writer.add("every_type", given[:2])
    writer.flush()
    writer.add("every_type", given[2:])  # the second insert uses the types asked for the first
    writer.flush()
    names = list(given[0])
    got = client.query(f"SELECT {', '.join(names)} FROM every_type ORDER BY k").result_rows
    assert len(got) == len(given)
    for want, row in zip(given, got, strict=True):
        back = dict(zip(names, (_as_written(v) for v in row), strict=True))
        back["t"] = back["t"] // 1000  # DateTime: seconds
        for name in ("f32", "f32_null", "f64_null"):
            if back[name] is not None:
                assert math.isclose(back[name], want[name], rel_tol=1e-7), name
                back[name] = want[name]
        assert back == want


def test_the_rows_are_those_the_untyped_insert_stored(database: str) -> None:
    client = _client(database)
    for table in ("typed", "untyped"):
        client.command(f"CREATE TABLE {table} ({COLUMNS}) ENGINE = MergeTree ORDER BY k")
    writer = SinkWriter(client)
    writer.add("typed", rows())
    writer.flush()
    names = list(rows()[0])
    client.insert("untyped", [[r[n] for r in rows()] for n in names], column_names=names,
                  column_oriented=True)  # clickhouse-connect asks for the types itself
    texts = [client.raw_query(f"SELECT * FROM {table} ORDER BY k FORMAT TabSeparated")
             for table in ("typed", "untyped")]
    assert texts[0] == texts[1] and texts[0].count(b"\n") == len(rows())


def test_a_retried_batch_is_stored_once_and_a_new_column_is_written(database: str) -> None:
    client = _client(database)
    client.command("CREATE TABLE retried (k UInt32, s String) ENGINE = MergeTree ORDER BY k "
                   "SETTINGS non_replicated_deduplication_window = 100")
    writer = SinkWriter(client)
    writer.add("retried", [{"k": 1, "s": "a"}, {"k": 2, "s": "b"}])
    writer.flush()
    for _ in range(2):  # the same rows under one token, as a retry sends them
        client.insert("retried", [[3], ["c"]], column_names=["k", "s"], column_oriented=True,
                      column_type_names=["UInt32", "String"],
                      settings={"insert_deduplication_token": "jm-retry"})
    client.command("ALTER TABLE retried ADD COLUMN t DateTime64(3, 'UTC')")  # a migration
    writer.add("retried", [{"k": 4, "s": "d", "t": T0}])
    writer.flush()
    assert client.query("SELECT k, s, toUnixTimestamp64Milli(t) FROM retried ORDER BY k"
                        ).result_rows == [(1, "a", 0), (2, "b", 0), (3, "c", 0), (4, "d", T0)]

"""What one row costs the writer's process to send to ClickHouse, per table and format (issue 6).

    python bench/bench_insert_encode.py [--customers 2000] [--batch-rows 1000] [--repeat 5]

The streaming worker's threads spent most of their time in ClickHouse inserts (py-spy, session
5), and clickhouse-connect builds its Native format in Python, holding the GIL the event loop
needs. The rows here are the ones the worker's writer really sends: a replay of a simulated
history (models on) through a SinkWriter whose inserts are captured instead of sent, so every
table, column order and Python value type is the writer's own.

Per table, in batches of --batch-rows rows (a worker's batch is ~1,000 events), the process CPU
time (time.process_time, all threads) of turning the writer's sealed columns into the request
body, per row:

* ``native``: clickhouse-connect's ``client.insert(..., column_oriented=True)`` encoding (its
  Native transform in Python, with the client's lz4 compression): the baseline;
* ``rust``: the same with clickhouse-connect's optional Rust Native codec
  (``native_codec="rust"``, the clickhouse-connect-core wheel; measured only where installed);
* ``arrow``: pyarrow arrays of the table's types built from the same columns, written as one
  Arrow IPC stream (``raw_insert(fmt="ArrowStream")``);
* ``json``: each row as JSON (orjson) for ``JSONEachRow``, DateTime64 columns turned from epoch
  ms into seconds first (ClickHouse reads a JSON number as seconds).

Then the same batches inserted for real, each variant into its own scratch database on the
server: wall time and process CPU time per row, the server's work included in the wall time.
``native`` inserts as the writer did until session 6 (clickhouse-connect asks the server for the
column types with a ``DESCRIBE TABLE`` before every insert), ``native-typed`` as it does now
(the types given, asked once per table). Last, a check that every variant's tables hold the same
values (every column as text). Baseline: ``native`` in the same run; ratio = variant / native.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402

from sinks import clickhouse as ch  # noqa: E402

Batch = tuple[str, tuple[str, ...], list[list[Any]]]

# -- request bodies of one insert of the writer's columns, per format --------------------------

# "rust": Native too, encoded by clickhouse-connect's optional Rust codec (clickhouse-connect-core)
ALL_FORMATS: Final = ("native", "rust", "arrow", "json")
Schema = list[tuple[str, str]]  # column name -> ClickHouse type, in table order

_DT64: Final = re.compile(r"^DateTime64\((\d)(?:,\s*'([^']+)')?\)$")
_DT: Final = re.compile(r"^DateTime(?:\('([^']+)'\))?$")
_UNITS: Final = {0: "s", 3: "ms", 6: "us", 9: "ns"}
_SIMPLE: Final[dict[str, pa.DataType]] = {
    "String": pa.string(), "Bool": pa.bool_(), "Date": pa.date32(),
    "Float64": pa.float64(), "Float32": pa.float32(),
    "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(), "UInt64": pa.uint64(),
    "Int8": pa.int8(), "Int16": pa.int16(), "Int32": pa.int32(), "Int64": pa.int64(),
}


def _split_pair(inner: str) -> tuple[str, str]:
    """"K, V" of Map(K, V), where V may hold commas itself."""
    depth = 0
    for i, c in enumerate(inner):
        depth += c == "("
        depth -= c == ")"
        if c == "," and depth == 0:
            return inner[:i].strip(), inner[i + 1:].strip()
    raise ValueError(f"not a key, value pair: {inner!r}")


def arrow_type(ch_type: str) -> pa.DataType:
    """The Arrow type the server reads into `ch_type` without loss; ValueError if none here."""
    for wrapper in ("LowCardinality(", "Nullable("):
        if ch_type.startswith(wrapper):
            return arrow_type(ch_type[len(wrapper):-1])
    if ch_type.startswith("Array("):
        return pa.list_(arrow_type(ch_type[6:-1]))
    if ch_type.startswith("Map("):
        key, value = _split_pair(ch_type[4:-1])
        return pa.map_(arrow_type(key), arrow_type(value))
    if (m := _DT64.match(ch_type)) is not None and int(m[1]) in _UNITS:
        return pa.timestamp(_UNITS[int(m[1])], tz=m[2])
    if (m := _DT.match(ch_type)) is not None:
        return pa.timestamp("s", tz=m[1])
    if ch_type in _SIMPLE:
        return _SIMPLE[ch_type]
    raise ValueError(f"no Arrow type for ClickHouse type {ch_type!r}")


def rust_codec_available() -> bool:
    """Whether clickhouse-connect's Rust Native codec (the clickhouse-connect-core wheel,
    ``clickhouse-connect[rust]``) is installed and fits this clickhouse-connect."""
    from clickhouse_connect.driver.exceptions import ClickHouseError
    from clickhouse_connect.driver.rustcodec import resolve_native_codec

    try:
        return resolve_native_codec("rust") == "rust"
    except ClickHouseError:  # NotSupportedError: not installed, or a version that does not fit
        return False


def table_schema(client: Any, table: str, database: str | None = None) -> Schema:
    full = f"{database}.{table}" if database else table
    rows = client.query(f"DESCRIBE TABLE {full}").result_rows
    return [(r[0], r[1]) for r in rows if r[2] not in ("MATERIALIZED", "ALIAS", "EPHEMERAL")]


def arrow_body(schema: Mapping[str, str], names: Sequence[str],
               columns: Sequence[Sequence[Any]]) -> bytes:
    """The columns as one Arrow IPC stream (record batch), typed by the table's schema."""
    arrays = [pa.array(col, type=arrow_type(schema[name]))
              for name, col in zip(names, columns, strict=True)]
    batch = pa.RecordBatch.from_arrays(arrays, names=list(names))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def json_body(schema: Mapping[str, str], names: Sequence[str],
              columns: Sequence[Sequence[Any]]) -> bytes:
    """The columns as JSONEachRow (one JSON array of objects); DateTime64 in seconds."""
    cols = []
    for name, col in zip(names, columns, strict=True):
        ch_type = schema[name]
        if ch_type.startswith("Nullable("):
            ch_type = ch_type[9:-1]
        m = _DT64.match(ch_type)
        if m is not None:
            scale = 10 ** int(m[1])
            col = [v / scale if isinstance(v, int) else v for v in col]
        cols.append(col)
    return orjson.dumps([dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)])


def native_body(client: Any, full_table: str, schema: Mapping[str, str], names: Sequence[str],
                columns: Sequence[Sequence[Any]]) -> bytes:
    """What clickhouse-connect's insert sends (Native, the client's compression)."""
    ctx = client.create_insert_context(
        full_table, list(names), column_type_names=[schema[n] for n in names],
        column_oriented=True, data=columns)
    ctx.compression = client.write_compression
    return b"".join(client._transform.build_insert(ctx))


def body(fmt: str, client: Any, full_table: str, schema: Schema, names: Sequence[str],
         columns: Sequence[Sequence[Any]]) -> bytes:
    types = dict(schema)
    if fmt in ("native", "rust"):  # the client given has the codec
        return native_body(client, full_table, types, names, columns)
    if fmt == "arrow":
        return arrow_body(types, names, columns)
    return json_body(types, names, columns)


def insert(fmt: str, client: Any, table: str, database: str, schema: Schema,
           names: Sequence[str], columns: Sequence[Sequence[Any]],
           settings: dict[str, Any], *, typed: bool = True) -> None:
    """One insert. Native ones give clickhouse-connect the column types when `typed`; without
    them it asks the server (``DESCRIBE TABLE``, one more round trip) before every insert."""
    full = f"{database}.{table}"
    if fmt in ("native", "rust"):
        types = dict(schema)
        client.insert(table, columns, database=database, column_names=list(names),
                      column_type_names=[types[n] for n in names] if typed else None,
                      column_oriented=True, settings=settings)
        return
    data = body(fmt, client, full, schema, names, columns)
    client.raw_insert(full, list(names), data, settings=settings,
                      fmt="ArrowStream" if fmt == "arrow" else "JSONEachRow")


def same_tables(client: Any, table: str, databases: Sequence[str], names: Sequence[str]) -> bool:
    """Whether every database's `table` holds the same rows, every column compared."""
    cols = ", ".join(f"toString({n})" for n in names)
    seen = None
    for db in databases:
        rows = sorted(client.query(f"SELECT {cols} FROM {db}.{table}").result_rows)
        if seen is not None and rows != seen:
            return False
        seen = rows
    return True


# -- the bench ------------------------------------------------------------------------------

# "rust" only where the clickhouse-connect-core wheel is installed
FORMATS = tuple(f for f in ALL_FORMATS if f != "rust" or rust_codec_available())
INSERTS = ("native", "native-typed", *FORMATS[1:])


class Capture(ch.SinkWriter):
    """A SinkWriter that keeps what it would insert."""

    batches: list[Batch]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(None, *args, **kwargs)
        self.batches = []

    def _insert(self, batch: Any) -> None:
        self.batches.append((batch.table, batch.names, batch.columns))


def captured_rows(customers: int) -> dict[str, tuple[tuple[str, ...], list[list[Any]]]]:
    """table -> (column names, columns) of everything a replay of `customers` writes."""
    from simulator.model import SimConfig, simulate
    from streams.replay import Replayer
    from streams.settings import load_settings

    writer: dict[str, Capture] = {}

    def make_writer(**kwargs: Any) -> Capture:
        writer["w"] = Capture(**kwargs)
        return writer["w"]

    sim = simulate(SimConfig(customers=customers, seed=1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        path.write_bytes(b"\n".join(sim.lines) + b"\n")
        replayer = Replayer(load_settings().processing(),
                            SimpleNamespace(writer=make_writer))  # type: ignore[arg-type]
        replayer.run([path])
        replayer.writer.flush()
    tables: dict[str, tuple[tuple[str, ...], list[list[Any]]]] = {}
    for table, names, columns in writer["w"].batches:
        if table not in tables:
            tables[table] = (names, [[] for _ in names])
        known, into = tables[table]
        for name, column in zip(names, columns, strict=True):
            into[known.index(name)].extend(column)
    return tables


def slices(columns: list[list[Any]], size: int) -> list[list[list[Any]]]:
    n = len(columns[0])
    return [[c[i:i + size] for c in columns] for i in range(0, n, size)]


def cpu_per_row(fn: Callable[[list[list[Any]]], Any], parts: list[list[list[Any]]],
                repeat: int) -> float:
    """Median over `repeat` passes of process CPU seconds per row."""
    n = sum(len(p[0]) for p in parts)
    runs = []
    for _ in range(repeat):
        c0 = time.process_time()
        for part in parts:
            fn(part)
        runs.append((time.process_time() - c0) / n)
    return statistics.median(runs)


def measure(clients: dict[str, Any], dbs: dict[str, str], table: str, schema: Schema,
            names: tuple[str, ...], parts: list[list[list[Any]]], repeat: int
            ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Per format: encode CPU s per row, then per insert variant (its own database) wall and
    process CPU s per row; "native" asks the server for the column types before every insert
    (DESCRIBE TABLE, what the writer did), "native-typed" gives them."""
    n = sum(len(p[0]) for p in parts)
    cpu, wall = {}, {}
    for fmt in FORMATS:
        full = f"{dbs['native']}.{table}"

        def encode_one(part: list[list[Any]], fmt: str = fmt, full: str = full) -> bytes:
            return body(fmt, clients[fmt], full, schema, names, part)

        cpu[fmt] = cpu_per_row(encode_one, parts, repeat)
    for fmt, name in dbs.items():
        for typed in (False, True) if fmt == "native" else (True,):
            if typed and fmt == "native":  # the same rows again: a new table
                client = clients[fmt]
                client.command(f"TRUNCATE TABLE {name}.{table}")
            t0, c0 = time.perf_counter(), time.process_time()
            for part in parts:
                insert(fmt, clients[fmt], table, name, schema, names, part,
                              settings={"insert_deduplication_token": uuid.uuid4().hex},
                              typed=typed)
            key = f"{fmt}-typed" if typed and fmt == "native" else fmt
            wall[key] = ((time.perf_counter() - t0) / n, (time.process_time() - c0) / n)
    return cpu, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--batch-rows", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-rows", type=int, default=500, help="skip smaller tables")
    args = ap.parse_args()
    import clickhouse_connect

    from streams.services import clickhouse_server_url
    from streams.settings import load_settings

    settings = load_settings()
    print(f"replaying {args.customers:,} simulated customers to capture the writer's rows ...",
          flush=True)
    tables = captured_rows(args.customers)
    url = urllib.parse.urlsplit(clickhouse_server_url(settings))
    db = f"bench_enc_{uuid.uuid4().hex[:8]}"
    dbs = {fmt: f"{db}_{fmt}" for fmt in FORMATS}
    clients = {fmt: clickhouse_connect.get_client(
        host=url.hostname, port=url.port or 8123, username=settings.clickhouse.user,
        password=settings.clickhouse.password.get_secret_value(),
        native_codec="rust" if fmt == "rust" else "python") for fmt in FORMATS}
    client = clients["native"]
    load = [os.getloadavg()[0]]
    results = []
    try:
        for name in dbs.values():
            store = ch.connect(settings.clickhouse.model_copy(
                update={"url": clickhouse_server_url(settings), "database": name}))
            ch.migrate(store)
            store.close()
        for table, (names, columns) in sorted(tables.items()):
            n = len(columns[0])
            if n < args.min_rows:
                continue
            parts = slices(columns, args.batch_rows)
            schema = table_schema(client, table, dbs["native"])
            cpu, wall = measure(clients, dbs, table, schema, names, parts, args.repeat)
            same = same_tables(client, table, list(dbs.values()), names)
            results.append((table, n, cpu, wall, same))
            print(f"  {table:24s} {n:8,d} rows  " + "  ".join(
                f"{fmt} {cpu[fmt] * 1e6:6.1f} us" for fmt in FORMATS) +
                f"  same values: {same}", flush=True)
        load.append(os.getloadavg()[0])
    finally:
        for name in dbs.values():
            client.command(f"DROP DATABASE IF EXISTS {name}")
    print(f"\nrows of a {args.customers:,}-customer replay, batches of {args.batch_rows:,} rows, "
          f"median of {args.repeat}; ClickHouse {client.server_version} at {url.netloc}; load "
          f"average {load[0]:.1f} -> {load[-1]:.1f} on {os.cpu_count()} cores")
    print(f"{'table':24s} {'rows':>8s} | encode CPU us/row: " + " ".join(
        f"{f:>7s}" for f in FORMATS) + " | ratio to native | insert us/row, wall/CPU: "
        + " ".join(f"{f:>10s}" for f in INSERTS))
    tot = {f: 0.0 for f in FORMATS}
    for table, n, cpu, wall, same in results:
        for f in FORMATS:
            tot[f] += cpu[f] * n
        us = " ".join(f"{cpu[f] * 1e6:7.2f}" for f in FORMATS)
        ratios = " ".join(f"{cpu[f] / cpu['native']:5.2f}" for f in FORMATS)
        walls = " ".join(f"{wall[f][0] * 1e6:5.1f}/{wall[f][1] * 1e6:4.1f}" for f in INSERTS)
        print(f"{table:24s} {n:8,d} | {us} | {ratios} | {walls}"
              f"{'' if same else '  VALUES DIFFER'}")
    total = " ".join(f"{tot[f]:7.3f}" for f in FORMATS)
    ratios = " ".join(f"{tot[f] / tot['native']:5.2f}" for f in FORMATS)
    print(f"{'all rows (CPU s)':24s} {sum(r[1] for r in results):8,d} | {total} | {ratios}")

if __name__ == "__main__":
    main()

"""Sink throughput: SinkWriter rows/s next to a bare `client.insert` of the same prepared columns.

    python bench/bench_sink.py [--rows 200000] [--flush-rows 50000] [--server URL]
                               [--matrix-days 90] [--skip-insert]

Both run in the same process on the same store, into `touchpoints`, in batches of `flush_rows`
rows (the bare insert gets the same batch size). Two sink paths: `add` of row dicts (includes
turning rows into columns) and `add_columns`. Runs embedded chDB and a server: the URL given,
JOURNEYMAP_CLICKHOUSE__URL / http://127.0.0.1:8123 when it answers, else a private chDB server.

With --matrix-days N (embedded only): N days of hourly transition panes on two shards (every tenth
pane emitted twice), then the 7-day `transition_matrix(..., window_end='latest')` query next to the
least a query can do over the same cells: a bare GROUP BY of those 7 days without FINAL or the
latest-version filter (a ratio of query times). Also the same 7-day aggregation over
`transition_cells_current` next to that view as migration 0003 defined it (the cells of the
latest emission of each pane, before 0011 made it the latest row of each cell), alternating.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sinks.clickhouse import SinkWriter, Store, connect, migrate  # noqa: E402

T0 = 1_772_323_200_000
CHANNELS = ("web", "app", "email", "support", "sales", "social", "ads", "other")
TOUCHPOINTS = ("landing_page", "pricing_page", "blog_post", "signup", "demo_request", "purchase")


def make_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"ev-{i}",
            "occurred_at": T0 + i * 997,
            "customer_id": f"c-{i % 5000}",
            "channel": CHANNELS[i % 8],
            "touchpoint": TOUCHPOINTS[i % 6],
            "session_id": f"s-{i // 7}",
            "segment": f"seg{i % 4}",
            "revenue": float(i % 13),
            "properties": {"plan": "pro"} if i % 3 else {},
            "has_text": i % 5 == 0,
            "sentiment": 0.5 if i % 5 == 0 else None,
            "ingested_at": T0 + 10**9,
        }
        for i in range(n)
    ]


def to_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    names = list(rows[0])
    return {name: [r[name] for r in rows] for name in names}


def timed(store: Store, run: Callable[[], None]) -> float:
    store.client.command("TRUNCATE TABLE touchpoints")
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench(store: Store, n: int, flush_rows: int, repeat: int) -> dict[str, float]:
    migrate(store)
    rows = make_rows(n)
    columns = to_columns(rows)
    names = list(columns)

    def bare() -> None:
        for lo in range(0, n, flush_rows):
            store.client.insert(
                "touchpoints", [c[lo : lo + flush_rows] for c in columns.values()],
                column_names=names, column_oriented=True,
            )

    def sink_rows() -> None:
        writer = SinkWriter(store.client, flush_rows=flush_rows, flush_interval_s=3600)
        for lo in range(0, n, 1000):  # as an agent would: batch after batch
            writer.add("touchpoints", rows[lo : lo + 1000])
        writer.flush()

    def sink_columns() -> None:
        writer = SinkWriter(store.client, flush_rows=flush_rows, flush_interval_s=3600)
        for lo in range(0, n, 1000):
            writer.add_columns("touchpoints", {k: v[lo : lo + 1000] for k, v in columns.items()})
        writer.flush()

    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, run in (("bare", bare), ("sink_rows", sink_rows), ("sink_columns", sink_columns)):
            elapsed = timed(store, run)
            best[name] = min(best.get(name, float("inf")), elapsed)
    assert store.client.query("SELECT count() FROM touchpoints").result_rows[0][0] == n
    return {name: n / secs for name, secs in best.items()}


# transition_cells_current as migration 0003 defined it, for comparison only.
_CURRENT_0003 = """CREATE OR REPLACE VIEW transition_cells_current_0003 AS
SELECT shard, pane_start, pane_size_s, segment, channel, prev2, src, dst, gap_bucket, n, gap_sum_ms
FROM transition_cells FINAL
WHERE (shard, pane_start, pane_size_s, updated_at) IN
    (SELECT shard, pane_start, pane_size_s, updated_at FROM transition_panes FINAL)"""


def bench_matrix(store: Store, days: int, cells_per_pane: int = 400, repeat: int = 5
                 ) -> dict[str, float]:
    """Seconds for the 7-day matrix view and for a bare GROUP BY of the same cells."""
    migrate(store)
    writer = SinkWriter(store.client, flush_rows=200_000, flush_interval_s=3600)
    n_cells = 0
    for pane in range(days * 24):
        for shard in (0, 1):
            for version in (1, 2) if pane % 10 == 0 else (1,):
                cols: dict[str, list[Any]] = {k: [] for k in (
                    "shard", "pane_start", "pane_size_s", "segment", "channel", "prev2", "src",
                    "dst", "gap_bucket", "n", "gap_sum_ms", "updated_at")}
                for i in range(cells_per_pane - (version == 2)):
                    for k, v in zip(cols, (
                            shard, T0 // 1000 + pane * 3600, 3600, f"seg{i % 4}", CHANNELS[i % 8],
                            TOUCHPOINTS[i // 8 % 6], TOUCHPOINTS[i // 48 % 6],
                            TOUCHPOINTS[(i + pane) % 6], i % 20, 1 + i % 7, 60_000 * (i % 7),
                            T0 + pane * 3_600_000 + version), strict=True):
                        cols[k].append(v)
                n_cells += len(cols["n"])
                writer.add_columns("transition_cells", cols)
    writer.flush()
    store.client.command("OPTIMIZE TABLE transition_cells FINAL")
    view = ("SELECT order, src1, src, dst, n, p FROM transition_matrix(window_size_s = 604800, "
            "segment = 'seg1', window_end = 'latest')")
    bare = ("SELECT if(prev2 = '', 1, 2) AS o, prev2, src, dst, sum(n) FROM transition_cells "
            "WHERE segment = 'seg1' AND pane_start >= (SELECT max(pane_start) FROM "
            "transition_cells) - 7 * 86400 GROUP BY o, prev2, src, dst")
    store.client.command(_CURRENT_0003)
    cells = ("SELECT if(prev2 = '', 1, 2) AS o, prev2, src, dst, sum(n) FROM {} WHERE segment = "
             "'seg1' AND pane_start >= (SELECT max(pane_start) FROM transition_panes) - 7 * 86400 "
             "GROUP BY o, prev2, src, dst")
    queries = {"view": view, "bare": bare, "current": cells.format("transition_cells_current"),
               "current_0003": cells.format("transition_cells_current_0003")}
    best = dict.fromkeys(queries, float("inf"))
    for _ in range(repeat):
        for name, sql in queries.items():
            start = time.perf_counter()
            store.client.query(sql)
            best[name] = min(best[name], time.perf_counter() - start)
    return {"cells": float(n_cells), **best}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def report(label: str, rates: dict[str, float]) -> None:
    base = rates["bare"]
    print(f"{label}: bare client.insert {base:,.0f} rows/s")
    for name in ("sink_rows", "sink_columns"):
        print(f"{label}: {name:<13} {rates[name]:,.0f} rows/s  ratio {rates[name] / base:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--flush-rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", default=None)
    parser.add_argument("--matrix-days", type=int, default=0)
    parser.add_argument("--skip-insert", action="store_true")
    args = parser.parse_args()
    database = f"jm_bench_{os.getpid()}"

    if args.matrix_days:
        with tempfile.TemporaryDirectory() as tmp:
            target = SimpleNamespace(url=f"{tmp}/chdb", database=database, user="default",
                                     password="")
            with connect(target) as store:
                m = bench_matrix(store, args.matrix_days)
                print(f"embedded chDB: {m['cells']:,.0f} transition cells ({args.matrix_days} days)"
                      f"; 7-day transition_matrix {m['view'] * 1000:.0f} ms, bare GROUP BY of the "
                      f"same cells {m['bare'] * 1000:.0f} ms, ratio {m['view'] / m['bare']:.1f}x")
                print(f"7-day cells of seg1 over transition_cells_current {m['current'] * 1000:.0f}"
                      f" ms, over 0003's definition {m['current_0003'] * 1000:.0f} ms, ratio "
                      f"{m['current'] / m['current_0003']:.2f}")
    if args.skip_insert:
        return

    with tempfile.TemporaryDirectory() as tmp:
        target = SimpleNamespace(url=f"{tmp}/chdb", database=database, user="default",
                                 password="")
        with connect(target) as store:
            report("embedded chDB", bench(store, args.rows, args.flush_rows, args.repeat))

    url = args.server or os.environ.get("JOURNEYMAP_CLICKHOUSE__URL", "http://127.0.0.1:8123")
    server = None
    if not _answers(url):
        sys.path.insert(0, str(ROOT / "tests" / "integration"))
        from test_clickhouse_sink import PrivateServer

        server = PrivateServer(Path(tempfile.mkdtemp(prefix="jm_bench_server_")))
        server.start()
        url = server.url
    try:
        target = SimpleNamespace(url=url, database=database, user="default", password="")
        with connect(target) as store:
            try:
                report(f"server {url}", bench(store, args.rows, args.flush_rows, args.repeat))
            finally:
                store.client.command(f"DROP DATABASE IF EXISTS `{database}`")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()

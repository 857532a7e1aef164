"""Sink throughput: SinkWriter rows/s next to a bare `client.insert` of the same prepared columns.

    python bench/bench_sink.py [--rows 200000] [--flush-rows 50000] [--server URL]

Both run in the same process on the same store, into `touchpoints`, in batches of `flush_rows`
rows (the bare insert gets the same batch size). Two sink paths: `add` of row dicts (includes
turning rows into columns) and `add_columns`. Runs embedded chDB and a server: the URL given,
JOURNEYMAP_CLICKHOUSE__URL / http://127.0.0.1:8123 when it answers, else a private chDB server.
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
    args = parser.parse_args()
    database = f"jm_bench_{os.getpid()}"

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

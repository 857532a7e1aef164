"""A development ClickHouse server made of embedded chDB (private to `journeymap services`).

    python -m streams.chdb_server --http-port 8123 --tcp-port 9000 --data DIR

chDB's module-level query runs a full clickhouse-local, which reads ``./config.xml`` from the
working directory: with ``listen_host``, ``http_port`` and ``tcp_port`` there, ``SYSTEM START
LISTEN`` opens real HTTP and native listeners that stay up while a query runs. So we start them
and run a query that sleeps for years. SIGTERM/SIGINT kill that query through our own HTTP port,
so the process ends with status 0. While clients still hold keep-alive connections, the embedded
server waits about 5 s for them and then ends the process with status 1 and no message; inserts
that were acknowledged are on disk either way, and the data directory survives restarts.
Loopback only, no password: for tests and local development, not production.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from types import FrameType

# Output must be TabSeparated: clickhouse-connect's version handshake fails with other formats.
OUTPUT_FORMAT = "TabSeparated"
_SERVE_MARKER = "journeymap_chdb_server_serve"
SERVE_SQL = (
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    f"SELECT sleepEachRow(1) AS {_SERVE_MARKER} FROM numbers(1000000000) "
    "SETTINGS max_block_size=1, max_execution_time=0 FORMAT Null"
)
STOP_TIMEOUT_S = 10.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m streams.chdb_server", description=__doc__)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--tcp-port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="chDB data directory")
    return parser.parse_args(argv)


def check_config(config: Path, http_port: int, tcp_port: int) -> str | None:
    """Why ``config`` cannot serve these ports, or None when it can."""
    if not config.is_file():
        return f"{config.resolve()} is missing: run from the directory holding the config.xml"
    text = config.read_text()
    for tag, port in (("http_port", http_port), ("tcp_port", tcp_port)):
        if f"<{tag}>{port}</{tag}>" not in text:
            return f"{config.resolve()} does not set <{tag}>{port}</{tag}>"
    return None


def _kill_serve_query(http_port: int) -> None:
    sql = f"KILL QUERY WHERE query LIKE '%{_SERVE_MARKER} FROM%' AND query NOT LIKE '%KILL%' ASYNC"
    url = f"http://127.0.0.1:{http_port}/?" + urllib.parse.urlencode({"query": sql})
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5):
            pass
    except OSError as exc:
        print(f"chdb_server: could not kill the serving query ({exc}); exiting", flush=True)


def serve(http_port: int, tcp_port: int, data: Path) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit status."""
    problem = check_config(Path("config.xml"), http_port, tcp_port)
    if problem:
        print(f"chdb_server: {problem}", file=sys.stderr, flush=True)
        return 2
    import chdb._chdb as chdb_core  # heavy import, after the cheap checks

    # chDB would otherwise install process-wide handlers over ours and die on SIGTERM mid-write.
    chdb_core.set_signal_handlers_enabled(0)  # type: ignore[attr-defined]
    data.mkdir(parents=True, exist_ok=True)
    failure: list[BaseException] = []
    stopping = threading.Event()

    def run() -> None:
        try:
            chdb_core.query(SERVE_SQL, OUTPUT_FORMAT, path=str(data))  # type: ignore[attr-defined]
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            stopping.set()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(target=run, name="chdb-serve", daemon=True)
    worker.start()
    print(
        f"chdb_server: listening on 127.0.0.1:{http_port} (http), :{tcp_port} (tcp), "
        f"data {data.resolve()}",
        flush=True,
    )
    while not stopping.wait(0.5):
        pass
    if worker.is_alive():
        _kill_serve_query(http_port)
        worker.join(STOP_TIMEOUT_S)
    if worker.is_alive():
        print("chdb_server: serving query did not stop in time; exiting anyway", flush=True)
        return 1
    # A killed query raises "Query was cancelled"; anything else ended the server unasked.
    if failure and "cancel" not in str(failure[0]).lower():
        print(f"chdb_server: stopped: {failure[0]}", file=sys.stderr, flush=True)
        return 1
    print("chdb_server: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    sys.exit(serve(args.http_port, args.tcp_port, args.data))


if __name__ == "__main__":
    main()

"""`journeymap replay` end to end on a simulated file into embedded chDB, next to plain
`orjson.loads` of the same file's lines in the same run (issue 5).

    python bench/bench_replay.py [--customers 104000] [--file events.jsonl] [--no-models]

Simulates about 9.6 events per customer (104k customers: about 1M events) with
`journeymap simulate` unless `--file` is given, then runs `journeymap replay FILE --clickhouse
DIR` in a child process on a fresh embedded data directory: decode, identity, journeys,
transitions, funnels, attribution, the models (unless `--no-models`) and every ClickHouse write,
timed from start to exit (wall) and by the child's CPU time. The baseline parses the same lines
with `orjson.loads` in this process. The machine may be shared: compare the ratios.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson


def journeymap(*args: str) -> list[str]:
    exe = shutil.which("journeymap")
    return [exe, *args] if exe else [sys.executable, "-m", "streams.cli", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=104_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--file", type=Path, default=None,
                        help="Replay this JSON Lines file instead of simulating one.")
    parser.add_argument("--no-models", action="store_true", help="Pass --no-models to replay.")
    parser.add_argument("--chunk-lines", type=int, default=20_000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_replay_"))
    try:
        path = args.file
        if path is None:
            path = work / "events.jsonl"
            print(f"simulating {args.customers:,} customers -> {path}", flush=True)
            subprocess.run(journeymap("simulate", "--customers", str(args.customers),
                                      "--seed", str(args.seed), "--out", str(path), "--quiet"),
                           check=True)
        lines = path.read_bytes().splitlines()
        n = len(lines)

        start = time.process_time()
        for line in lines:
            orjson.loads(line)
        parse_s = time.process_time() - start
        del lines

        cmd = journeymap("replay", str(path), "--clickhouse", str(work / "chdb"), "--quiet",
                         "--no-serve-redis", "--chunk-lines", str(args.chunk_lines),
                         *(["--no-models"] if args.no_models else []))
        print("running:", " ".join(cmd), flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall_s = time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

        print(f"lines: {n:,}  file: {path.stat().st_size / 1e6:,.0f} MB  "
              f"models: {'off' if args.no_models else 'on'}")
        print(f"baseline orjson.loads:    {n / parse_s:12,.0f} events/s (CPU)")
        print(f"replay end to end, wall:  {n / wall_s:12,.0f} events/s ({wall_s:,.1f} s)")
        print(f"replay end to end, CPU:   {n / cpu_s:12,.0f} events/s ({cpu_s:,.1f} s, all "
              "threads of the child: chDB works in its own threads)")
        print(f"ratio to orjson.loads:    {parse_s / wall_s:12.3f} (wall)  "
              f"{parse_s / cpu_s:.3f} (CPU)")
        print(f"peak RSS of the replay:   {after.ru_maxrss / 1024:12,.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

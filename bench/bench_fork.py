"""What a checkpoint's fork costs the worker afterwards: copy-on-write (issue 6).

    python bench/bench_fork.py [--customers 300000] [--children 1]

The worker saves partition checkpoints and its models from forked children (sinks.checkpoints,
Redis's BGSAVE recipe). After a fork every page the worker writes is copied once, and CPython
writes to every object it reads (reference counts). This builds a heap of per-customer dicts
like the worker's, frozen as the worker freezes it before forking, and times one pass that
reads and updates every customer: without a fork (the baseline, best of three), right after
forking `--children` children that only sleep, and once more (the pages are copied by then).
Prints seconds and the ratio to the baseline. The children are waited for by their pids.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path


def build(n: int) -> dict[str, dict[str, object]]:
    return {f"c{i}": {"steps": list(range(20)), "segment": str(i) * 3, "n": i} for i in range(n)}


def touch_all(state: dict[str, dict[str, object]]) -> float:
    started = time.perf_counter()
    total = 0
    for v in state.values():
        v["n"] += 1  # type: ignore[operator]
        total += len(v["steps"])  # type: ignore[arg-type]
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=300_000)
    ap.add_argument("--children", type=int, default=1)
    args = ap.parse_args()
    state = build(args.customers)
    gc.freeze()
    statm = Path("/proc/self/statm").read_text().split()
    rss_mb = int(statm[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    baseline = min(touch_all(state) for _ in range(3))
    started = time.perf_counter()
    pids = []
    for _ in range(args.children):
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        pids.append(pid)
    fork_s = time.perf_counter() - started
    first = touch_all(state)
    second = touch_all(state)
    for pid in pids:
        os.waitpid(pid, 0)
    print(f"heap: {args.customers:,} customers, RSS {rss_mb} MB; {args.children} child(ren)")
    print(f"fork():                          {fork_s * 1000:8.1f} ms")
    print(f"pass without a fork (baseline):  {baseline:8.3f} s")
    print(f"first pass after the fork:       {first:8.3f} s   ratio {first / baseline:.2f}")
    print(f"second pass after the fork:      {second:8.3f} s   ratio {second / baseline:.2f}")
    print(f"copy-on-write cost: {(first - second) * 1000:.0f} ms, "
          f"{(first - second) / (rss_mb << 8) * 1e6:.1f} us per 4 KB page of RSS")


if __name__ == "__main__":
    main()

"""How fast the simulator makes events, against how fast the pipeline validates them.

    python bench/bench_simulator.py [--customers 100000] [--seed 1]

Figure: simulated events per second (generation, then writing the events and truth files).
Baseline from the same run: `processors.validation.decode` over the same lines, the first
step every event takes in the pipeline. A ratio above 1 means the simulator outruns the
pipeline's own front door, so it is never the bottleneck of a replay or a load test.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from processors.validation import decode
from simulator.model import SimConfig, simulate
from simulator.writer import write_simulation

BASELINE_LINES = 200_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    started = time.perf_counter()
    sim = simulate(SimConfig(customers=args.customers, seed=args.seed))
    gen_s = time.perf_counter() - started
    n_lines = len(sim.lines)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = write_simulation(sim, Path(tmp) / "events.jsonl")
        write_s = time.perf_counter() - started
        truth_mb = summary.truth_path.stat().st_size / 1e6

    sample = sim.lines[:BASELINE_LINES]
    started = time.perf_counter()
    for line in sample:
        decode(line)
    decode_s = time.perf_counter() - started

    sim_rate = n_lines / gen_s
    total_rate = n_lines / (gen_s + write_s)
    decode_rate = len(sample) / decode_s
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"customers          {args.customers:,}")
    print(f"lines              {n_lines:,} ({sim.truth.n_events:,} events + duplicates)")
    print(f"generate           {gen_s:.1f} s  ({sim_rate:,.0f} lines/s)")
    events_mb = summary.n_bytes / 1e6
    print(f"write events+truth {write_s:.1f} s  ({events_mb:.0f} MB + {truth_mb:.0f} MB)")
    print(f"total              {gen_s + write_s:.1f} s  ({total_rate:,.0f} lines/s)")
    print(f"baseline decode    {decode_rate:,.0f} lines/s over {len(sample):,} lines")
    print(f"ratio              {total_rate / decode_rate:.2f}x  (simulate+write / decode)")
    print(f"peak RSS           {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()

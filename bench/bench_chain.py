"""The whole processor chain on one core: validate, resolve (in memory), journeys, transitions,
funnels and attribution paths, next to plain `orjson.loads` of the same lines in the same run.

    python bench/bench_chain.py [--customers 100000] [--batch 20000]

Targets (issue 4): >= 100k events/s, >= 0.15 of the parse rate; peak memory per 100k customers.
Times are CPU time of this process (the machine may be shared).
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import orjson

from processors.chain import JourneyChain
from processors.validation import Source
from simulator.model import SimConfig, simulate
from streams.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    lines = simulate(SimConfig(customers=args.customers, seed=args.seed)).lines
    n = len(lines)
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    start = time.process_time()
    for line in lines:
        orjson.loads(line)
    parse_s = time.process_time() - start

    chain = JourneyChain(load_settings().processing())
    start = time.process_time()
    for i in range(0, n, args.batch):
        chain.process([(line, Source("bench", 0, i + j))
                       for j, line in enumerate(lines[i : i + args.batch])])
    chain.finish()
    chain_s = time.process_time() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    customers = len(chain.journeys.customers)
    print(f"lines: {n:,}  resolved customers: {customers:,}")
    print(f"baseline orjson.loads:  {n / parse_s:12,.0f} events/s")
    print(f"processor chain:        {n / chain_s:12,.0f} events/s")
    print(f"ratio to orjson.loads:  {parse_s / chain_s:12.3f}   (target >= 0.15)")
    print(f"target >= 100,000/s:    {'met' if n / chain_s >= 100_000 else 'NOT met'}")
    grown_mb = (rss_after - rss_before) / 1024
    print(f"peak RSS growth: {grown_mb:,.0f} MB = {grown_mb / customers * 100_000:,.0f} MB "
          "per 100k resolved customers (state of every processor)")


if __name__ == "__main__":
    main()

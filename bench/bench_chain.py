"""The whole processor chain on one core: validate, resolve (in memory), journeys, transitions,
funnels and attribution paths, next to plain `orjson.loads` of the same lines in the same run.

    python bench/bench_chain.py [--customers 100000] [--batch 20000] [--file events.jsonl]
                                [--stages] [--corrections pane|cells|delta] [--tune-gc]

Targets (issue 4): >= 100k events/s, >= 0.15 of the parse rate; peak memory per 100k customers.
Times are CPU time of this process (the machine may be shared). Also counts the transition cell
rows the chain emits for the sink, split into first emissions of final panes and re-emissions of
corrected panes (the chain's own ``corrections="cells"``: only the changed cells; ``--corrections
pane`` re-emits whole panes, as the chain did before migration 0011), per batch too.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from collections import Counter
from pathlib import Path

import orjson

from processors.chain import ChainOutput, JourneyChain, gc_paused
from processors.transitions import CellRow, TransitionCounter
from processors.validation import Source, decode_batch
from simulator.model import SimConfig, simulate
from streams.commands.replay import tune_gc
from streams.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stages", action="store_true",
                        help="Also time decode, resolve and the rest of the chain apart.")
    parser.add_argument("--file", type=Path, default=None,
                        help="Read the lines of this JSON Lines file instead of simulating.")
    parser.add_argument("--corrections", choices=["pane", "cells", "delta"], default=None,
                        help="How corrected final panes are emitted (TransitionCounter); "
                             "default: the chain's own (cells), which the sink's views read.")
    parser.add_argument("--tune-gc", action="store_true",
                        help="Apply the replay command's process GC settings (gc.freeze and a "
                             "higher young-generation threshold) before the run.")
    args = parser.parse_args()

    if args.file is not None:
        lines = args.file.read_bytes().splitlines()
    else:
        lines = simulate(SimConfig(customers=args.customers, seed=args.seed)).lines
    n = len(lines)
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    start = time.process_time()
    for line in lines:
        orjson.loads(line)
    parse_s = time.process_time() - start

    config = load_settings().processing()
    chain = JourneyChain(config)
    if args.corrections is not None:
        chain.transitions = TransitionCounter(config.windows, config.journey.allowed_lateness_s,
                                              corrections=args.corrections)
    if args.tune_gc:
        tune_gc()
    stage_s = {"decode": 0.0, "resolve": 0.0, "journeys..attribution": 0.0}
    emitted = EmittedRows()
    start = time.process_time()
    for i in range(0, n, args.batch):
        messages = [(line, Source("bench", 0, i + j))
                    for j, line in enumerate(lines[i : i + args.batch])]
        if not args.stages:
            emitted.add(chain.process(messages).cells)
            continue
        with gc_paused():  # as chain.process runs them
            t0 = time.process_time()
            accepted, _ = decode_batch(messages)
            t1 = time.process_time()
            resolved = chain.resolver.resolve_batch([a.event for a in accepted])
            t2 = time.process_time()
            out = chain.process_resolved(resolved.resolved, resolved.merges, ChainOutput())
            t3 = time.process_time()
        emitted.add(out.cells)
        stage_s["decode"] += t1 - t0
        stage_s["resolve"] += t2 - t1
        stage_s["journeys..attribution"] += t3 - t2
    t0 = time.process_time()
    emitted.add(chain.finish().cells)
    stage_s["journeys..attribution"] += time.process_time() - t0
    chain_s = time.process_time() - start - emitted.cpu_s
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    customers = len(chain.journeys.customers)
    print(f"lines: {n:,}  resolved customers: {customers:,}  "
          f"corrections: {chain.transitions.corrections}")
    print(f"baseline orjson.loads:  {n / parse_s:12,.0f} events/s")
    print(f"processor chain:        {n / chain_s:12,.0f} events/s")
    print(f"ratio to orjson.loads:  {parse_s / chain_s:12.3f}   (target >= 0.15)")
    print(f"target >= 100,000/s:    {'met' if n / chain_s >= 100_000 else 'NOT met'}")
    if args.stages:
        for stage, secs in stage_s.items():
            print(f"  stage {stage:22s} {n / secs:12,.0f} events/s  {parse_s / secs:.3f}")
    print(f"transition cell rows: {emitted.n_first + emitted.n_again:,} "
          f"({(emitted.n_first + emitted.n_again) / n:.2f} per line): first emissions "
          f"{emitted.n_first:,}, re-emitted corrected panes {emitted.n_again:,} "
          f"({emitted.n_panes_again:,} pane emissions)")
    print("  re-emitted rows per batch: " + " ".join(f"{k:,}" for k in emitted.again_per_batch))
    # The per-customer state as a store would hold it (pickled): journeys, open funnel runs,
    # open attribution paths. Identity is counted by bench_identity.py.
    import pickle

    parts = {
        "journeys": len(pickle.dumps(chain.journeys.customers, pickle.HIGHEST_PROTOCOL)),
        "funnel runs": len(pickle.dumps(chain.funnels.state.runs, pickle.HIGHEST_PROTOCOL)),
        "open paths": len(pickle.dumps(chain.paths.open, pickle.HIGHEST_PROTOCOL)),
    }
    per = {k: v / max(customers, 1) for k, v in parts.items()}
    print("state per customer (pickled): " + ", ".join(f"{k} {v:,.0f} B" for k, v in per.items())
          + f", total {sum(per.values()):,.0f} B (target <= 1 KB)")
    archive = chain.transitions.archive
    print(f"transition pane archive: {len(archive):,} panes, "
          f"{sum(map(len, archive.values())) / 1e6:,.1f} MB")
    grown_mb = (rss_after - rss_before) / 1024
    print(f"peak RSS growth: {grown_mb:,.0f} MB = {grown_mb / customers * 100_000:,.0f} MB "
          "per 100k resolved customers (state of every processor)")


class EmittedRows:
    """Counts the cell rows of each batch: a pane seen before is a re-emission (a correction).

    Its own CPU time is kept apart (`cpu_s`) and left out of the chain's rate."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()
        self.n_first = self.n_again = self.n_panes_again = 0
        self.again_per_batch: list[int] = []
        self.cpu_s = 0.0

    def add(self, cells: list[CellRow]) -> None:
        t0 = time.process_time()
        per_pane = Counter((row.pane_start_ms, row.pane_size_s) for row in cells)
        again = 0
        for pane, k in per_pane.items():
            if pane in self.seen:
                again += k
                self.n_panes_again += 1
            else:
                self.seen.add(pane)
                self.n_first += k
        self.n_again += again
        self.again_per_batch.append(again)
        self.cpu_s += time.process_time() - t0


if __name__ == "__main__":
    main()

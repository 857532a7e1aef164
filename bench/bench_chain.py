"""The whole processor chain on one core: validate, resolve (in memory), journeys, transitions,
funnels and attribution paths, next to plain `orjson.loads` of the same lines in the same run.

    python bench/bench_chain.py [--customers 100000] [--batch 20000] [--file events.jsonl]
                                [--stages] [--corrections pane|cells|delta] [--tune-gc]
                                [--after-resolve] [--fingerprint] [--no-freeze]

Each batch runs as the replay runs it: with the collector paused and the heap frozen before it
resumes (`streams.heap.HeapFreezer`; ``--no-freeze`` leaves the collector to walk every batch's
survivors and the whole state, as before session 6). The baseline is the fastest of three passes
over the whole file, before the chain; without ``--stages`` it is also timed batch by batch, right
after the chain's batch, on the same lines (`NearBaseline`: the host's speed drifts between
minutes, and a ratio of two moments drifts with it).

Targets (issue 4): >= 100k events/s, >= 0.15 of the parse rate; peak memory per 100k customers.
Times are CPU time of this process (the machine may be shared). Also counts the transition cell
rows the chain emits for the sink, split into first emissions of final panes and re-emissions of
corrected panes (the chain's own ``corrections="cells"``: only the changed cells; ``--corrections
pane`` re-emits whole panes, as the chain did before migration 0011), per batch too.

``--after-resolve`` decodes and resolves every batch first (not timed), then times only the
journeys..attribution stage (`JourneyChain.process_resolved` and `finish`), called through
`functools.reduce` so that callgrind can count that region alone:

    PYTHONHASHSEED=0 valgrind --tool=callgrind --collect-atstart=no \
        --toggle-collect=functools_reduce python3.11 bench/bench_chain.py --customers 4000 \
        --after-resolve

``--count`` runs the whole chain's loop
as the timed run does (each batch through `JourneyChain.process` under the heap freezer, then
`finish`), in one `functools.reduce` call and without the baseline, so that callgrind counts
the chain alone: a figure that does not drift with the host as times do (bench/RESULTS.md,
session 21):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --collect-atstart=no \
        --toggle-collect=functools_reduce python3.11 bench/bench_chain.py --customers 4000 --count

(use the interpreter binary itself, not a pyenv shim). ``--fingerprint`` prints a hash of every
output of every batch (steps, cell rows, funnel transitions, released, applied, duplicate and late
events, merges) and of the final state: a change meant to be exact must print the same. (Expiry
steps come in customer id order within an hour since session 21: the outputs no longer depend
on PYTHONHASHSEED.)

The engines are the settings' (printed on the first line): the native cores when installed.
``JOURNEYMAP_JOURNEY__ENGINE=python`` runs the Python journeys processor and transition counter,
``JOURNEYMAP_IDENTITY__ENGINE=python`` the Python resolver, ``JOURNEYMAP_DECODE__ENGINE=python``
the Python decode path (no native fast path).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import pickle
import resource
import time
from collections import Counter
from pathlib import Path

import orjson

from processors.chain import ChainOutput, JourneyChain, gc_paused
from processors.identity import MergeRecord
from processors.identity_native import engine_of
from processors.journeys_native import engine_of as journey_engine_of
from processors.journeys_native import new_journey_stage
from processors.transitions import CellRow
from processors.validation import Lines, decode_engine, decode_events
from simulator.model import SimConfig, simulate
from streams.commands.replay import tune_gc
from streams.heap import REPLAY_FULL_EVERY_S, HeapFreezer
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
    parser.add_argument("--after-resolve", action="store_true",
                        help="Decode and resolve every batch first, then time only the "
                             "journeys..attribution stage (one functools.reduce call, for "
                             "callgrind --toggle-collect=functools_reduce).")
    parser.add_argument("--count", action="store_true",
                        help="Run the whole chain's loop once inside one functools.reduce call, "
                             "without the baseline (for callgrind --toggle-collect="
                             "functools_reduce: instructions instead of times).")
    parser.add_argument("--fingerprint", action="store_true",
                        help="Print a hash of every output and of the final state.")
    parser.add_argument("--no-freeze", action="store_true",
                        help="Do not freeze the heap after each batch (streams.heap.HeapFreezer, "
                             "as the replay and the worker do): the collector then walks every "
                             "batch's survivors and, at each full collection, all the state.")
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

    parse_s = 0.0 if args.count else parse_time(lines)

    config = load_settings().processing()
    chain = JourneyChain(config)
    if args.corrections is not None:  # the journey.engine's counter, with these corrections
        chain.journeys, chain.transitions = new_journey_stage(config, args.corrections)
    if args.tune_gc:
        tune_gc()
    if args.after_resolve:
        after_resolve(chain, lines, args.batch, parse_s, args.fingerprint)
        return
    if args.count:
        count(chain, lines, args.batch, args.fingerprint)
        return
    heap = None if args.no_freeze else HeapFreezer(REPLAY_FULL_EVERY_S)
    digest = hashlib.sha256() if args.fingerprint else None
    stage_s = {"decode": 0.0, "resolve": 0.0, "journeys..attribution": 0.0,
               "after the batch": 0.0}
    emitted = EmittedRows()
    near = NearBaseline()
    start = time.process_time()
    for i in range(0, n, args.batch):
        part = lines[i : i + args.batch]  # positions made as the replay makes them
        messages = Lines(part, "bench", 0, range(i, i + len(part)))
        if not args.stages:
            with heap.batch() if heap is not None else contextlib.nullcontext():
                out = chain.process(messages)
            near.add(part)
            emitted.add(out.cells)
            if digest is not None:
                add_fingerprint(digest, out)
            continue
        with gc_paused():  # as chain.process runs them
            t0 = time.process_time()
            events, _, _ = decode_events(messages, chain.decode_engine)  # as chain.process
            t1 = time.process_time()
            resolved = chain.resolver.resolve_batch(events)
            t2 = time.process_time()
            out = chain.process_resolved(resolved.resolved, resolved.merges, ChainOutput())
            t3 = time.process_time()
            if heap is not None:
                heap.freeze()
        stage_s["after the batch"] += time.process_time() - t3
        emitted.add(out.cells)
        if digest is not None:
            add_fingerprint(digest, out)
        stage_s["decode"] += t1 - t0
        stage_s["resolve"] += t2 - t1
        stage_s["journeys..attribution"] += t3 - t2
    t0 = time.process_time()
    out = chain.finish()
    stage_s["journeys..attribution"] += time.process_time() - t0
    emitted.add(out.cells)
    if digest is not None:
        add_fingerprint(digest, out)
    chain_s = time.process_time() - start - emitted.cpu_s - near.cpu_s
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    customers = len(chain.journeys.customers)
    print(f"lines: {n:,}  resolved customers: {customers:,}  "
          f"corrections: {chain.transitions.corrections}  "
          f"identity engine: {engine_of(chain.resolver)}  "  # JOURNEYMAP_IDENTITY__ENGINE
          f"journey engine: {journey_engine_of(chain.journeys)}  "  # JOURNEYMAP_JOURNEY__ENGINE
          f"decode engine: {decode_engine(chain.decode_engine)}")  # JOURNEYMAP_DECODE__ENGINE
    print(f"baseline orjson.loads:  {n / parse_s:12,.0f} events/s")
    print(f"processor chain:        {n / chain_s:12,.0f} events/s")
    print(f"ratio to orjson.loads:  {parse_s / chain_s:12.3f}   (target >= 0.15)")
    if near.parse_s:
        print(f"ratio to orjson.loads of each batch, timed right after it: "
              f"{near.parse_s / chain_s:.3f}   (that baseline {n / near.parse_s:,.0f} events/s)")
    print(f"target >= 100,000/s:    {'met' if n / chain_s >= 100_000 else 'NOT met'}")
    if args.stages:
        for stage, secs in stage_s.items():
            if secs == 0:
                continue
            print(f"  stage {stage:22s} {n / secs:12,.0f} events/s  {parse_s / secs:.3f}")
    print(f"transition cell rows: {emitted.n_first + emitted.n_again:,} "
          f"({(emitted.n_first + emitted.n_again) / n:.2f} per line): first emissions "
          f"{emitted.n_first:,}, re-emitted corrected panes {emitted.n_again:,} "
          f"({emitted.n_panes_again:,} pane emissions)")
    print("  re-emitted rows per batch: " + " ".join(f"{k:,}" for k in emitted.again_per_batch))
    if digest is not None:
        print(f"fingerprint: outputs {digest.hexdigest()[:16]}, state {state_fingerprint(chain)}")
    # The per-customer state as a store would hold it (pickled): journeys, open funnel runs,
    # open attribution paths. Identity is counted by bench_identity.py.
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


def parse_time(lines: list[bytes], repeat: int = 3) -> float:
    """CPU seconds of `orjson.loads` over every line: the fastest of `repeat` passes (one
    short pass swung 0.5-1.0M lines/s with the machine's other load; the best is the parser's
    own speed, so the ratio is, if anything, conservative)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for line in lines:
            orjson.loads(line)
        best = min(best, time.process_time() - start)
    return best


def after_resolve(chain: JourneyChain, lines: list[bytes], batch: int, parse_s: float,
                  fingerprint: bool) -> None:
    """Time the journeys..attribution stage alone, on batches decoded and resolved before."""
    resolved = []
    for i in range(0, len(lines), batch):
        part = lines[i : i + batch]
        messages = Lines(part, "bench", 0, range(i, i + len(part)))
        events, _, _ = decode_events(messages, chain.decode_engine)
        result = chain.resolver.resolve_batch(events)
        resolved.append((result.resolved, result.merges))
    outs: list[ChainOutput] = []

    def stage(*_: object) -> None:
        for events, merges in resolved:
            outs.append(chain.process_resolved(events, merges, ChainOutput()))
        outs.append(chain.finish())

    gc.collect()
    start = time.process_time()
    functools.reduce(stage, [0, 0])  # calls `stage` once: the callgrind toggle
    stage_s = time.process_time() - start
    n = len(lines)
    print(f"lines: {n:,}  resolved customers: {len(chain.journeys.customers):,}")
    print(f"baseline orjson.loads:  {n / parse_s:12,.0f} events/s")
    print(f"journeys..attribution:  {n / stage_s:12,.0f} events/s  "
          f"(ratio {parse_s / stage_s:.3f}; decode and resolve not timed)")
    if fingerprint:
        digest = hashlib.sha256()
        for out in outs:
            add_fingerprint(digest, out)
        print(f"fingerprint: outputs {digest.hexdigest()[:16]}, state {state_fingerprint(chain)}")


def count(chain: JourneyChain, lines: list[bytes], batch: int, fingerprint: bool) -> None:
    """The chain's loop as the timed run makes it (no baseline), inside one functools.reduce
    call: what callgrind counts with --toggle-collect=functools_reduce."""
    heap = HeapFreezer(REPLAY_FULL_EVERY_S)
    digest = hashlib.sha256() if fingerprint else None

    def run(*_: object) -> None:
        for i in range(0, len(lines), batch):
            part = lines[i : i + batch]
            with heap.batch():
                out = chain.process(Lines(part, "bench", 0, range(i, i + len(part))))
            if digest is not None:
                add_fingerprint(digest, out)
        out = chain.finish()
        if digest is not None:
            add_fingerprint(digest, out)

    gc.collect()
    start = time.process_time()
    functools.reduce(run, [0, 0])  # calls `run` once: the callgrind toggle
    chain_s = time.process_time() - start
    print(f"lines: {len(lines):,}  resolved customers: {len(chain.journeys.customers):,}")
    print(f"processor chain: {len(lines) / chain_s:12,.0f} events/s (once, no baseline: for "
          "counting instructions, not for its time)")
    if digest is not None:
        print(f"fingerprint: outputs {digest.hexdigest()[:16]}, state {state_fingerprint(chain)}")


def add_fingerprint(digest: hashlib._Hash, out: ChainOutput) -> None:
    """Every output record of one batch, in emission order, into `digest`."""
    for records in (out.steps, out.cells, out.funnel_transitions, out.merges):
        for record in records:
            fields = tuple(record)
            if isinstance(record, MergeRecord):  # as before `seq`: comparable with older runs
                fields = fields[:5]
            digest.update(f"{type(record).__name__}{fields!r}".encode())
    for name in ("released", "applied", "duplicates"):
        for ev in getattr(out, name):
            digest.update(f"{name}|{ev.customer_id}|{ev.event.event_id}|{ev.segment}".encode())
    for late in out.late:
        digest.update(f"late|{late.event.customer_id}|{late.event.event.event_id}|"
                      f"{late.watermark_ms}|{late.frontier_ms}".encode())


def state_fingerprint(chain: JourneyChain) -> str:
    """A hash of the chain's journey, transition, funnel and path state (order-free parts
    sorted)."""
    parts: list[object] = []
    journeys = chain.journeys
    parts.append(sorted((cid, s.__getstate__()) for cid, s in journeys.customers.items()))
    parts.append(sorted((b, sorted(cids)) for b, cids in journeys._due.items()))
    t = chain.transitions
    parts.append(sorted(t.totals.cells.items()))
    for group in (t.panes, t.hot):
        parts.append(sorted((p, sorted(c.cells.items())) for p, c in group.items()))
    parts.append(sorted((p, sorted(pickle.loads(b).items())) for p, b in t.archive.items()))
    f = chain.funnels.state
    parts.append(sorted((name, sorted((cid, (r.stage, r.stage_entered_ms, r.run_start_ms, r.cell,
                                             list(r.events))) for cid, r in runs.items()))
                        for name, runs in f.runs.items()))
    parts.append(sorted((key, (c.n_entered, c.n_advanced, c.n_dropped,
                               [(sorted(d.exact or ()), sorted(d.buckets.items()), d.n_zero, d.n)
                                for d in c.advance_ms])) for key, c in f.cells.items()))
    parts.append(sorted(chain.paths.open.items()))
    for level in ("touchpoint", "channel"):
        parts.append(sorted(chain.paths.done[level].items()))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class NearBaseline:
    """The baseline again, batch by batch: `orjson.loads` of each batch's lines (the fastest of
    three passes) timed right after the chain has processed them.

    The whole-file baseline runs before the chain, and this shared host's speed drifts by up to
    2x between minutes (bench/RESULTS.md, session 18): the same code's ratio swung 0.10-0.21
    between runs. Timed next to each batch, both sides see the same moment's machine. The lines
    are warm in the cache when parsed (the baseline's advantage: the ratio is, if anything,
    conservative). Its CPU time is kept apart (`cpu_s`) and left out of the chain's."""

    def __init__(self) -> None:
        self.parse_s = 0.0
        self.cpu_s = 0.0

    def add(self, lines: list[bytes]) -> None:
        t0 = time.process_time()
        self.parse_s += parse_time(lines)
        self.cpu_s += time.process_time() - t0


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

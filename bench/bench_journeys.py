"""Journey + transition throughput on simulator data, next to `orjson.loads` of the same events.

    python bench/bench_journeys.py [--customers 20000] [--seed 1] [--repeat 3]
                                   [--corrections pane|delta] [--gc-threshold N]

Simulates `--customers` customers (``simulator.model.simulate``, ~9.7 events each, 90 days),
decodes the lines and resolves identities in memory in batches of 1000 (untimed: other stages),
keeping each batch's merges and tagging events with the customer's true segment. The timed part
is what the journey stage does per batch: `JourneyProcessor.merge` for the batch's merges, then
`apply`, `TransitionCounter.update`, `expire` and `advance`, as ``processors/chain.py`` does
(default windows 1/7/28 days, 1 h step, 1 h lateness). Figures are CPU time of this process,
best of `--repeat` runs, interleaved with the `orjson.loads` baseline over the same lines.

The pre-built events are moved out of the collector's reach with `gc.freeze()` before timing: a
streaming worker or replay holds one batch, not the whole file, and the collector would otherwise
walk ~10 M benchmark-only objects on every full collection. `--gc-threshold N` sets the youngest
generation's threshold (Python's default is 700) to show what the chain gains from tuning it.
`--corrections delta` counts with ``TransitionCounter(corrections="delta")``: a merge's
correction to an already published pane emits the changed cells instead of the whole pane.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import time
import tracemalloc
from typing import Literal

import orjson

from processors.config import ProcessingConfig
from processors.events import ResolvedEvent
from processors.identity import IdentityResolver
from processors.journeys import JourneyProcessor
from processors.transitions import TransitionCounter
from processors.validation import Accepted, decode_lines
from simulator.model import SimConfig, simulate

HOUR_MS = 3_600_000
Batch = tuple[list[ResolvedEvent], list[tuple[str, str]]]


def prepare(customers: int, seed: int, config: ProcessingConfig) -> tuple[list[bytes],
                                                                           list[Batch]]:
    """The simulated lines and, per batch of 1000 lines, the resolved events and merges."""
    sim = simulate(SimConfig(customers=customers, seed=seed))
    segment_of = {e.event_id: c.segment for c in sim.truth.customers for e in c.events}
    resolver = IdentityResolver(config.identity, config.identity_salt)
    batches: list[Batch] = []
    for i in range(0, len(sim.lines), 1000):
        accepted, _ = decode_lines(sim.lines[i:i + 1000], "sim")
        result = resolver.resolve_batch([a.event for a in accepted if isinstance(a, Accepted)])
        for ev in result.resolved:
            ev.segment = segment_of.get(ev.event.event_id, "all")
        batches.append((result.resolved, [(m.loser, m.winner) for m in result.merges]))
    return sim.lines, batches


def run(batches: list[Batch], config: ProcessingConfig, split: dict[str, float] | None = None,
        corrections: Literal["pane", "delta"] = "pane"
        ) -> tuple[float, JourneyProcessor, TransitionCounter, int]:
    """Drive the journey stage over the batches; returns (CPU s, journeys, counter, rows)."""
    journeys = JourneyProcessor(config)
    counter = TransitionCounter(config.windows, config.journey.allowed_lateness_s, corrections)
    n_rows = 0
    clock = time.process_time
    start = clock()
    for events, merges in batches:
        t0 = clock()
        for loser, winner in merges:
            counter.update(journeys.merge(loser, winner).steps)
        t1 = clock()
        out = journeys.apply(events)
        t2 = clock()
        counter.update(out.steps)
        t3 = clock()
        wm = journeys.watermark_ms
        counter.update(journeys.expire(wm).steps)  # every batch, as processors/chain.py does
        n_rows += len(counter.advance(wm))
        if split is not None:
            t4 = clock()
            for name, took in (("merge", t1 - t0), ("apply", t2 - t1), ("update", t3 - t2),
                               ("expire+advance", t4 - t3)):
                split[name] = split.get(name, 0.0) + took
    return clock() - start, journeys, counter, n_rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--corrections", choices=["pane", "delta"], default="pane")
    parser.add_argument("--gc-threshold", type=int, default=None)
    args = parser.parse_args()
    config = ProcessingConfig()
    t = time.perf_counter()
    lines, batches = prepare(args.customers, args.seed, config)
    n_events = sum(len(evs) for evs, _ in batches)
    n_merges = sum(len(ms) for _, ms in batches)
    print(f"prepared {len(lines)} lines -> {n_events} resolved events, {n_merges} merges "
          f"in {time.perf_counter() - t:.0f} s (untimed)")
    gc.collect()
    gc.freeze()
    if args.gc_threshold is not None:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])

    parse_s = elapsed = float("inf")
    for _ in range(args.repeat):
        start = time.process_time()
        for line in lines:
            orjson.loads(line)
        parse_s = min(parse_s, time.process_time() - start)
        took, journeys, counter, n_rows = run(batches, config, None, args.corrections)
        elapsed = min(elapsed, took)
        del journeys, counter
        gc.collect()
    split: dict[str, float] = {}
    _, journeys, counter, n_rows = run(batches, config, split, args.corrections)
    sizes = [len(pickle.dumps(s)) for s in journeys.customers.values()]
    n_customers = len(journeys.customers)
    del journeys, counter
    gc.collect()

    tracemalloc.start()
    _, small, _, _ = run(batches[: len(batches) // 10], config, None, args.corrections)
    mem = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    rate, parse_rate = n_events / elapsed, len(lines) / parse_s
    print(f"customers after merges: {n_customers}, pane rows emitted: {n_rows} "
          f"(corrections={args.corrections}, gc threshold {gc.get_threshold()[0]})")
    print(f"journeys + transitions: {rate:,.0f} events/s")
    print(f"orjson.loads baseline:  {parse_rate:,.0f} events/s   ratio: {rate / parse_rate:.3f}")
    total = sum(split.values())
    print("split: " + ", ".join(f"{k} {v / total:.0%}" for k, v in split.items()))
    print(f"pickled state per customer: avg {sum(sizes) / len(sizes):.0f} B, max {max(sizes)} B")
    print(f"peak traced memory (10% run, {len(small.customers)} customers): {mem / 1e6:.1f} MB "
          f"= {mem / max(len(small.customers), 1):.0f} B per customer incl. windows")


if __name__ == "__main__":
    main()

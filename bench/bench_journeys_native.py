"""The journeys stage alone, Python vs the native (Rust) core, on the calls the chain makes.

    python bench/bench_journeys_native.py [--customers 4000] [--batch 20000] [--rounds 3]
                                          [--fingerprint] [--only python|native] [--chain]
                                          [--random N] [--checkpoint]

Simulated lines go through the Python chain once (`JourneyChain.process`, not timed) with its
`JourneyProcessor` wrapped to record every call it gets (`merge`, `apply`, `expire`, in order,
with their arguments). Those calls are then replayed on a fresh `JourneyProcessor` and a fresh
`NativeJourneyProcessor` (`processors/journeys_native.py`), alternately `--rounds` times, each
call with the collector paused as the chain runs it (the recorded input frozen out of the
collector's sight, as the replay's heap freezer does); CPU time of this process, events/s over
the events given to `apply`, and the native/Python ratio of the same run.

``--fingerprint`` hashes every output of every call (steps in order, late events with their
watermark and frontier, duplicates, the changed customers) and the final state (every customer's
`CustomerState.__getstate__()`, the deadline index): the two must print the same.

``--only python|native`` replays once, inside one `functools.reduce` call, so that callgrind
counts the stage alone:

    PYTHONHASHSEED=0 valgrind --tool=callgrind --collect-atstart=no \\
        --toggle-collect=functools_reduce python3.11 bench/bench_journeys_native.py \\
        --customers 4000 --only native

``--random N`` replays N random scenarios (a few customers, small windows: events out of order
within and beyond the lateness, resent duplicates, producer session ids, revenue, outcomes,
merges, expiries, customers detached and attached again, the processor pickled and restored)
on both processors and stops at the first whose outputs, state or snapshots
differ.

``--checkpoint`` runs the chain with each engine (`--rounds` times) and times pickling and
unpickling its journeys stage, as a worker's checkpoint pickles it.

``--chain`` runs the whole chain instead with the native journeys stage (processor and
transition counter) swapped in whatever `journey.engine` says, and prints
`bench_chain.py --fingerprint`'s line (same hashes as `bench/bench_chain.py --fingerprint` with
the same `--customers`, `--batch` and PYTHONHASHSEED when the stage is exact).
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import pickle
import random
import time
from typing import Any

from bench_chain import add_fingerprint, state_fingerprint

from processors.chain import JourneyChain, gc_paused
from processors.config import JourneyConfig, OutcomesConfig, ProcessingConfig
from processors.events import ResolvedEvent, TouchpointEvent
from processors.journeys import JourneyOutput, JourneyProcessor
from processors.journeys_native import NativeJourneyProcessor
from processors.transitions_native import NativeTransitionCounter
from processors.validation import Source
from simulator.model import SimConfig, simulate
from streams.settings import load_settings

Call = tuple[Any, ...]


class Recorder:
    """A JourneyProcessor that notes every call the chain makes to it."""

    def __init__(self, inner: JourneyProcessor) -> None:
        self.inner = inner
        self.calls: list[Call] = []

    def apply(self, events: list[Any], watermark_ms: int | None = None) -> JourneyOutput:
        self.calls.append(("apply", list(events), watermark_ms))
        return self.inner.apply(events, watermark_ms)

    def expire(self, now_ms: int) -> JourneyOutput:
        self.calls.append(("expire", now_ms))
        return self.inner.expire(now_ms)

    def merge(self, loser: str, winner: str) -> JourneyOutput:
        self.calls.append(("merge", loser, winner))
        return self.inner.merge(loser, winner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def batches(lines: list[bytes], size: int) -> list[list[tuple[bytes, Source]]]:
    return [[(line, Source("bench", 0, i + j)) for j, line in enumerate(lines[i:i + size])]
            for i in range(0, len(lines), size)]


def python_config() -> ProcessingConfig:
    """The settings' processing config with the Python journeys stage (journey.engine)."""
    config = load_settings().processing()
    return config.model_copy(update={"journey": config.journey.model_copy(
        update={"engine": "python"})})


def record(lines: list[bytes], size: int) -> list[Call]:
    chain = JourneyChain(python_config())
    recorder = Recorder(chain.journeys)
    chain.journeys = recorder  # type: ignore[assignment]
    for messages in batches(lines, size):
        chain.process(messages)
    chain.finish()
    return recorder.calls


def replay(processor: Any, calls: list[Call], outs: list[JourneyOutput] | None) -> Any:
    """Run the calls; the processor at the end (a "pickle" call replaces it by its copy)."""
    for call in calls:
        with gc_paused():
            if call[0] == "apply":
                out = processor.apply(call[1], call[2])
            elif call[0] == "expire":
                out = processor.expire(call[1])
            elif call[0] == "merge":
                out = processor.merge(call[1], call[2])
            elif call[0] == "move":  # a customer leaving and coming back (streaming merges)
                state = processor.detach(call[1])
                if state is not None:
                    processor.attach(call[1], state)
                continue
            else:
                processor = pickle.loads(pickle.dumps(processor))
                continue
        if outs is not None:
            outs.append(out)
    return processor


def fingerprint(processor: Any, outs: list[JourneyOutput]) -> str:
    digest = hashlib.sha256()
    for out in outs:
        for st in out.steps:
            digest.update(f"Step{tuple(st)!r}".encode())
        for late in out.late:
            digest.update(f"late|{late.event.customer_id}|{late.event.event.event_id}|"
                          f"{late.watermark_ms}|{late.frontier_ms}".encode())
        for ev in out.duplicates:
            digest.update(f"dup|{ev.customer_id}|{ev.event.event_id}".encode())
        digest.update(repr(sorted(out.changed)).encode())
    outputs = digest.hexdigest()[:16]
    state = [sorted((cid, s.__getstate__()) for cid, s in processor.customers.items()),
             sorted((b, sorted(cids)) for b, cids in processor._due.items()),
             processor.watermark_ms]
    return f"outputs {outputs}, state {hashlib.sha256(repr(state).encode()).hexdigest()[:16]}"


def random_calls(rng: random.Random) -> list[Call]:
    """A random scenario on a few customers: events out of order (within and beyond the
    lateness), resent duplicates, producer session ids, revenue, outcomes, merges, expiries."""
    t0 = 1_772_323_200_000  # 2026-03-01
    cids = [f"c{i}" for i in range(rng.randint(2, 8))]
    tps = ["landing", "pricing", "docs", "purchase", "cancel", "support_chat", "start", "null"]
    channels = ["web", "app", "email", "support"]
    now = t0
    sent: list[ResolvedEvent] = []
    calls: list[Call] = []
    for _ in range(rng.randint(5, 40)):
        batch = []
        for _ in range(rng.randint(0, 30)):
            r = rng.random()
            if sent and r < 0.08:
                old = rng.choice(sent)  # a duplicate, maybe under another customer now
                batch.append(ResolvedEvent(rng.choice([old.customer_id, *cids]), old.event,
                                           old.segment))
                continue
            now += rng.choice([0, 1_000, 60_000, 600_000, 1_800_000, 1_800_001, 7_200_000,
                               90_000_000])
            at = now - (rng.choice([0, 60_000, 600_000, 899_999, 900_000, 3_600_000])
                        if r < 0.35 else 0)
            fields: dict[str, Any] = {
                "event_id": f"e{rng.randint(0, 10**9)}",
                "occurred_at": at,
                "channel": rng.choice(channels),
                "touchpoint": rng.choice(tps),
                "identities": {"anonymous_id": "a"},
            }
            if rng.random() < 0.2:
                fields["session_id"] = rng.choice(["s1", "s2", "s3"])
            if rng.random() < 0.2:
                fields["revenue"] = rng.choice([0.0, 1.5, 20.0, 0.1])
            ev = ResolvedEvent(rng.choice(cids), TouchpointEvent.model_validate(fields),
                               rng.choice(["all", "all", "loyal"]))
            batch.append(ev)
            sent.append(ev)
        for _ in range(rng.choice([0, 0, 0, 1, 2])):
            loser, winner = rng.choice(cids), rng.choice(cids)
            calls.append(("merge", loser, winner))
        calls.append(("apply", batch, now + rng.choice([0, 0, 3_600_000]) if rng.random() < 0.1
                      else None))
        if rng.random() < 0.5:
            calls.append(("expire", now + rng.choice([0, 0, 3_600_000, 100_000_000])))
        if rng.random() < 0.1:
            calls.append(("move", rng.choice(cids)))
        if rng.random() < 0.05:
            calls.append(("pickle",))
    return calls


def random_check(n: int) -> None:
    """`--random N`: N random scenarios, each replayed on both processors (small windows)."""
    config = ProcessingConfig(
        outcomes=OutcomesConfig(conversion=["purchase"], churn=["cancel"], null_horizon_s=86_400),
        journey=JourneyConfig(session_gap_s=1800, allowed_lateness_s=900,
                              last_touchpoints_kept=4, dedup_ids_per_customer=8),
    )
    n_steps = n_late = n_dup = n_retracted = n_merges = 0
    for seed in range(n):
        calls = random_calls(random.Random(seed))
        prints = []
        for processor in (JourneyProcessor(config), NativeJourneyProcessor(config)):
            outs: list[JourneyOutput] = []
            processor = replay(processor, calls, outs)
            snaps = [processor.snapshot(f"c{i}") for i in range(8)]
            prints.append((fingerprint(processor, outs), repr(snaps)))
        if prints[0] != prints[1]:
            raise SystemExit(f"seed {seed}: python {prints[0][0]} != native {prints[1][0]}")
        n_steps += sum(len(o.steps) for o in outs)
        n_late += sum(len(o.late) for o in outs)
        n_dup += sum(len(o.duplicates) for o in outs)
        n_retracted += sum(st.sign < 0 for o in outs for st in o.steps)
        n_merges += sum(c[0] == "merge" for c in calls)
    print(f"random scenarios: {n} equal (outputs, state, snapshots); steps {n_steps:,}, "
          f"retractions {n_retracted:,}, late {n_late:,}, duplicates {n_dup:,}, "
          f"merges {n_merges:,}")


def make(kind: str) -> Any:
    config = python_config()
    return JourneyProcessor(config) if kind == "python" else NativeJourneyProcessor(config)


def run_chain(lines: list[bytes], size: int) -> None:
    config = load_settings().processing()
    chain = JourneyChain(config)
    chain.journeys = NativeJourneyProcessor(config)  # type: ignore[assignment]
    chain.transitions = NativeTransitionCounter(config.windows,
                                                config.journey.allowed_lateness_s, "cells")
    digest = hashlib.sha256()
    start = time.process_time()
    for messages in batches(lines, size):
        add_fingerprint(digest, chain.process(messages))
    add_fingerprint(digest, chain.finish())
    secs = time.process_time() - start
    print(f"chain with the native journeys stage: {len(lines) / secs:,.0f} events/s "
          f"(fingerprinting included)")
    print(f"fingerprint: outputs {digest.hexdigest()[:16]}, state {state_fingerprint(chain)}")


def checkpoint_times(lines: list[bytes], size: int, rounds: int) -> None:
    """`--checkpoint`: the chain run with each engine, then its journeys stage pickled and
    unpickled as a worker's checkpoint pickles it (CPU time; sizes)."""
    config = python_config()
    for _ in range(rounds):
        for engine in ("native", "python"):
            chain = JourneyChain(config.model_copy(update={"journey": config.journey.model_copy(
                update={"engine": engine})}))
            for messages in batches(lines, size):
                chain.process(messages)
            gc.collect()
            stage = (chain.journeys, chain.transitions)
            t0 = time.process_time()
            blob = pickle.dumps(stage, pickle.HIGHEST_PROTOCOL)
            t1 = time.process_time()
            pickle.loads(blob)
            t2 = time.process_time()
            whole = len(pickle.dumps(chain, pickle.HIGHEST_PROTOCOL))
            t3 = time.process_time()
            print(f"{engine:6s} stage dumps {t1 - t0:.3f} s, loads {t2 - t1:.3f} s, "
                  f"{len(blob) / 1e6:.1f} MB; the whole chain dumps {t3 - t2:.3f} s, "
                  f"{whole / 1e6:.1f} MB")
            del chain, stage, blob
            gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fingerprint", action="store_true")
    parser.add_argument("--only", choices=["python", "native"], default=None)
    parser.add_argument("--chain", action="store_true")
    parser.add_argument("--checkpoint", action="store_true",
                        help="Time pickling the chain's journeys stage with each engine.")
    parser.add_argument("--random", type=int, default=0, metavar="N",
                        help="Only compare both processors on N random scenarios.")
    args = parser.parse_args()
    if args.random:
        random_check(args.random)
        return

    lines = simulate(SimConfig(customers=args.customers, seed=args.seed)).lines
    if args.chain:
        run_chain(lines, args.batch)
        return
    if args.checkpoint:
        checkpoint_times(lines, args.batch, args.rounds)
        return
    calls = record(lines, args.batch)
    n_events = sum(len(c[1]) for c in calls if c[0] == "apply")
    n_merges = sum(c[0] == "merge" for c in calls)
    print(f"lines: {len(lines):,}  calls: {len(calls):,} (events given to apply {n_events:,}, "
          f"merges {n_merges:,})")
    gc.collect()
    gc.freeze()  # the recorded input is not the stage's: keep the collector off it

    if args.only is not None:
        processor = make(args.only)
        outs: list[JourneyOutput] = []
        start = time.process_time()
        functools.reduce(lambda *_, p=processor: replay(p, calls, outs), [0, 0])  # the toggle
        secs = time.process_time() - start
        print(f"{args.only}: {n_events / secs:,.0f} events/s")
        if args.fingerprint:
            print(f"{args.only} fingerprint: {fingerprint(processor, outs)}")
        return

    if args.fingerprint:
        for kind in ("python", "native"):
            processor = make(kind)
            outs = []
            replay(processor, calls, outs)
            print(f"{kind:6s} fingerprint: {fingerprint(processor, outs)}")
            del processor, outs
            gc.collect()

    secs: dict[str, list[float]] = {"python": [], "native": []}
    for _ in range(args.rounds):
        for kind in ("python", "native"):
            processor = make(kind)
            gc.collect()
            start = time.process_time()
            replay(processor, calls, None)
            secs[kind].append(time.process_time() - start)
            del processor
            gc.collect()
    for kind, times in secs.items():
        rates = ", ".join(f"{n_events / t:,.0f}" for t in times)
        print(f"{kind:6s} events/s (CPU time), each round: {rates}")
    ratios = [p / n for p, n in zip(secs["python"], secs["native"], strict=True)]
    print("native/python rate, each round: " + ", ".join(f"{r:.2f}" for r in ratios)
          + f"  (median {sorted(ratios)[len(ratios) // 2]:.2f})")


if __name__ == "__main__":
    main()

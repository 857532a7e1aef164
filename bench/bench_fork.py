"""What a checkpoint's fork costs the worker afterwards: copy-on-write (issue 6).

    python bench/bench_fork.py [--customers 300000] [--children 1]
    python bench/bench_fork.py --journeys [--customers 20000] [--batch 5000] [--rounds 3]
                               [--only python|native]

The worker saves partition checkpoints and its models from forked children (sinks.checkpoints,
Redis's BGSAVE recipe). After a fork every page the worker writes is copied once, and CPython
writes to every object it reads (reference counts). This builds a heap of per-customer dicts
like the worker's, frozen as the worker freezes it before forking, and times one pass that
reads and updates every customer: without a fork (the baseline, best of three), right after
forking `--children` children that only sleep, and once more (the pages are copied by then).
Prints seconds and the ratio to the baseline. The children are waited for by their pids.

``--journeys`` measures the real journeys processor instead, Python (`JourneyProcessor`) and
native (`NativeJourneyProcessor`, its per-customer state in Rust, where reference counting does
not write). The simulator's lines for `--customers` go through the Python chain once in
`--batch`-line batches, its journeys processor's calls recorded per batch
(`bench_journeys_native.Recorder`). Each measurement builds a fresh processor of each engine by
replaying every batch's calls but the last three (so it holds the simulation's customers, its
heap grown as a worker's grows), freezes the heap as the worker does before a checkpoint's fork
(`HeapFreezer.freeze(young=True)`), then times the next two batches' calls (merges, apply,
expire): B1 and B2, each on a fresh copy of its recorded input made just before (a worker decodes
its batch after the fork), the heap frozen after each as `HeapFreezer.batch` does. Without a fork
(the baseline: the best of three builds for each batch), and with one child forked right before
B1 that only sleeps (ended and waited for by its pid after B2): B1 is the batch right after the
fork, B2 the one after that, each doing the same work as its baseline. CPU time of this process
(a copied page is kernel time of the process that writes it) and its minor page faults during
the batch (``ru_minflt``: with a child alive, each first write to a shared page is one fault and
one 4 KB copy; without, faults are only new memory). `--rounds` times, alternating the engines.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import resource
import time
from pathlib import Path
from typing import Any


def build(n: int) -> dict[str, dict[str, object]]:
    return {f"c{i}": {"steps": list(range(20)), "segment": str(i) * 3, "n": i} for i in range(n)}


def touch_all(state: dict[str, dict[str, object]]) -> float:
    started = time.perf_counter()
    total = 0
    for v in state.values():
        v["n"] += 1  # type: ignore[operator]
        total += len(v["steps"])  # type: ignore[arg-type]
    return time.perf_counter() - started


def rss_mb() -> int:
    statm = Path("/proc/self/statm").read_text().split()
    return int(statm[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def record_batches(customers: int, seed: int, size: int) -> list[list[Any]]:
    """The Python chain over the simulation: its journeys processor's calls, batch by batch."""
    from bench_journeys_native import Recorder, batches, python_config

    from processors.chain import JourneyChain
    from processors.journeys import JourneyProcessor
    from simulator.model import SimConfig, simulate

    lines = simulate(SimConfig(customers=customers, seed=seed)).lines
    chain = JourneyChain(python_config())
    assert isinstance(chain.journeys, JourneyProcessor)  # python_config: the Python engine
    recorder = Recorder(chain.journeys)
    chain.journeys = recorder  # type: ignore[assignment]
    per_batch = []
    for messages in batches(lines, size):
        n_before = len(recorder.calls)
        chain.process(messages)
        per_batch.append(recorder.calls[n_before:])
    print(f"lines: {len(lines):,} in {len(per_batch)} batches of {size:,}")
    return per_batch


def run_batch(processor: Any, calls: list[Any], heap: Any) -> tuple[float, int]:
    """CPU seconds and minor page faults of one batch's calls, on a fresh copy of its input."""
    from bench_journeys_native import replay

    calls = pickle.loads(pickle.dumps(calls, pickle.HIGHEST_PROTOCOL))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.process_time()
    replay(processor, calls, None)  # each call with the collector paused, as the chain runs it
    secs = time.process_time() - started
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    heap.freeze()
    return secs, faults


def journeys_once(kind: str, prefix: list[Any], timed: list[list[Any]],
                  fork: bool) -> tuple[list[tuple[float, int]], dict[str, float]]:
    """Build a `kind` processor over `prefix`, freeze, maybe fork, run the `timed` batches."""
    from bench_journeys_native import make, replay

    from streams.heap import WORKER_FULL_EVERY_S, HeapFreezer

    heap = HeapFreezer(WORKER_FULL_EVERY_S)
    processor = make(kind)
    with heap.batch():
        replay(processor, prefix, None)
    heap.freeze(young=True)  # as the worker before a checkpoint's fork (streams.app)
    info: dict[str, float] = {"rss_mb": rss_mb()}
    pid = 0
    if fork:
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            time.sleep(10)
            os._exit(0)
        info["fork_ms"] = (time.perf_counter() - started) * 1000
    results = [run_batch(processor, calls, heap) for calls in timed]
    if pid:
        os.kill(pid, 15)  # only sleeps: done once the batches are
        os.waitpid(pid, 0)
    info["customers"] = len(processor.customers)
    del processor
    gc.unfreeze()
    gc.collect()
    return results, info


def journeys_main(customers: int, size: int, seed: int, rounds: int,
                  kinds: list[str]) -> None:
    per_batch = record_batches(customers, seed, size)
    prefix = [call for calls in per_batch[:-3] for call in calls]
    timed = per_batch[-3:-1]  # the last batch may be short
    n_events = [sum(len(c[1]) for c in calls if c[0] == "apply") for calls in timed]
    n_touched = [len({ev.customer_id for c in calls if c[0] == "apply" for ev in c[1]})
                 for calls in timed]
    print(f"built over {len(prefix):,} calls; timed batches B1, B2: "
          f"{n_events[0]:,} and {n_events[1]:,} events of {n_touched[0]:,} and "
          f"{n_touched[1]:,} customers")
    gc.collect()
    gc.freeze()  # the recorded input is not the stage's: keep the collector off it
    for r in range(rounds):
        for kind in kinds:
            base = [journeys_once(kind, prefix, timed, fork=False)[0] for _ in range(3)]
            forked, info = journeys_once(kind, prefix, timed, fork=True)
            print(f"round {r + 1} {kind:6s}: {info['customers']:,} customers, RSS "
                  f"{info['rss_mb']:,.0f} MB, fork() {info['fork_ms']:.1f} ms")
            for i, (secs, faults) in enumerate(forked):
                best = min(b[i][0] for b in base)
                base_faults = min(b[i][1] for b in base)
                print(f"  B{i + 1} without a fork {best:7.4f} s {base_faults:7,} faults; "
                      f"{'right after the fork' if i == 0 else 'the next batch    '} "
                      f"{secs:7.4f} s {faults:7,} faults  ratio {secs / best:5.2f}  "
                      f"(+{(secs - best) * 1000:6.1f} ms, +{faults - base_faults:,} faults)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=None,
                    help="Default 300,000 (synthetic heap), 20,000 with --journeys.")
    ap.add_argument("--children", type=int, default=1)
    ap.add_argument("--journeys", action="store_true",
                    help="The real journeys processor, Python and native (see above).")
    ap.add_argument("--batch", type=int, default=5000, help="--journeys: lines per batch.")
    ap.add_argument("--seed", type=int, default=1, help="--journeys: the simulation's seed.")
    ap.add_argument("--rounds", type=int, default=3, help="--journeys: repetitions.")
    ap.add_argument("--only", choices=["python", "native"], default=None,
                    help="--journeys: one engine only.")
    args = ap.parse_args()
    if args.journeys:
        kinds = [args.only] if args.only else ["python", "native"]
        journeys_main(args.customers or 20_000, args.batch, args.seed, args.rounds, kinds)
        return
    args.customers = args.customers or 300_000
    state = build(args.customers)
    gc.freeze()
    rss = rss_mb()
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
    print(f"heap: {args.customers:,} customers, RSS {rss} MB; {args.children} child(ren)")
    print(f"fork():                          {fork_s * 1000:8.1f} ms")
    print(f"pass without a fork (baseline):  {baseline:8.3f} s")
    print(f"first pass after the fork:       {first:8.3f} s   ratio {first / baseline:.2f}")
    print(f"second pass after the fork:      {second:8.3f} s   ratio {second / baseline:.2f}")
    print(f"copy-on-write cost: {(first - second) * 1000:.0f} ms, "
          f"{(first - second) / (rss << 8) * 1e6:.1f} us per 4 KB page of RSS")


if __name__ == "__main__":
    main()

"""What a worker's checkpoint turn costs its child process: pickling a partition and the models
(issue 6).

    python bench/bench_checkpoint.py [--customers 12000] [--share 0.5] [--repeat 3]

A journey worker saves each partition's state (`streams.app.PartitionState`: the chain, the
model states and last scores of its customers) and the models' snapshot from a forked child
every `worker.checkpoint_every_s` (`CheckpointStore.save_turn_in_child`). The child's CPU is
taken from the worker's machine (and the worker copies the pages it writes while the child
lives), so it is worth measuring apart. This runs the first `--share` of the simulator's history
for `--customers` (the streaming bench's backlog) through the chain and the models, as a
one-partition worker holds them (its chain's resolver empty, as a journey partition's is), freezes
the heap as the worker does before its fork, then times (CPU of this process, best of
`--repeat`) what the child does: `pickle` of the partition, its compression
(`CheckpointStore.save`: zstd level 1), and the models' snapshot, with the parts that matter,
per customer.

The figures are taken with the collector off, as the child pickles since session 20 (it never
collects: ~40 % of a partition's pickle at 35k customers was the collector walking the objects
the pickling piles up). Baselines in the same run, each the way before session 20, the collector
on: the partition pickled with the
per-customer objects' default states (`online_models.slots.tuple_state` now: a tuple each), its
pickle compressed with zlib at level 1 (zstd now), and the models' snapshot with the suite's and
the propensity models' fields as they are (each pending snapshot and each window row of the
conversion and churn models an array of its own; now those vectors are packed into one matrix,
each once: `ModelSuite.__getstate__`, `online_models.propensity.VectorPack`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import pickle
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from online_models.features import CustomerFeatures
from online_models.propensity import PropensityModel
from online_models.suite import CustomerModelState, ModelSuite, Scores, _Closed
from processors.chain import JourneyChain
from processors.collector import gc_paused
from processors.validation import Lines
from simulator.model import SimConfig, simulate
from sinks.checkpoints import compress
from streams.app import PartitionState
from streams.corpus import new_model_suite
from streams.outputs import score_released
from streams.replay import model_config
from streams.settings import load_settings

# the classes whose pickled state session 20 changed (the baselines pickle them as before)
SESSION_20 = (ModelSuite, PropensityModel, CustomerModelState, CustomerFeatures, Scores, _Closed)


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(the least CPU seconds of `repeat` calls, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


@contextlib.contextmanager
def format_before_session_20() -> Iterator[None]:
    """Within: the classes session 20 gave a pickled state of their own pickle as before (the
    same code paths: a mutable slotted dataclass by `object.__getstate__`, a frozen one by
    `dataclasses._dataclass_getstate`, which calls `fields()` each time)."""
    saved = {cls: (cls.__dict__["__getstate__"], cls.__dict__["__setstate__"])
             for cls in SESSION_20}
    try:
        for cls in SESSION_20:
            if cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
                cls.__getstate__ = dataclasses._dataclass_getstate  # type: ignore[attr-defined]
                cls.__setstate__ = dataclasses._dataclass_setstate  # type: ignore[attr-defined]
            else:
                del cls.__getstate__, cls.__setstate__  # type: ignore[attr-defined]
        yield
    finally:
        for cls, (get, put) in saved.items():
            cls.__getstate__, cls.__setstate__ = get, put  # type: ignore[attr-defined]


def old_format(obj: Any) -> bytes:
    """`obj` pickled as before session 20: the classes' states as they were, the collector on."""
    assert gc.isenabled()
    with format_before_session_20():
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=12_000, help="simulated customers")
    ap.add_argument("--share", type=float, default=0.5,
                    help="share of the history run before the checkpoint (0..1]")
    ap.add_argument("--batch", type=int, default=5_000, help="events per chain batch")
    ap.add_argument("--repeat", type=int, default=3, help="timings per figure (the best)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not 0 < args.share <= 1:
        ap.error(f"--share must be in (0, 1], got {args.share}")

    lines = simulate(SimConfig(customers=args.customers, seed=args.seed)).lines
    lines = lines[: int(len(lines) * args.share)]
    config = load_settings().processing()
    models = new_model_suite(model_config(config))
    states: dict[str, CustomerModelState] = {}
    last: dict[str, Scores] = {}
    chain = JourneyChain(config)
    chain.segment_of = lambda c: s.segment if (s := states.get(c)) else "all"
    for i in range(0, len(lines), args.batch):
        part = lines[i : i + args.batch]
        out = chain.process(Lines(part, "bench", 0, range(i, i + len(part))))
        for merge in out.merges:  # as a journey partition does
            lost = states.pop(merge.loser, None)
            if lost is not None and merge.winner not in states:
                states[merge.winner] = lost
        score_released(models, states, last, out.released)
    chain.segment_of = None  # as the worker's turn does: a closure does not pickle
    # A journey partition's chain starts after resolution (`process_resolved`): its resolver
    # holds nothing (the ingest agent resolves, against Redis). This one resolved in memory.
    chain.resolver = JourneyChain(config).resolver
    partition = PartitionState(chain=chain, model_states=states, last_scores=last)
    del out, part
    gc.collect()
    gc.freeze()  # as the worker does before its fork (streams.app._freeze_heap)
    n = len(states)
    print(f"{len(lines):,} lines, {n:,} customers with model state "
          f"(simulator customers: {args.customers:,}, first {args.share:.0%} of the history)")

    rows: list[tuple[str, float, int]] = []

    def measure(name: str, fn: Callable[[], bytes]) -> bytes:
        with gc_paused():  # as the child pickles now
            s, out = best_of(args.repeat, fn)
        rows.append((name, s, len(out)))
        return out  # type: ignore[no-any-return]

    body = measure("partition: pickle", lambda: pickle.dumps(partition, pickle.HIGHEST_PROTOCOL))
    old_part_s, old_part = best_of(args.repeat, lambda: old_format(partition))
    packed = measure("partition: zstd level 1 (the store's)", lambda: compress(body))
    zlib_s, zlibbed = best_of(args.repeat, lambda: zlib.compress(body, 1))
    measure("  chain", lambda: pickle.dumps(chain, pickle.HIGHEST_PROTOCOL))
    measure("  model states", lambda: pickle.dumps(states, pickle.HIGHEST_PROTOCOL))
    measure("  last scores", lambda: pickle.dumps(last, pickle.HIGHEST_PROTOCOL))
    snapshot = measure("models: snapshot", models.snapshot)
    for name in ("convert", "churn"):
        model = getattr(models, name)
        measure(f"  {name} (pending {model.n_pending:,}, window {len(model.window):,})",
                lambda m=model: pickle.dumps(m, pickle.HIGHEST_PROTOCOL))
    old_s, old = best_of(args.repeat, lambda: old_format(models))
    assert ModelSuite.restore(snapshot).convert.n_pending == models.convert.n_pending
    turn = sum(s for name, s, _ in rows if not name.startswith(" "))  # (the parts indented)
    for name, s, size in rows:
        print(f"{name:44s} {s * 1e3:8.1f} ms  {s / n * 1e6:7.1f} us per customer  "
              f"{size / 1e6:7.2f} MB")
    print(f"{'checkpoint turn (partition + zstd + models)':44s} {turn * 1e3:8.1f} ms  "
          f"{turn / n * 1e6:7.1f} us per customer")
    part_s = rows[0][1]
    print(f"partition pickled: {part_s * 1e3:.1f} ms, {len(body) / 1e6:.2f} MB; as before "
          f"session 20 (baseline, same run): {old_part_s * 1e3:.1f} ms, {len(old_part) / 1e6:.2f} "
          f"MB; ratio {part_s / old_part_s:.3f}")
    zstd_s = next(s for name, s, _ in rows if name.startswith("partition: zstd"))
    print(f"partition compressed: zstd level 1 {zstd_s * 1e3:.1f} ms, {len(packed) / 1e6:.2f} "
          f"MB; zlib level 1 as before session 20 (baseline, same run): {zlib_s * 1e3:.1f} ms, "
          f"{len(zlibbed) / 1e6:.2f} MB; ratio {zstd_s / zlib_s:.3f}")
    new_s = next(s for name, s, _ in rows if name == "models: snapshot")
    print(f"models' snapshot: {new_s * 1e3:.1f} ms, {len(snapshot) / 1e6:.2f} MB; in the format "
          f"before session 20 (baseline, same run): {old_s * 1e3:.1f} ms, {len(old) / 1e6:.2f} "
          f"MB; ratio {new_s / old_s:.3f}")


if __name__ == "__main__":
    main()

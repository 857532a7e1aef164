"""Memory per customer of a streaming worker's journey path, and what holds it (issue 6).

    python bench/bench_state_memory.py [--customers 10000] [--seed 1] [--batch 20000]

Runs the simulator's events through the processor chain and the online models in this process,
as a journey partition does (`streams.outputs.score_released`, merges moving model states like
the replay), then prints the RSS growth per scored customer next to the baseline of the same
run: the size of the Python objects each part holds (`sys.getsizeof` over everything reachable
from it, each object counted once, in the order printed). The difference between the two is
what Python cannot see: the native cores' state (journeys, identity, funnels, paths),
allocator overhead and the memory the batches left behind. A worker's RSS for N customers is
about N times the first figure, plus Faust's buffers; the identity graph lives in Redis there
(here in memory, in the chain's resolver).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import types
from collections.abc import Iterable
from typing import Any

from online_models.suite import CustomerModelState, ModelSuite, Scores
from processors.chain import JourneyChain
from processors.validation import Lines
from simulator.model import SimConfig, simulate
from streams.outputs import score_released
from streams.replay import model_config
from streams.settings import load_settings

_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def deep_size(obj: object, seen: set[int]) -> int:
    """Bytes of `obj` and of everything reachable from it not in `seen` (which it extends);
    classes, modules and functions are not counted."""
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, _SKIP):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        stack.extend(gc.get_referents(o))
    return total


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def parts(chain: JourneyChain, models: ModelSuite, states: dict[str, CustomerModelState],
          last: dict[str, Scores]) -> Iterable[tuple[str, Any]]:
    yield "model states (per customer)", states
    yield "last scores (per customer)", last
    for f in dataclasses.fields(models):
        yield f"models.{f.name}", getattr(models, f.name)
    for name, value in vars(chain).items():
        if name not in ("config", "segment_of"):
            yield f"chain.{name}", value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=10_000, help="simulated customers")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=20_000, help="events per chain batch")
    args = ap.parse_args()

    lines = simulate(SimConfig(customers=args.customers, seed=args.seed)).lines
    config = load_settings().processing()
    gc.collect()
    start = rss_bytes()
    models = ModelSuite(model_config(config))
    states: dict[str, CustomerModelState] = {}
    last: dict[str, Scores] = {}
    chain = JourneyChain(config, segment_of=lambda c: s.segment if (s := states.get(c))
                         else "all")
    for i in range(0, len(lines) + 1, args.batch):
        if i < len(lines):
            part = lines[i : i + args.batch]
            out = chain.process(Lines(part, "bench", 0, range(i, i + len(part))))
        else:
            out = chain.finish()
        for merge in out.merges:  # as the replay and a journey partition do
            lost = states.pop(merge.loser, None)
            if lost is not None and merge.winner not in states:
                states[merge.winner] = lost
        score_released(models, states, last, out.released)
    n_lines = len(lines)
    del out, lines, part
    gc.collect()
    n = len(states)
    grown = rss_bytes() - start
    seen: set[int] = set()
    sizes = [(name, deep_size(value, seen)) for name, value in parts(chain, models, states, last)]
    visible = sum(size for _, size in sizes)
    print(f"{n_lines:,} lines, {n:,} scored customers (simulator customers: {args.customers:,})")
    print(f"RSS growth:            {grown / n:8,.0f} B per scored customer "
          f"(~{grown / n * 1e6 / 1e9:,.1f} GB per 1M customers)")
    print(f"Python objects held:   {visible / n:8,.0f} B per scored customer (baseline)")
    print(f"ratio RSS / Python:    {grown / visible:8.2f}  (the rest: native state, allocator, "
          f"batches' leftovers)")
    for name, size in sorted(sizes, key=lambda x: -x[1]):
        if size >= 0.01 * visible:
            print(f"  {name:32s} {size / n:8,.0f} B per customer  ({size / 1e6:7.1f} MB)")


if __name__ == "__main__":
    main()

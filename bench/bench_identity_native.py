"""The in-memory identity resolver deciding in Rust vs the Python one (issue 3).

    python bench/bench_identity_native.py --fingerprint      # per-case hashes, both resolvers
    python bench/bench_identity_native.py [--events 200000] [--rounds 3]
    python bench/bench_identity_native.py --sim 20000 [--rounds 3]

Needs the extension module: ``scripts/build-native.sh`` (``pip install ./native/identity``).

`--fingerprint` runs bench_identity's fingerprint cases (`_outputs_hash`, unchanged) with the
Python resolver and with :class:`processors.identity_native.NativeIdentityResolver` (native:
combinations looked up and hashed in Rust; native+pyprep: looked up by `_prepare`, hashed in
Rust; native+pyhash: both in Python; native+pytime: event times by numpy, the rest in Rust)
and prints every resolver's hashes per case. Otherwise,
in the same run, it alternates the resolvers `rounds` times over the same stream (batches of
`--batch`, CPU time, the collector handled as bench_identity does): the first pass (a new
resolver over fresh events) and a second pass (the same events again, every identifier
known), and prints events/s and each / Python. Then it splits the native first pass into
`prepare_batch` (identities, combination lookup, hashing of new identifiers, event times),
`decide_batch` (decisions, `ResolvedEvent`s and the records) and the rest (in Python).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_identity as bi

from processors.config import IdentityConfig
from processors.events import TouchpointEvent
from processors.identity import IdentityResolver
from processors.identity_native import NativeIdentityResolver


def _native(config: IdentityConfig, salt: str, store: Any = None) -> NativeIdentityResolver:
    if store is not None:
        raise SystemExit("the native resolver has the in-memory store only")
    return NativeIdentityResolver(config, salt)


def _native_py_hash(config: IdentityConfig, salt: str, store: Any = None
                    ) -> NativeIdentityResolver:
    """The native resolver with identifiers hashed in Python (`key_of`), as at first."""
    resolver = _native(config, salt, store)
    resolver.native_hashing = resolver.native_prepare = False
    return resolver


def _native_py_prepare(config: IdentityConfig, salt: str, store: Any = None
                       ) -> NativeIdentityResolver:
    """The native resolver with each event's combination found by `_prepare` (Python)."""
    resolver = _native(config, salt, store)
    resolver.native_prepare = False
    return resolver


def _native_py_time(config: IdentityConfig, salt: str, store: Any = None
                    ) -> NativeIdentityResolver:
    """The native resolver with event times by `events.event_times_ms` (numpy), as in session 8."""
    resolver = _native(config, salt, store)
    resolver.native_times = False
    return resolver


RESOLVERS: tuple[tuple[str, Callable[..., IdentityResolver]], ...] = (
    ("python", IdentityResolver), ("native+pyhash", _native_py_hash),
    ("native+pyprep", _native_py_prepare), ("native+pytime", _native_py_time),
    ("native", _native))


def fingerprints(native_only: bool) -> None:
    makers = RESOLVERS[1:] if native_only else RESOLVERS
    for name, make in makers:
        bi.IdentityResolver = make  # type: ignore[assignment,misc]
        print(f"-- {name} resolver")
        bi.fingerprint()
    bi.IdentityResolver = IdentityResolver  # type: ignore[misc]


def one_pass(make: Callable[..., IdentityResolver], events: list[TouchpointEvent], size: int,
             second: bool) -> float:
    """Events/s (CPU time) of a new resolver's first pass over `events`, or of its second."""
    resolver = make(IdentityConfig(), "bench-salt")
    if second:
        for batch in bi.batches([e.model_copy() for e in events], size):
            resolver.resolve_batch(batch)
    started = time.process_time()
    for batch in bi.batches(events, size):
        with bi.batch_gc():
            resolver.resolve_batch(batch)
    return len(events) / (time.process_time() - started)


def split(events: list[TouchpointEvent], size: int) -> None:
    """Where the native resolver's first pass spends its time (CPU, per part): `prepare_batch`
    (each event read once: identities looked up, new ones hashed; its time computed and
    cached), `decide_batch` (the decisions, the `ResolvedEvent`s and the records), and the
    rest in Python."""
    parts = {"prepare_batch": 0.0, "decide_batch": 0.0}
    resolver = NativeIdentityResolver(IdentityConfig(), "bench-salt")
    core = resolver.core

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            t = time.process_time()
            out = fn(*args)
            parts[name] += time.process_time() - t
            return out
        return run

    class Timed:
        prepare_batch = staticmethod(timed("prepare_batch", core.prepare_batch))
        decide_batch = staticmethod(timed("decide_batch", core.decide_batch))

        def __getattr__(self, name: str) -> Any:
            return getattr(core, name)

    resolver.core = Timed()
    started = time.process_time()
    for batch in bi.batches(events, size):
        with bi.batch_gc():
            resolver.resolve_batch(batch)
    total = time.process_time() - started
    parts["Python"] = total - sum(parts.values())
    print(f"native first pass, {total:.3f} s CPU: " + ", ".join(
        f"{k} {v:.3f} s ({v / total:.0%}, {v / len(events) * 1e9:.0f} ns/event)"
        for k, v in parts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--sim", type=int, default=0, metavar="CUSTOMERS")
    parser.add_argument("--rounds", type=int, default=3, help="0: only the split")
    parser.add_argument("--fingerprint", action="store_true")
    parser.add_argument("--native-only", action="store_true",
                        help="with --fingerprint: the native resolver's hashes only")
    parser.add_argument("--resolvers", default=",".join(name for name, _ in RESOLVERS),
                        help="the resolvers to time, comma-separated (default: all; python is "
                             "the baseline and always runs)")
    args = parser.parse_args()
    wanted = {"python", *args.resolvers.split(",")}
    unknown = wanted - {name for name, _ in RESOLVERS}
    if unknown:
        parser.error(f"unknown resolvers {sorted(unknown)}; choose from "
                     f"{[name for name, _ in RESOLVERS]}")
    resolvers = [(name, make) for name, make in RESOLVERS if name in wanted]
    if args.fingerprint:
        fingerprints(args.native_only)
        return

    def fresh() -> list[TouchpointEvent]:  # ts_ms is cached per event: a cold start
        return bi.sim_events(args.sim) if args.sim else bi.make_events(args.events)

    source = f"simulation of {args.sim} customers" if args.sim else f"synthetic {args.events}"
    print(f"{source}, batches of {args.batch}, {args.rounds} alternating rounds (CPU time)")
    figures: dict[tuple[str, bool], list[float]] = {}
    for r in range(args.rounds):
        for second in (False, True):
            for name, make in resolvers:
                events = fresh()
                gc.collect()
                gc.freeze()
                eps = one_pass(make, events, args.batch, second)
                figures.setdefault((name, second), []).append(eps)
                print(f"round {r + 1} {'second' if second else 'first '} pass {name}: "
                      f"{eps:>10,.0f} events/s")
    for second in (False, True) if args.rounds else ():
        py = figures[("python", second)]
        for name, _ in resolvers:
            ratios = [n / p for n, p in zip(figures[(name, second)], py, strict=True)]
            print(f"{'second' if second else 'first '} pass, {name:14s} median "
                  f"{statistics.median(figures[(name, second)]):>9,.0f} events/s, / python per "
                  "round: " + " ".join(f"{x:.2f}" for x in ratios))
    events = fresh()
    gc.collect()
    gc.freeze()
    split(events, args.batch)


if __name__ == "__main__":
    main()

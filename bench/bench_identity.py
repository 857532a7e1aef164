"""Identity resolution throughput: in memory, and against real Redis next to a plain HGET loop.

    python bench/bench_identity.py [--events 200000] [--batch 1000] [--redis-url URL]
    python bench/bench_identity.py --workers 2    # only: 2 worker processes sharing customers

Prints events/s of the in-memory resolver (one core, CPU time) next to a bare union-find over
the same raw identifiers (its baseline), of the resolver on the Redis store (one worker: one
atomic read and one atomic commit per batch), and of a plain pipelined HGET loop over the same
node keys in the same run (the baseline: the least any Redis-backed lookup must do).
The Redis URL defaults to JOURNEYMAP_REDIS__URL, then redis://127.0.0.1:6379/0.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.config import IdentityConfig
from processors.events import TouchpointEvent
from processors.identity import IdentityResolver

T0_MS = 1_772_323_200_000


def make_events(n: int, seed: int = 7) -> list[TouchpointEvent]:
    """Customers with a device, cookies that rotate, and a login or an email now and then."""
    rng = random.Random(seed)
    n_customers = max(1, n // 20)
    out = []
    for i in range(n):
        c = rng.randrange(n_customers)
        ids: dict[str, str] = {"anonymous_id": f"cookie-{c}-{rng.randrange(3)}"}
        r = rng.random()
        if r < 0.3:
            ids["device_id"] = f"device-{c}"
        elif r < 0.4:
            ids["user_id"] = f"user-{c}"
        elif r < 0.45:
            ids["email"] = f"Customer{c}@Example.com "
        out.append(
            TouchpointEvent.model_validate(
                {
                    "event_id": f"ev-{i}",
                    "occurred_at": T0_MS + i * 50 + rng.randrange(5_000),
                    "channel": "web",
                    "touchpoint": "landing_page",
                    "identities": ids,
                }
            )
        )
    return out


def batches(events: list[TouchpointEvent], size: int) -> list[list[TouchpointEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def bench_memory(events: list[TouchpointEvent], size: int) -> float:
    resolver = IdentityResolver(IdentityConfig(), "bench-salt")
    started = time.process_time()
    for batch in batches(events, size):
        resolver.resolve_batch(batch)
    return len(events) / (time.process_time() - started)


def bench_plain_union_find(events: list[TouchpointEvent], size: int) -> float:
    """Baseline: a bare union-find over the raw identifiers (no hashing, no normalization, no
    event-time order, no safeguards, no outputs but each event's root): the least any
    in-memory resolver does with the same events."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        root = parent.setdefault(x, x)
        while root != parent[root]:
            parent[root] = parent[parent[root]]
            root = parent[root]
        return root

    started = time.process_time()
    for batch in batches(events, size):
        roots = []
        for ev in batch:
            ids = ev.identities.items()
            r0 = find(ids[0])
            for pair in ids[1:]:
                r = find(pair)
                if r != r0:
                    parent[r] = r0
            roots.append((r0, ev.ts_ms))
    return len(events) / (time.process_time() - started)


def bench_redis(events: list[TouchpointEvent], size: int, url: str) -> tuple[float, float, int]:
    import redis

    from sinks.identity_redis import RedisIdentityStore

    prefix = f"bench:id:{os.getpid()}"
    store = RedisIdentityStore(url, prefix=prefix)
    store.clear()
    resolver = IdentityResolver(IdentityConfig(), "bench-salt", store)
    parts = batches(events, size)
    try:
        server_cpu = _server_cpu_s(store.client)
        evalsha = _evalsha_calls(store.client)
        cpu = time.process_time()
        started = time.perf_counter()
        for batch in parts:
            resolver.resolve_batch(batch)
        resolved_rate = len(events) / (time.perf_counter() - started)
        cpu = time.process_time() - cpu
        server_cpu = _server_cpu_s(store.client) - server_cpu
        evalsha = _evalsha_calls(store.client) - evalsha
        print(
            f"Redis resolver, where it goes: client CPU {cpu / len(events) * 1e6:.1f} us/event, "
            f"redis-server CPU {server_cpu / len(events) * 1e6:.1f} us/event (all its clients), "
            f"{evalsha / len(parts):.2f} scripts (round trips) per batch, "
            f"{store.n_conflicting_commits} conflicting commits"
        )

        # Baseline: the same node keys, one pipelined HGET per identifier, per batch.
        keyed = [
            [
                k
                for ev in batch
                for kind, v in ev.identities.items()
                if (k := resolver.key_of(kind, v)) is not None
            ]
            for batch in parts
        ]
        client = redis.Redis.from_url(url, decode_responses=True)
        node_hash = f"{prefix}:n"
        started = time.perf_counter()
        for keys in keyed:
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.hget(node_hash, k)
            pipe.execute()
        hget_rate = len(events) / (time.perf_counter() - started)
        return resolved_rate, hget_rate, len(store.partition())
    finally:
        store.clear()


def _one_of_several(
    n: int, size: int, url: str, prefix: str, part: int, n_workers: int, start: Any, out: Any
) -> None:
    from sinks.identity_redis import RedisIdentityStore

    events = make_events(n)[part::n_workers]
    store = RedisIdentityStore(url, prefix=prefix)
    resolver = IdentityResolver(IdentityConfig(), "bench-salt", store)
    start.wait()
    started = time.perf_counter()
    for batch in batches(events, size):
        resolver.resolve_batch(batch)
    out.put((len(events), time.perf_counter() - started, store.n_conflicting_commits))


def bench_several(n: int, size: int, url: str, n_workers: int) -> None:
    """`n_workers` processes resolving interleaved slices of the same events (so they share
    customers) against one Redis at the same time: their total rate and retried commits."""
    import multiprocessing as mp

    from sinks.identity_redis import RedisIdentityStore

    prefix = f"bench:id:{os.getpid()}:several"
    RedisIdentityStore(url, prefix=prefix).clear()
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(n_workers), ctx.Queue()
    procs = [
        ctx.Process(target=_one_of_several, args=(n, size, url, prefix, i, n_workers, start, out))
        for i in range(n_workers)
    ]
    try:
        for proc in procs:
            proc.start()
        reports = [out.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join()
    finally:
        RedisIdentityStore(url, prefix=prefix).clear()
    total = sum(r[0] for r in reports) / max(r[1] for r in reports)
    print(
        f"{n_workers} workers, shared customers: {total:>10,.0f} events/s in total, "
        f"{sum(r[2] for r in reports)} conflicting commits in {n // size} batches"
    )


def _server_cpu_s(client: object) -> float:
    info = client.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _evalsha_calls(client: object) -> int:
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("JOURNEYMAP_REDIS__URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument(
        "--workers", type=int, default=0,
        help="also run this many worker processes on interleaved slices of the events at once",
    )
    args = parser.parse_args()
    if args.workers:
        bench_several(args.events, args.batch, args.redis_url, args.workers)
        return

    events = make_events(args.events)
    # The events are built up front; keep the collector from re-scanning them in every batch
    # (a worker holds one batch at a time, not the whole stream).
    gc.collect()
    gc.freeze()
    print(f"{len(events)} events, batches of {args.batch}")
    mem = bench_memory(events, args.batch)
    plain = bench_plain_union_find(make_events(args.events), args.batch)
    print(f"in-memory resolver:        {mem:>10,.0f} events/s   (target >= 300,000)")
    print(f"bare union-find baseline:  {plain:>10,.0f} events/s   (same events, same run)")
    print(f"ratio resolver / baseline: {mem / plain:>10.2f}")
    if args.no_redis:
        return
    fresh = make_events(args.events)  # ts_ms is cached per event: give Redis the same cold start
    gc.collect()
    gc.freeze()
    red, hget, n_customers = bench_redis(fresh, args.batch, args.redis_url)
    print(f"Redis resolver (1 worker): {red:>10,.0f} events/s   (target >= 50,000)")
    print(f"pipelined HGET baseline:   {hget:>10,.0f} events/s   (same keys, same run)")
    print(f"ratio resolver / HGET:     {red / hget:>10.2f}      (target >= 0.4)")
    print(f"customers: {n_customers}")


if __name__ == "__main__":
    main()

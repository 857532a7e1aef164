"""Identity resolution throughput: in memory, and against real Redis next to a plain HGET loop.

    python bench/bench_identity.py [--events 200000] [--batch 1000] [--redis-url URL]
    python bench/bench_identity.py --workers 2    # only: 2 worker processes sharing customers
    python bench/bench_identity.py --sim 20000 --no-redis   # simulator events instead
    python bench/bench_identity.py --fingerprint  # only: a hash of every output, to compare trees
    python bench/bench_identity.py --fingerprint-redis   # the same on the Redis store: equal
    python bench/bench_identity.py --fingerprint-redis --engine python   # (or native): equal

Prints events/s of the in-memory resolver (one core, CPU time; each engine: python, and native
when the module is installed) next to a bare union-find over
the same raw identifiers (its baseline), of the resolver on the Redis store (one worker: one
atomic read and one atomic commit per batch), and of a plain pipelined HGET loop over the same
node keys in the same run (the baseline: the least any Redis-backed lookup must do). The
Redis resolver is timed with each engine (identity.engine python, and native when the module
is installed; `--redis-engines` sets the order) on fresh events; `--engine` picks the one of
`--fingerprint-redis` and `--workers` (default JOURNEYMAP_IDENTITY__ENGINE, else auto).
The Redis URL defaults to JOURNEYMAP_REDIS__URL, then redis://127.0.0.1:6379/0.

`--sim N` resolves the decoded events of a simulation of N customers (``simulator.model``, seed
1, delivery order) instead of the synthetic stream, and says how many events repeat an identity
combination already seen. `--fingerprint` prints, per case and in total, a SHA-256 over every
output of every batch (resolved customer per event, merges, links, conflicts, dead letters,
counters) and the final graph, for a 20k-customer simulation (delivery order, then all again),
the synthetic stream and a tangled stream that fires every safeguard, under several safeguard
settings and batch sizes, shuffled and not: a change meant to be exact must print the same.

Every timed batch (the resolver's and the baselines') runs as the replay and the worker run theirs:
the cyclic collector paused during the batch and what it left alive frozen after it
(`streams.heap.HeapFreezer`; otherwise every batch's survivors and, at each full collection,
the whole graph are walked again). `--no-freeze` times them under CPython's default collector.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.config import IdentityConfig
from processors.events import TouchpointEvent
from processors.identity import IdentityResolver, IdentityStore
from processors.identity_native import NATIVE_AVAILABLE, engine_of, new_resolver
from streams.heap import REPLAY_FULL_EVERY_S, HeapFreezer

# How each timed batch runs (see the module doc); `--no-freeze` sets it to None.
HEAP: HeapFreezer | None = HeapFreezer(REPLAY_FULL_EVERY_S)
# The engine of the resolver on the Redis store (`--engine`; identity.engine's values).
ENGINE = os.environ.get("JOURNEYMAP_IDENTITY__ENGINE", "auto")


def redis_resolver(config: IdentityConfig, store: IdentityStore,
                   engine: str | None = None) -> IdentityResolver:
    """The resolver on a Redis store for `engine` (default `ENGINE`), as the worker makes it."""
    return new_resolver(config.model_copy(update={"engine": engine or ENGINE}), "bench-salt",
                        store)


def batch_gc() -> contextlib.AbstractContextManager[None]:
    """The collector's regime for one timed batch: paused, then frozen, unless --no-freeze."""
    return HEAP.batch() if HEAP is not None else contextlib.nullcontext()

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


def sim_events(customers: int, seed: int = 1) -> list[TouchpointEvent]:
    """The accepted events of a simulation, decoded, in delivery order (`ts_ms` not yet read)."""
    from processors.validation import Accepted, decode_lines
    from simulator.model import SimConfig, simulate

    accepted, _ = decode_lines(simulate(SimConfig(customers=customers, seed=seed)).lines, "sim")
    return [a.event for a in accepted if isinstance(a, Accepted)]


def make_tangled(n: int, seed: int = 11) -> list[TouchpointEvent]:
    """Identifiers drawn from small shared pools at random event times: merges, earlier-evidence
    renames, unique-kind conflicts, saturated identifiers and ignored values all happen."""
    rng = random.Random(seed)
    pools = {
        "anonymous_id": max(2, n // 3), "device_id": max(2, n // 8), "user_id": max(2, n // 12),
        "email": max(2, n // 10), "crm_id": max(2, n // 15),
    }
    out = []
    for i in range(n):
        kinds = rng.sample(list(pools), rng.choice((1, 1, 2, 2, 3)))
        ids = {
            k: "null" if rng.random() < 0.02 else f"{k[0]}{rng.randrange(pools[k])}"
            for k in kinds
        }
        if rng.random() < 0.05:
            ids["email"] = f" E{rng.randrange(pools['email'])}@X.org"
        out.append(
            TouchpointEvent.model_validate(
                {
                    "event_id": f"t-{i}",
                    "occurred_at": T0_MS + rng.randrange(n * 20),
                    "channel": "web",
                    "touchpoint": "landing_page",
                    "identities": ids,
                }
            )
        )
    return out


def repeat_share(events: list[TouchpointEvent], size: int) -> tuple[float, float]:
    """Shares of events whose identity combination was seen before: in an earlier event of the
    stream, and earlier in the same batch."""
    seen: set[frozenset[tuple[str, str]]] = set()
    n_seen = n_batch = 0
    for part in batches(events, size):
        in_batch: set[frozenset[tuple[str, str]]] = set()
        for ev in part:
            combo = frozenset(dict.items(ev.identities))
            n_seen += combo in seen
            n_batch += combo in in_batch
            seen.add(combo)
            in_batch.add(combo)
    return n_seen / len(events), n_batch / len(events)


class _MergeWithoutSeq(NamedTuple):
    """A MergeRecord as it was before `seq` (the fingerprint stays comparable with older runs;
    seq is compared between the stores by tests/integration/test_identity_redis.py)."""

    loser: str
    winner: str
    evidence_event_id: str
    ts_ms: int
    reason: str


_MergeWithoutSeq.__name__ = "MergeRecord"


def _outputs_hash(events: list[TouchpointEvent], config: IdentityConfig, size: int,
                  shuffle: bool, passes: int, redis_url: str | None = None) -> str:
    """SHA-256 of every output of every batch and of the final graph (see the module doc);
    with `redis_url`, of the resolver on the Redis store there (the graph read back from it)."""
    h = hashlib.sha256()
    evs = list(events)
    if shuffle:
        random.Random(3).shuffle(evs)
    store = None
    if redis_url is not None:
        from sinks.identity_redis import RedisIdentityStore

        store = RedisIdentityStore(redis_url, prefix=f"bench:fp:{os.getpid()}")
        store.clear()
    resolver = (IdentityResolver(config, "bench-salt") if store is None
                else redis_resolver(config, store))
    for _ in range(passes):
        for part in batches(evs, size):
            r = resolver.resolve_batch(part)
            h.update(repr((
                [(e.customer_id, e.event.event_id, e.ts_ms, e.segment) for e in r.resolved],
                [_MergeWithoutSeq(*m[:5]) for m in r.merges],  # comparable with older runs
                r.links, r.conflicts,
                [(ev.event_id, why) for ev, why in r.dead],
                sorted(r.counters().items()),
            )).encode())
    g = resolver.store.graph if store is None else _graph_in_redis(store)  # type: ignore[attr-defined]
    h.update(repr((
        sorted(g.cid.items()), sorted(g.first.items()), sorted(g.linked.items()),
        sorted((c, r.earliest_ts, r.earliest_key, sorted(r.uniq.items()), r.size)
               for c, r in g.roots.items()),
        sorted((c, sorted(keys)) for c, keys in g.members.items()),
        sorted(resolver.totals.items()),
    )).encode())
    if store is not None:
        store.clear()
    return h.hexdigest()[:16]


def _graph_in_redis(store: Any) -> Any:
    """The whole graph a RedisIdentityStore holds, as the in-memory store's IdentityGraph."""
    import orjson

    from processors.identity import IdentityGraph, Root

    g = IdentityGraph()
    client, p = store.client, store.prefix
    for key, raw in client.hscan_iter(f"{p}:n", count=5000):
        cid, first, linked = raw.split("|")
        g.cid[key], g.first[key] = cid, int(first)
        if int(linked):
            g.linked[key] = int(linked)
    for cid, raw in client.hscan_iter(f"{p}:r", count=5000):
        ts, key, uniq, size, _token = orjson.loads(raw)
        g.roots[cid] = Root(ts, key, uniq, size)
        g.members[cid] = list(client.smembers(f"{p}:m:{cid}"))
    return g


def fingerprint(redis_url: str | None = None) -> None:
    sim = sim_events(20_000)
    synthetic = make_events(60_000)
    tangled = make_tangled(30_000)
    default = IdentityConfig()
    cap1 = IdentityConfig(max_customers_per_identifier=1)
    cap2_free = IdentityConfig(unique_kinds=[], max_customers_per_identifier=2)
    unique_all = IdentityConfig(unique_kinds=["user_id", "crm_id", "email", "device_id"])
    cases = [
        ("sim20k default b1000, twice", sim, default, 1000, False, 2),
        ("sim20k cap1 b37 shuffled", sim, cap1, 37, True, 1),
        ("synthetic60k default b1000, twice", synthetic, default, 1000, False, 2),
        ("synthetic60k cap2 no-unique b1 shuffled", synthetic[:20_000], cap2_free, 1, True, 1),
        ("tangled30k default b1000, twice", tangled, default, 1000, False, 2),
        ("tangled30k cap1 b37 shuffled, twice", tangled, cap1, 37, True, 2),
        ("tangled30k cap2 no-unique b500", tangled, cap2_free, 500, False, 1),
        ("tangled30k unique-all b1 shuffled", tangled[:10_000], unique_all, 1, True, 1),
    ]
    if redis_url is not None:
        from sinks.identity_redis import RedisIdentityStore

        probe = redis_resolver(default, RedisIdentityStore(redis_url, prefix="bench:fp:probe"))
        print(f"on the Redis store, engine {engine_of(probe)}")
    total = hashlib.sha256()
    for name, evs, config, size, shuffle, passes in cases:
        digest = _outputs_hash(evs, config, size, shuffle, passes, redis_url)
        total.update(digest.encode())
        print(f"{name:45s} {digest}")
    print(f"{'all':45s} {total.hexdigest()[:16]}")


def batches(events: list[TouchpointEvent], size: int) -> list[list[TouchpointEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def bench_memory(events: list[TouchpointEvent], size: int, passes: int = 1,
                 engine: str = "python") -> float:
    """Events/s (CPU time) of the last of `passes` passes over `events` (earlier ones untimed,
    each over a copy of the events with `ts_ms` not yet read, as a new stream's would be), by
    the in-memory resolver of identity.engine `engine`."""
    resolver = new_resolver(IdentityConfig(engine=engine), "bench-salt")  # type: ignore[arg-type]
    for _ in range(passes - 1):
        for batch in batches([e.model_copy() for e in events], size):
            resolver.resolve_batch(batch)
    started = time.process_time()
    for batch in batches(events, size):
        with batch_gc():
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
        with batch_gc():
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


def bench_redis(events: list[TouchpointEvent], size: int, url: str, engine: str,
                hget: bool = True) -> tuple[float, float, int]:
    """Events/s of the resolver (`engine`) on the Redis store, of the HGET baseline (0.0 unless
    `hget`), and the customers it made."""
    import redis

    from sinks.identity_redis import RedisIdentityStore

    prefix = f"bench:id:{os.getpid()}"
    store = RedisIdentityStore(url, prefix=prefix)
    store.clear()
    resolver = redis_resolver(IdentityConfig(), store, engine)
    parts = batches(events, size)
    try:
        server_cpu = _server_cpu_s(store.client)
        evalsha = _evalsha_calls(store.client)
        net = _net_bytes(store.client)
        cpu = time.process_time()
        started = time.perf_counter()
        for batch in parts:
            with batch_gc():
                resolver.resolve_batch(batch)
        resolved_rate = len(events) / (time.perf_counter() - started)
        cpu = time.process_time() - cpu
        server_cpu = _server_cpu_s(store.client) - server_cpu
        evalsha = _evalsha_calls(store.client) - evalsha
        sent, received = (b - a for a, b in zip(net, _net_bytes(store.client), strict=True))
        print(
            f"Redis resolver ({engine_of(resolver)}), where it goes: client CPU "
            f"{cpu / len(events) * 1e6:.1f} us/event, "
            f"redis-server CPU {server_cpu / len(events) * 1e6:.1f} us/event (all its clients), "
            f"{evalsha / len(parts):.2f} scripts (round trips) per batch, "
            f"{sent / len(parts) / 1000:.1f} KB sent to and {received / len(parts) / 1000:.1f} KB "
            f"received from Redis per batch (all its clients), "
            f"{store.n_conflicting_commits} conflicting commits"
        )
        if not hget:
            return resolved_rate, 0.0, len(store.partition())

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
            with batch_gc():
                pipe = client.pipeline(transaction=False)
                for k in keys:
                    pipe.hget(node_hash, k)
                pipe.execute()
        hget_rate = len(events) / (time.perf_counter() - started)
        return resolved_rate, hget_rate, len(store.partition())
    finally:
        store.clear()


def _one_of_several(
    n: int, size: int, url: str, prefix: str, part: int, n_workers: int, start: Any, out: Any,
    engine: str,
) -> None:
    from sinks.identity_redis import RedisIdentityStore

    events = make_events(n)[part::n_workers]
    store = RedisIdentityStore(url, prefix=prefix)
    resolver = redis_resolver(IdentityConfig(), store, engine)
    start.wait()
    started = time.perf_counter()
    for batch in batches(events, size):
        with batch_gc():
            resolver.resolve_batch(batch)
    out.put((len(events), time.perf_counter() - started, store.n_conflicting_commits,
             store.n_reads, store.n_cache_drops))


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
        ctx.Process(target=_one_of_several,
                    args=(n, size, url, prefix, i, n_workers, start, out, ENGINE))
        for i in range(n_workers)
    ]
    try:
        for proc in procs:
            proc.start()
        reports = [out.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join()
        # The graph the workers left in Redis against the in-memory resolver over all events.
        final = RedisIdentityStore(url, prefix=prefix).partition()
    finally:
        RedisIdentityStore(url, prefix=prefix).clear()
    total = sum(r[0] for r in reports) / max(r[1] for r in reports)
    print(
        f"{n_workers} workers ({ENGINE} engine), shared customers: {total:>10,.0f} events/s in "
        "total, "
        f"{sum(r[2] for r in reports)} conflicting commits in {n // size} batches, "
        f"{sum(r[3] for r in reports)} reads, {sum(r[4] for r in reports)} cache drops"
    )
    memory = IdentityResolver(IdentityConfig(), "bench-salt")
    for batch in batches(make_events(n), size):
        memory.resolve_batch(batch)
    same = final == memory.store.graph.partition()  # type: ignore[attr-defined]
    print(f"final graph equals the in-memory answer: {'yes' if same else 'NO'} "
          f"({len(final)} customers)")
    if not same:
        raise SystemExit(1)


def _server_cpu_s(client: object) -> float:
    info = client.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _net_bytes(client: object) -> tuple[int, int]:
    """Bytes redis-server has received and sent so far (INFO stats, all its clients)."""
    info = client.info("stats")  # type: ignore[attr-defined]
    return int(info["total_net_input_bytes"]), int(info["total_net_output_bytes"])


def _evalsha_calls(client: object) -> int:
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def main() -> None:
    global ENGINE, HEAP
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("JOURNEYMAP_REDIS__URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--sim", type=int, default=0, metavar="CUSTOMERS",
                        help="resolve the events of a simulation of this many customers")
    parser.add_argument("--fingerprint", action="store_true",
                        help="only print the hash of every output (see the module doc)")
    parser.add_argument("--fingerprint-redis", action="store_true",
                        help="the same, resolving on the Redis store at --redis-url (the hashes "
                             "must equal the in-memory ones)")
    parser.add_argument(
        "--workers", type=int, default=0,
        help="also run this many worker processes on interleaved slices of the events at once",
    )
    parser.add_argument(
        "--engine", choices=("auto", "python", "native"), default=ENGINE,
        help="identity.engine of the resolver on the Redis store for --fingerprint-redis and "
             "--workers (default: JOURNEYMAP_IDENTITY__ENGINE, else auto); the Redis timing runs "
             "both engines when the native core is installed",
    )
    parser.add_argument(
        "--redis-engines", default="python,native",
        help="the engines the Redis timing runs, in this order (native only when installed)",
    )
    parser.add_argument(
        "--no-freeze", action="store_true",
        help="time each batch under CPython's default collector instead of the replay's and the "
             "worker's (paused during a batch, what it left alive frozen after it)",
    )
    args = parser.parse_args()
    ENGINE = args.engine
    if args.no_freeze:
        HEAP = None
    if args.workers:
        bench_several(args.events, args.batch, args.redis_url, args.workers)
        return
    if args.fingerprint or args.fingerprint_redis:
        fingerprint(args.redis_url if args.fingerprint_redis else None)
        return

    def fresh_events() -> list[TouchpointEvent]:  # ts_ms is cached per event: a cold start
        return sim_events(args.sim) if args.sim else make_events(args.events)

    events = fresh_events()
    # The events are built up front; keep the collector from re-scanning them in every batch
    # (a worker holds one batch at a time, not the whole stream).
    gc.collect()
    gc.freeze()
    seen, in_batch = repeat_share(events, args.batch)
    source = f"simulation of {args.sim} customers" if args.sim else "synthetic"
    print(f"{len(events)} events ({source}), batches of {args.batch}; identity combination seen "
          f"before: {seen:.1%} of events "
          f"({in_batch:.1%} earlier in the same batch)")
    # Each engine on fresh events (a cold start), the Python one first (the events above).
    mem_engines = ["python", "native"] if NATIVE_AVAILABLE else ["python"]
    mem = {e: bench_memory(events if e == "python" else fresh_events(), args.batch, engine=e)
           for e in mem_engines}
    plain = bench_plain_union_find(fresh_events(), args.batch)
    for engine, rate in mem.items():
        print(f"in-memory resolver, {engine + ':':7s} {rate:>10,.0f} events/s   (first pass; "
              "target >= 300,000)")
    print(f"bare union-find baseline:  {plain:>10,.0f} events/s   (same events, same run)")
    for engine, rate in mem.items():
        print(f"ratio {engine} / baseline:  {rate / plain:>10.2f}")
    for engine in mem_engines:
        again = bench_memory(fresh_events(), args.batch, passes=2, engine=engine)
        print(f"in-memory, {engine}, second pass: {again:>10,.0f} events/s   (the same events "
              "again: every identifier known)")
    if args.no_redis:
        return
    # Each engine on fresh events (a cold start: `ts_ms` not yet cached), then the baseline.
    engines = [e for e in args.redis_engines.split(",") if e != "native" or NATIVE_AVAILABLE]
    rates: dict[str, float] = {}
    customers: dict[str, int] = {}
    hget = 0.0
    for i, engine in enumerate(engines):
        fresh = fresh_events()
        gc.collect()
        gc.freeze()
        last = i == len(engines) - 1
        rates[engine], rate, customers[engine] = bench_redis(fresh, args.batch, args.redis_url,
                                                             engine, hget=last)
        hget = rate if last else hget
    for engine, red in rates.items():
        print(f"Redis resolver, {engine + ':':7s}   {red:>10,.0f} events/s   (1 worker; target "
              ">= 50,000)")
    print(f"pipelined HGET baseline:   {hget:>10,.0f} events/s   (same keys, same run)")
    for engine, red in rates.items():
        print(f"ratio {engine} / HGET:       {red / hget:>10.2f}      (target >= 0.4)")
    print(f"customers: {customers}" + ("" if len(set(customers.values())) == 1 else "  DIFFER"))


if __name__ == "__main__":
    main()

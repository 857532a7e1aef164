"""The Redis identity store against a real Redis: concurrent workers and an outage.

Needs a Redis at JOURNEYMAP_REDIS__URL (default redis://127.0.0.1:6379/0); the outage test starts
its own redis-server (skipped when the binary is missing). Each test uses its own key prefix.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from processors.config import IdentityConfig
from processors.errors import ConfigError
from processors.events import TouchpointEvent
from processors.identity import KIND_CODE, IdentityResolver, InMemoryIdentityStore
from sinks.identity_redis import RedisIdentityStore, RetryPolicy
from streams.settings import load_settings
from tests.native_cores import identity_engine, resolver_on

# Every test runs once per identity engine deciding on the Redis store (python, native).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180),
              pytest.mark.usefixtures(identity_engine.__name__)]

REDIS_URL = os.environ.get("JOURNEYMAP_REDIS__URL", "redis://127.0.0.1:6379/0")
SALT = "integration-salt"
T0_MS = 1_772_323_200_000
CONFIG = IdentityConfig()


def _landing(i: int, at_ms: int, ids: dict[str, str]) -> TouchpointEvent:
    """Event `ev-{i}`: a web landing page at `at_ms` carrying `ids`."""
    return TouchpointEvent.model_validate(
        {"event_id": f"ev-{i}", "occurred_at": at_ms, "channel": "web",
         "touchpoint": "landing_page", "identities": ids}
    )


def stream(n: int, seed: int) -> list[TouchpointEvent]:
    """Customers with cookies, a device and occasional logins; no identifier is shared."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = rng.randrange(n // 8)
        ids = {"anonymous_id": f"cookie-{c}-{rng.randrange(3)}"}
        r = rng.random()
        if r < 0.3:
            ids["device_id"] = f"device-{c}"
        elif r < 0.45:
            ids["user_id"] = f"user-{c}"
        elif r < 0.5:
            ids["email"] = f"c{c}@example.com"
        out.append(_landing(i, T0_MS + rng.randrange(3_600_000), ids))
    return out


@pytest.fixture
def prefix() -> Iterator[str]:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL} (set JOURNEYMAP_REDIS__URL)")
    name = f"test:identity:{uuid.uuid4().hex[:12]}"
    yield name
    RedisIdentityStore(REDIS_URL, prefix=name).clear()


def _worker(
    prefix: str, n: int, seed: int, part: int, batch: int, out: mp.Queue, start: object,
    engine: str,
) -> None:
    events = stream(n, seed)[part::2]
    store = RedisIdentityStore(REDIS_URL, prefix=prefix)
    resolver = resolver_on(CONFIG, SALT, store, engine)
    start.wait()  # type: ignore[attr-defined]  # both workers resolve at the same time
    merges, resolved, retries = [], [], 0
    for i in range(0, len(events), batch):
        result = resolver.resolve_batch(events[i : i + batch])
        merges.append([tuple(m) for m in result.merges])
        resolved.append([(e.event.event_id, e.customer_id) for e in result.resolved])
        retries += result.n_attempts - 1
    out.put((part, merges, resolved, retries))


def test_two_worker_processes_end_with_exactly_the_in_memory_answer(
    prefix: str, identity_engine: str
) -> None:
    n, seed = 6_000, 11
    memory = IdentityResolver(CONFIG, SALT)
    result = memory.resolve_batch(stream(n, seed))
    assert not result.conflicts  # the stream shares no identifier: no safeguard may fire
    expected = {e.event.event_id: e.customer_id for e in result.resolved}

    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    start = ctx.Barrier(2)
    workers = [
        ctx.Process(target=_worker,
                    args=(prefix, n, seed, part, 20, queue, start, identity_engine))
        for part in (0, 1)
    ]
    for w in workers:
        w.start()
    reports = [queue.get(timeout=150) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0

    store = RedisIdentityStore(REDIS_URL, prefix=prefix)
    assert isinstance(memory.store, InMemoryIdentityStore)
    assert store.partition() == memory.store.graph.partition()

    # Every event was resolved once, by one of the workers; replaying the whole stream on the
    # shared graph changes nothing and resolves every event to its in-memory customer.
    seen = [event_id for _, _, resolved, _ in reports for b in resolved for event_id, _ in b]
    assert sorted(seen) == sorted(expected)
    final = resolver_on(CONFIG, SALT, store)
    again = final.resolve_batch(stream(n, seed))
    assert {e.event.event_id: e.customer_id for e in again.resolved} == expected
    assert again.merges == [] and again.links == []
    print("commit retries per worker:", [r[3] for r in reports])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(data),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_redis_down_for_a_while_waits_retries_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    proc = _start_redis(port, tmp_path)
    try:
        events = stream(2_000, 5)
        first, second = events[:1_000], events[1_000:]
        store = RedisIdentityStore(
            f"redis://127.0.0.1:{port}/0",
            prefix="outage",
            retry=RetryPolicy(initial_s=0.05, max_backoff_s=0.4, max_wait_s=60),
        )
        resolver = resolver_on(CONFIG, SALT, store)
        resolver.resolve_batch(first)

        proc.terminate()
        proc.wait(timeout=10)
        outcome: dict[str, object] = {}

        def resolve() -> None:
            outcome["result"] = resolver.resolve_batch(second)

        with caplog.at_level(logging.WARNING, logger="journeymap.identity"):
            thread = threading.Thread(target=resolve)
            thread.start()
            time.sleep(1.5)
            assert thread.is_alive(), "resolve_batch must wait while Redis is down"
            proc = _start_redis(port, tmp_path)
            thread.join(timeout=60)
        assert not thread.is_alive()
        assert "result" in outcome
        assert any("waiting for Redis" in r.getMessage() for r in caplog.records)
        assert any("is back" in r.getMessage() for r in caplog.records)

        memory = IdentityResolver(CONFIG, SALT)
        memory.resolve_batch(first)
        memory.resolve_batch(second)
        assert isinstance(memory.store, InMemoryIdentityStore)
        assert store.partition() == memory.store.graph.partition()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_retry_gives_up_after_max_wait_with_a_clear_error() -> None:
    from processors.errors import ServiceUnavailable

    port = _free_port()  # nothing listens here
    store = RedisIdentityStore(
        f"redis://127.0.0.1:{port}/0",
        prefix="nowhere",
        retry=RetryPolicy(initial_s=0.05, max_backoff_s=0.1, max_wait_s=0.5),
    )
    resolver = resolver_on(CONFIG, SALT, store)
    with pytest.raises(ServiceUnavailable, match="nothing was committed"):
        resolver.resolve_batch(stream(16, 1))


# -- two workers against a Redis that loses its state -----------------------------------------
# Two workers resolve interleaved batches full of merges; then Redis forgets writes behind their
# backs: a flush, a restart that kept only an older state (writes lost after their commit was
# answered), or a clean restart that kept everything. Whatever a worker still holds from before
# (the store's worker cache, where it has one), no later commit may be decided on it: the graph
# Redis ends with, and every output the workers gave that Redis kept, must be the in-memory
# answer over the batches Redis kept.

MERGING = IdentityConfig(unique_kinds=[], max_customers_per_identifier=1_000_000)


def merging_stream(n: int, seed: int) -> list[TouchpointEvent]:
    """Neighbouring customers share devices and emails, and event times jump back and forth,
    so batches merge known customers, rename them by earlier evidence and close cycles."""
    rng = random.Random(seed)
    n_customers = max(4, n // 12)
    out = []
    for i in range(n):
        c = rng.randrange(n_customers)
        ids = {"anonymous_id": f"cookie-{c}-{rng.randrange(3)}"}
        r = rng.random()
        if r < 0.25:
            ids["device_id"] = f"device-{(c + rng.randrange(2)) // 2}"
        elif r < 0.4:
            ids["email"] = f"c{(c + rng.randrange(3)) // 3}@example.com"
        elif r < 0.5:
            ids["user_id"] = f"user-{c}"
        out.append(_landing(i, T0_MS + rng.randrange(3_600_000), ids))
    return out


class _Followed:
    """What downstream sees: outputs named by the customer of their batch, renamed by every
    merge record in the order the commits made them."""

    def __init__(self) -> None:
        self.name: dict[str, str] = {}
        self.links: list[tuple[str, str, str]] = []  # kind, id hash, customer when emitted
        self.events: list[tuple[TouchpointEvent, str]] = []

    def add(self, result: object) -> None:
        for mr in result.merges:  # type: ignore[attr-defined]
            for cid, now in self.name.items():
                if now == mr.loser:
                    self.name[cid] = mr.winner
            self.name.setdefault(mr.loser, mr.winner)
        for link in result.links:  # type: ignore[attr-defined]
            self.links.append((link.kind, link.id_hash, link.customer_id))
            self.name.setdefault(link.customer_id, link.customer_id)
        for rev in result.resolved:  # type: ignore[attr-defined]
            self.events.append((rev.event, rev.customer_id))
            self.name.setdefault(rev.customer_id, rev.customer_id)

    def final(self, cid: str) -> str:
        return self.name.get(cid, cid)


def _snapshot(client: redis.Redis, prefix: str) -> dict[str, bytes]:
    return {k: client.dump(k) for k in client.scan_iter(match=f"{prefix}:*", count=1000)}


def _forget(client: redis.Redis, prefix: str) -> None:
    for k in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
        client.delete(k)


@pytest.mark.parametrize("loss", ["flush", "lost-writes", "restart"])
def test_two_workers_after_redis_forgot_give_the_in_memory_answer(
    prefix: str, loss: str, tmp_path: Path
) -> None:
    events = merging_stream(3_000, 17)
    batches = [events[i : i + 25] for i in range(0, len(events), 25)]
    phases = [batches[:40], batches[40:80], batches[80:]]
    server = None
    url = REDIS_URL
    if loss == "restart":
        if shutil.which("redis-server") is None:
            pytest.skip("needs the redis-server binary")
        port = _free_port()
        server = _start_redis(port, tmp_path)
        url = f"redis://127.0.0.1:{port}/0"
    try:
        stores = [RedisIdentityStore(url, prefix=prefix) for _ in range(2)]
        workers = [resolver_on(MERGING, SALT, s) for s in stores]
        raw = redis.Redis.from_url(url)
        outputs: list[list[object]] = [[], [], []]
        rng = random.Random(5)

        def run(phase: int) -> None:
            for batch in phases[phase]:
                outputs[phase].append(workers[rng.randrange(2)].resolve_batch(batch))

        run(0)
        kept = _snapshot(raw, prefix)
        run(1)
        resets: list[int] = []
        for s in stores:  # a worker cache dropped because Redis no longer held what it held
            if hasattr(s, "_drop"):
                s._drop = (lambda drop: lambda: resets.append(1) or drop())(s._drop)  # type: ignore[method-assign]
        if loss == "flush":
            _forget(raw, prefix)
            survived = [2]
        elif loss == "lost-writes":  # Redis came back with the state after phase 0 only
            _forget(raw, prefix)
            for key, value in kept.items():
                raw.restore(key, 0, value)
            survived = [0, 2]
        else:  # SIGTERM: the append-only file has every answered write
            assert server is not None
            server.terminate()
            server.wait(timeout=30)
            server = _start_redis(port, tmp_path)
            survived = [0, 1, 2]
        run(2)
        if loss != "restart" and hasattr(stores[0], "_drop"):
            assert resets  # the warm caches were used after the loss, and caught

        memory = IdentityResolver(MERGING, SALT)
        followed = _Followed()
        for phase in survived:
            for batch, result in zip(phases[phase], outputs[phase], strict=True):
                memory.resolve_batch(batch)
                followed.add(result)
        assert not any(r.conflicts for p in survived for r in outputs[p])  # type: ignore[attr-defined]
        assert isinstance(memory.store, InMemoryIdentityStore)
        assert stores[0].partition() == memory.store.graph.partition()

        # Every identifier a worker linked, and every event it resolved, ends (following the
        # merge records) with the customer the in-memory answer gives it: none under two.
        graph = memory.store.graph
        finals: dict[tuple[str, str], set[str]] = {}
        for kind, id_hash, cid in followed.links:
            finals.setdefault((kind, id_hash), set()).add(followed.final(cid))
        assert finals
        for (kind, id_hash), ends in finals.items():
            assert ends == {graph.cid[KIND_CODE[kind] + id_hash]}, (kind, id_hash, ends)
        for event, cid in followed.events:
            kind, value = next((k, v) for k, v in event.identities.items() if v)
            assert followed.final(cid) == memory.customer_of(kind, value), event.event_id
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


# -- the worker's cache (sinks/identity_redis.py: what a stale entry can and cannot do) ---------


def _event(event_id: str, at_s: int, **ids: str) -> TouchpointEvent:
    return _landing(0, T0_MS + at_s * 1000, ids).model_copy(update={"event_id": event_id})


def _records(store: RedisIdentityStore) -> dict[str, list[object]]:
    """Every customer record in Redis without its token: [earliest_ts, earliest_key, uniq, size]."""
    raw = store.client.hgetall(f"{store.prefix}:r")
    return {cid: orjson.loads(value)[:4] for cid, value in raw.items()}  # type: ignore[union-attr]


def _assert_same_graph(store: RedisIdentityStore, memory: IdentityResolver) -> None:
    """Redis holds the in-memory graph: the same partition and the same customer records."""
    assert isinstance(memory.store, InMemoryIdentityStore)
    graph = memory.store.graph
    assert store.partition() == graph.partition()
    assert _records(store) == {
        cid: [r.earliest_ts, r.earliest_key, r.uniq, r.size] for cid, r in graph.roots.items()
    }


def _same_outputs(got: object, want: object) -> None:
    assert [(e.event.event_id, e.customer_id) for e in got.resolved] == [  # type: ignore[attr-defined]
        (e.event.event_id, e.customer_id) for e in want.resolved  # type: ignore[attr-defined]
    ]
    assert got.merges == want.merges  # type: ignore[attr-defined]
    assert got.links == want.links  # type: ignore[attr-defined]
    assert got.conflicts == want.conflicts  # type: ignore[attr-defined]


def test_a_warm_cache_reads_once_and_gives_the_in_memory_answer(prefix: str) -> None:
    events = merging_stream(3_000, 23)
    batches = [events[i : i + 100] for i in range(0, len(events), 100)]
    store = RedisIdentityStore(REDIS_URL, prefix=prefix)
    resolver = resolver_on(MERGING, SALT, store)
    memory = IdentityResolver(MERGING, SALT)
    for batch in batches:
        _same_outputs(resolver.resolve_batch(batch), memory.resolve_batch(batch))
    # The first batch reads (the cache is empty) and finds none of its identifiers, so every
    # later batch is one commit: its new identifiers and the customers it used are checked
    # there (by the chain: nothing else wrote the graph since this worker's last commit).
    assert store.n_reads == 1
    assert store.n_conflicting_commits == 0 and store.n_cache_drops == 0
    _assert_same_graph(store, memory)


def test_a_merge_that_changes_no_node_state_still_rewrites_the_winner_record(prefix: str) -> None:
    """Two customers known by unique kinds only (no link count is charged) merge through an event
    later than both (no first-seen time moves): no node's state changes, but the winner's record
    (size, unique kinds) does, and must be written (the commit compares every move's target)."""
    store = RedisIdentityStore(REDIS_URL, prefix=prefix)
    resolver = resolver_on(CONFIG, SALT, store)
    memory = IdentityResolver(CONFIG, SALT)
    batches = [
        [_event("a", 0, user_id="u1"), _event("b", 10, crm_id="k1")],
        [_event("c", 20, user_id="u1", crm_id="k1")],
    ]
    for batch in batches:
        _same_outputs(resolver.resolve_batch(batch), memory.resolve_batch(batch))
    assert store.n_reads == 1  # the merge was decided on the cache
    _assert_same_graph(store, memory)


def test_with_the_cache_off_every_batch_reads_and_the_answer_is_the_same(prefix: str) -> None:
    """`redis.identity_cache_keys = 0` (the setting the worker passes as `cache_max_keys`)."""
    events = merging_stream(1_000, 29)
    batches = [events[i : i + 100] for i in range(0, len(events), 100)]
    settings = load_settings(redis={"url": REDIS_URL, "identity_cache_keys": 0})
    store = RedisIdentityStore(REDIS_URL, prefix=prefix,
                               cache_max_keys=settings.redis.identity_cache_keys)
    resolver = resolver_on(MERGING, SALT, store)
    memory = IdentityResolver(MERGING, SALT)
    for batch in batches:
        _same_outputs(resolver.resolve_batch(batch), memory.resolve_batch(batch))
    assert store.n_reads == len(batches)
    _assert_same_graph(store, memory)
    with pytest.raises(ConfigError, match="JOURNEYMAP_REDIS__IDENTITY_CACHE_KEYS"):
        load_settings(redis={"identity_cache_keys": -1})


def test_another_worker_merges_and_renames_cached_customers_between_two_batches(
    prefix: str,
) -> None:
    ev = {
        # worker one caches two customers, and customer c_E (named after its email) through
        # its member dev-k only
        "a": _event("a", 10, anonymous_id="cookie-a"),
        "b": _event("b", 20, anonymous_id="cookie-b"),
        "e": _event("e", 12, email="e@example.com"),
        "ek": _event("ek", 13, email="e@example.com", device_id="dev-k"),
        "k": _event("k", 30, device_id="dev-k"),
        "g": _event("g", 14, anonymous_id="cookie-g"),
        # worker two links a and b through a device, renames the result by earlier evidence,
        # and merges c_E away into an earlier customer
        "ab": _event("ab", 30, anonymous_id="cookie-b", device_id="dev"),
        "ba": _event("ba", 40, anonymous_id="cookie-a", device_id="dev"),
        "early": _event("early", 5, device_id="dev"),
        "f": _event("f", 3, anonymous_id="cookie-f"),
        "fe": _event("fe", 50, anonymous_id="cookie-f", email="e@example.com"),
        # then worker one sees the cached identifiers again, and c_E's earliest identifier
        # (which it never cached) with evidence earlier than anything: a rename to c_E's name
        "b2": _event("b2", 60, anonymous_id="cookie-b"),
        "k2": _event("k2", 61, device_id="dev-k"),
        "e0": _event("e0", 1, email="e@example.com"),
        "g2": _event("g2", 70, anonymous_id="cookie-g"),
    }
    # Worker one's batch "g2" reads a customer worker two did not change, so it commits and
    # keeps its cache, stale c_E included; then "e0" reads the email and renames c_F to c_E's
    # name, which only the check of the cached customer named after a batch's identifier
    # catches.
    plan = [("two", ["e", "g"]), ("two", ["ek"]), ("one", ["a", "b", "k"]), ("two", ["ab"]),
            ("two", ["ba", "early", "f"]), ("two", ["fe"]), ("one", ["g2"]), ("one", ["e0"]),
            ("one", ["b2"]), ("one", ["k2"]), ("one", ["a", "b2", "k2", "e0"])]
    stores = {name: RedisIdentityStore(REDIS_URL, prefix=prefix) for name in ("one", "two")}
    workers = {name: resolver_on(MERGING, SALT, s) for name, s in stores.items()}
    memory = IdentityResolver(MERGING, SALT)
    for name, ids in plan:
        batch = [ev[i] for i in ids]
        _same_outputs(workers[name].resolve_batch(batch), memory.resolve_batch(batch))
    # Worker one found its cached customers changed (by a read's or a commit's check) and
    # dropped its cache.
    assert stores["one"].n_cache_drops >= 1
    _assert_same_graph(stores["one"], memory)


def test_the_cache_is_not_used_after_a_failed_commit(prefix: str) -> None:
    store = RedisIdentityStore(REDIS_URL, prefix=prefix)
    other = resolver_on(MERGING, SALT, RedisIdentityStore(REDIS_URL, prefix=prefix))
    resolver = resolver_on(MERGING, SALT, store)
    memory = IdentityResolver(MERGING, SALT)
    first = [_event("a", 10, anonymous_id="cookie-a", device_id="dev")]
    _same_outputs(resolver.resolve_batch(first), memory.resolve_batch(first))
    # Another worker changes the cached customer: the next commit fails, the cache is dropped
    # and the batch is read afresh (a second read), not decided again on the cache.
    link = [_event("b", 5, anonymous_id="cookie-b", device_id="dev")]
    _same_outputs(other.resolve_batch(link), memory.resolve_batch(link))
    reads = store.n_reads
    again = [_event("c", 20, anonymous_id="cookie-a", email="a@example.com")]
    result = resolver.resolve_batch(again)
    _same_outputs(result, memory.resolve_batch(again))
    assert result.n_attempts == 2 and store.n_conflicting_commits == 1
    assert store.n_reads == reads + 1 and store.n_cache_drops == 1
    _assert_same_graph(store, memory)


def test_the_cache_is_not_used_after_a_commit_that_gave_up(prefix: str) -> None:
    from processors.errors import ServiceUnavailable

    store = RedisIdentityStore(
        REDIS_URL, prefix=prefix, retry=RetryPolicy(initial_s=0.01, max_wait_s=0.05)
    )
    resolver = resolver_on(MERGING, SALT, store)
    resolver.resolve_batch([_event("a", 10, anonymous_id="cookie-a")])
    link = [_event("ab", 20, anonymous_id="cookie-a", device_id="dev")]
    commit = store._commit

    def down(**kw: object) -> object:
        raise redis.ConnectionError("Redis went away (test)")

    store._commit = down  # type: ignore[assignment]
    with pytest.raises(ServiceUnavailable):
        resolver.resolve_batch(link)
    store._commit = commit  # type: ignore[method-assign]
    # The link was decided in the cache but never committed: it must be decided and written
    # again, on a fresh read, not taken as done.
    reads = store.n_reads
    again = resolver.resolve_batch(link)
    assert store.n_reads == reads + 1
    assert [(x.kind, x.first_seen_ms) for x in again.links] == [("device_id", T0_MS + 20_000)]
    assert resolver.customer_of("device_id", "dev") == again.resolved[0].customer_id
    memory = IdentityResolver(MERGING, SALT)
    memory.resolve_batch([_event("a", 10, anonymous_id="cookie-a")])
    memory.resolve_batch(link)
    _assert_same_graph(store, memory)


def test_the_cache_is_not_used_after_a_retried_commit(prefix: str) -> None:
    """A commit applied whose reply was lost is sent again with the same token (answer 2:
    applied before). Redis may have restarted in between: the cache is dropped all the same."""
    store = RedisIdentityStore(REDIS_URL, prefix=prefix, retry=RetryPolicy(initial_s=0.01))
    resolver = resolver_on(MERGING, SALT, store)
    memory = IdentityResolver(MERGING, SALT)
    first = [_event("a", 10, anonymous_id="cookie-a", device_id="dev")]
    _same_outputs(resolver.resolve_batch(first), memory.resolve_batch(first))
    commit = store._commit
    lost: list[list[int]] = []

    def reply_lost(**kw: object) -> object:
        status = commit(**kw)
        if not lost:
            lost.append(status)
            raise redis.ConnectionError("the reply was lost (test)")
        return status

    store._commit = reply_lost  # type: ignore[assignment]
    link = [_event("b", 20, anonymous_id="cookie-b", device_id="dev")]
    _same_outputs(resolver.resolve_batch(link), memory.resolve_batch(link))
    store._commit = commit  # type: ignore[method-assign]
    assert [status for status, _ in lost] == [4] and store.n_cache_drops == 1
    reads = store.n_reads
    later = [_event("c", 30, anonymous_id="cookie-b", email="b@example.com")]
    _same_outputs(resolver.resolve_batch(later), memory.resolve_batch(later))
    assert store.n_reads == reads + 1  # read afresh
    _assert_same_graph(store, memory)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
@pytest.mark.parametrize("loss", ["flushall", "restart-without-persistence"])
def test_a_warm_cache_cannot_bring_back_what_redis_lost(loss: str, tmp_path: Path) -> None:
    port = _free_port()
    proc = _start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        store = RedisIdentityStore(url, prefix="warm", retry=RetryPolicy(initial_s=0.05))
        resolver = resolver_on(MERGING, SALT, store)
        # Warm: two customers merged through a device; c_A is cached with all its members.
        before = [_event("a", 10, anonymous_id="cookie-a", device_id="dev"),
                  _event("b", 20, anonymous_id="cookie-b", device_id="dev"),
                  _event("u", 30, anonymous_id="cookie-b", user_id="user-1")]
        resolver.resolve_batch(before)
        resolver.resolve_batch([_event("a2", 40, anonymous_id="cookie-a")])
        if loss == "flushall":
            redis.Redis.from_url(url).flushall()
        else:  # a restart that kept nothing: the append-only file removed with the server down
            proc.terminate()
            proc.wait(timeout=10)
            for f in tmp_path.rglob("*.aof*"):
                if f.is_file():
                    f.unlink()
            proc = _start_redis(port, tmp_path)
        # The same identifiers again, one of them with a new link: Redis knows none of them, so
        # the answers are those of a resolver that never saw the events before the loss.
        after = [_event("b2", 50, anonymous_id="cookie-b"),
                 _event("d2", 55, device_id="dev", email="d@example.com"),
                 _event("a3", 60, anonymous_id="cookie-a", device_id="dev")]
        memory = IdentityResolver(MERGING, SALT)
        for batch in ([after[0]], after[1:]):
            _same_outputs(resolver.resolve_batch(batch), memory.resolve_batch(batch))
        assert store.n_cache_drops >= 1
        _assert_same_graph(store, memory)
        assert resolver.customer_of("user_id", "user-1") is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)

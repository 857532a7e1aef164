"""The native core decides on the Redis store exactly as the Python resolver does.

Each scenario runs twice on a real Redis, under two fresh key prefixes: once with Python
resolvers, once with native ones (``identity.engine = native``: the core holds the store's
worker cache), on the same batches in the same schedule. Every output of every call (resolved
customer per event, merges with their commit order `seq`, conflicts, links, dead letters,
counters with the retries) and everything Redis ends with (nodes, customer records without their
tokens, member sets, the merge outbox) must be equal. Two stores share one prefix (two workers):
one worker's batches find their cache stale after the other's commits, and the other worker
commits in the middle of a batch (between its decision and its commit) so that the commit fails
and the batch is decided again; a third writer changes cached customers behind both caches.

Needs a Redis at JOURNEYMAP_REDIS__URL and the native module (tests/native_cores.require_native).
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from processors import identity_native
from processors.config import IdentityConfig
from processors.events import TouchpointEvent
from processors.identity import IdentityResolver, ResolveResult
from sinks.identity_redis import RedisIdentityStore
from tests.factories import T0_MS
from tests.native_cores import require_native, resolver_on

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REDIS_URL = os.environ.get("JOURNEYMAP_REDIS__URL", "redis://127.0.0.1:6379/0")
SALT = "engines-salt"
CONFIGS = {
    "default": IdentityConfig(),
    "cap2": IdentityConfig(max_customers_per_identifier=2),
    "merging": IdentityConfig(unique_kinds=[], max_customers_per_identifier=1_000_000),
}


@pytest.fixture
def prefixes() -> Iterator[Callable[[], str]]:
    """`make()` -> a fresh key prefix, cleared after the test."""
    require_native(identity_native.NATIVE_AVAILABLE, identity_native.NATIVE_IMPORT_ERROR,
                   "identity", "`pip install ./native/identity`")
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL} (set JOURNEYMAP_REDIS__URL)")
    made: list[str] = []

    def make() -> str:
        made.append(f"test:engines:{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield make
    for p in made:
        RedisIdentityStore(REDIS_URL, prefix=p).clear()


def tangled(n: int, seed: int) -> list[TouchpointEvent]:
    """Identifiers from small shared pools at times that jump back and forth: merges, renames by
    earlier evidence, unique-kind conflicts, saturated identifiers, placeholders, dead events."""
    rng = random.Random(seed)
    pools = {"anonymous_id": max(2, n // 3), "device_id": max(2, n // 8),
             "user_id": max(2, n // 12), "email": max(2, n // 10), "crm_id": max(2, n // 15)}
    out = []
    for i in range(n):
        kinds = rng.sample(list(pools), rng.choice((1, 1, 2, 2, 3)))
        ids = {k: "null" if rng.random() < 0.03 else f"{k[0]}{rng.randrange(pools[k])}"
               for k in kinds}
        out.append(TouchpointEvent.model_validate({
            "event_id": f"t-{i}", "occurred_at": T0_MS + rng.randrange(n * 20_000),
            "channel": "web", "touchpoint": "landing_page", "identities": ids}))
    return out


def _outputs(r: ResolveResult) -> tuple[Any, ...]:
    """Every output of a call but the commit id (a random token)."""
    return ([(e.event.event_id, e.customer_id, e.ts_ms) for e in r.resolved], r.merges,
            r.conflicts, r.links, [(ev.event_id, why) for ev, why in r.dead],
            sorted(r.counters().items()))


def _in_redis(prefix: str) -> tuple[Any, ...]:
    """What Redis holds under `prefix`: nodes, records to the byte without their token (the
    stored format), member sets, the merge outbox without commit times and owners."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    nodes = client.hgetall(f"{prefix}:n")
    records = {}
    for c, v in client.hgetall(f"{prefix}:r").items():
        assert re.fullmatch(r'[0-9a-f]{32}"\]', v[-34:]), v  # ends with the commit's token
        records[c] = v[:-34]
    members = {c: sorted(client.smembers(f"{prefix}:m:{c}")) for c in records}
    outbox = {}
    for field, value in client.hgetall(f"{prefix}:mo").items():
        seq, _, body = value.partition(" ")
        d = orjson.loads(body)
        del d["committed_ms"], d["owner"]
        outbox[field] = (int(seq), d)
    return nodes, records, members, outbox


class _Meddling:
    """Wraps a store's commit: before the commits numbered in `at` (counting from 1), `then()`
    runs (another worker commits between this batch's decision and its commit)."""

    def __init__(self, store: RedisIdentityStore, at: set[int], then: Callable[[], None]) -> None:
        self.n = 0
        self.at, self.then, self.commit = at, then, store.commit
        store.commit = self  # type: ignore[method-assign]

    def __call__(self, graph: Any) -> bool:
        self.n += 1
        if self.n in self.at:
            self.then()
        return self.commit(graph)  # type: ignore[no-any-return]


def run_scenario(engine: str, prefix: str, config: IdentityConfig, events: list[TouchpointEvent],
                 size: int, seed: int, cache_max_keys: int, key_cap: int
                 ) -> tuple[list[Any], Any, int]:
    """Two workers (stores on one prefix) and a third writer resolve `events` in batches of
    `size` on a schedule drawn from `seed`; returns every call's outputs, what Redis holds, and
    how many commits failed. `key_cap`: the native cores' bound on interned keys."""
    rng = random.Random(seed)
    stores = [RedisIdentityStore(REDIS_URL, prefix=prefix, cache_max_keys=cache_max_keys)
              for _ in range(2)]
    workers: list[IdentityResolver] = [resolver_on(config, SALT, s, engine) for s in stores]
    third = resolver_on(config, SALT, RedisIdentityStore(REDIS_URL, prefix=prefix), engine)
    assert all(identity_native.engine_of(w) == engine for w in [*workers, third])
    for w in [*workers, third]:
        if isinstance(w, identity_native.NativeIdentityResolver):
            w.key_cap = key_cap
    batches = [events[i:i + size] for i in range(0, len(events), size)]
    outputs: list[Any] = []
    # Worker 1 commits in the middle of some of worker 0's batches (its commit then fails):
    # a batch of its own, or the very batch worker 0 is committing.
    pending = list(reversed(batches[len(batches) // 2:]))
    own = batches[: len(batches) // 2]
    current: list[list[TouchpointEvent]] = [[]]

    def meddle() -> None:
        batch = current[0] if rng.random() < 0.5 or not pending else pending.pop()
        outputs.append(("meddle", _outputs(workers[1].resolve_batch(batch))))

    _Meddling(stores[0], set(range(2, 2 * len(batches), 2)), meddle)  # every other commit
    for batch in own:
        who = rng.choice((0, 0, 1, 2))
        if who == 2 and rng.random() < 0.5:  # an old batch again: known identifiers
            batch = batches[rng.randrange(len(batches))]
        current[0] = batch
        outputs.append((who, _outputs([*workers, third][who].resolve_batch(batch))))
    while pending:
        outputs.append((1, _outputs(workers[1].resolve_batch(pending.pop()))))
    outputs.append(("again", _outputs(workers[0].resolve_batch(events))))
    return outputs, _in_redis(prefix), sum(s.n_conflicting_commits for s in stores)


@pytest.mark.parametrize(("config", "seed", "size", "cache_max_keys", "key_cap"), [
    ("default", 1, 40, 250_000, 2_000_000),
    ("default", 2, 7, 250_000, 2_000_000),
    ("cap2", 3, 25, 250_000, 2_000_000),
    ("cap2", 4, 60, 300, 2_000_000),  # a cache that fills up and starts over
    ("merging", 5, 30, 250_000, 2_000_000),
    ("merging", 6, 30, 0, 2_000_000),  # no cache: every batch reads everything
    ("default", 7, 30, 250_000, 150),  # the cores forget their keys and combinations
])
def test_the_native_engine_on_redis_gives_the_python_engines_outputs(
    prefixes: Callable[[], str], config: str, seed: int, size: int, cache_max_keys: int,
    key_cap: int,
) -> None:
    events = tangled(600, seed)
    args = (CONFIGS[config], events, size, seed, cache_max_keys, key_cap)
    want, want_redis, want_failed = run_scenario("python", prefixes(), *args)
    got, got_redis, got_failed = run_scenario("native", prefixes(), *args)
    assert want_failed > 0  # the scenario did make commits fail and batches retry
    assert sum(o[1][5][-1][1] for o in want if o[0] != "meddle") > 0  # (n_retries)
    assert (got_failed, len(got)) == (want_failed, len(want))
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"call {i} differs"
    assert got_redis == want_redis

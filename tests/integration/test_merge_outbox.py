"""The merge outbox: a merge committed to the Redis identity graph survives a crash before the
worker produced it (issue 6). Real Redis; each test uses its own key prefix."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest

from processors.config import IdentityConfig
from processors.identity import MergeRecord
from sinks.identity_redis import RedisIdentityStore
from tests.factories import MIN_MS, T0_MS, event
from tests.native_cores import identity_engine, resolver_on

# Every test runs once per identity engine deciding on the Redis store (python, native).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60),
              pytest.mark.usefixtures(identity_engine.__name__)]

REDIS_URL = os.environ.get("JOURNEYMAP_REDIS__URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def store() -> Iterator[RedisIdentityStore]:
    s = RedisIdentityStore(REDIS_URL, prefix=f"jm:test:outbox:{uuid.uuid4().hex[:8]}")
    try:
        yield s
    finally:
        s.clear()


def _two_customers_then_the_link() -> tuple[list, list]:
    first = [event(at_ms=T0_MS, event_id="a", anonymous_id="cookie-a"),
             event(at_ms=T0_MS + MIN_MS, event_id="b", anonymous_id="cookie-b")]
    link = [event(at_ms=T0_MS + 2 * MIN_MS, event_id="ab", anonymous_id="cookie-b",
                  device_id="dev-1"),
            event(at_ms=T0_MS + 3 * MIN_MS, event_id="ba", anonymous_id="cookie-a",
                  device_id="dev-1")]
    return first, link


def test_a_merge_stays_in_the_outbox_until_acknowledged(store: RedisIdentityStore) -> None:
    resolver = resolver_on(IdentityConfig(), "salt", store)
    first, link = _two_customers_then_the_link()
    resolver.resolve_batch(first)
    assert store.pending_merges() == []
    merges = resolver.resolve_batch(link).merges
    assert len(merges) == 1
    # The worker "crashes" here: committed, never produced. The batch is redelivered, and the
    # resolver (idempotent) does not report the merge again ...
    again = resolver_on(IdentityConfig(), "salt", store).resolve_batch(link)
    assert again.merges == []
    # ... but the outbox still has it, exactly as the resolver made it.
    assert store.pending_merges() == merges
    assert store.pending_merges(older_than_s=3600) == []  # too recent for a recovery sweep
    store.ack_merges(merges)
    assert store.pending_merges() == []
    store.ack_merges(merges)  # acknowledging twice is harmless


def test_a_batch_without_merges_leaves_the_outbox_alone(store: RedisIdentityStore) -> None:
    resolver = resolver_on(IdentityConfig(), "salt", store)
    first, _ = _two_customers_then_the_link()
    assert resolver.resolve_batch(first).merges == []
    assert store.client.exists(f"{store.prefix}:mo") == 0


def test_pending_merges_come_in_commit_order(store: RedisIdentityStore) -> None:
    # A merge cycle: L into W first, then W back into L by an earlier event. Merge time orders
    # them the other way round; re-sent in that order, the partitions would undo the cycle.
    first = MergeRecord("L", "W", "ev-1", T0_MS + 30 * MIN_MS, "shared_identifier")
    then = MergeRecord("W", "L", "ev-2", T0_MS + MIN_MS, "earlier_evidence")
    for committed_ms, mr in [(1_000, first), (2_000, then)]:
        store.client.hset(f"{store.prefix}:mo", f"{mr.loser}|{mr.evidence_event_id}",
                          orjson.dumps({**mr._asdict(), "committed_ms": committed_ms}))
    assert store.pending_merges() == [first, then]


def test_a_live_owners_merges_are_not_recovered_by_others(store: RedisIdentityStore) -> None:
    # Worker A committed the merge and is held up (ClickHouse down): its heartbeat still runs,
    # so a recovery sweep elsewhere leaves the merge to A. Once A's heartbeat lapses it is
    # orphaned and recovered. A merge committed without an owner is always recoverable.
    a = RedisIdentityStore(store.client, store.prefix, owner="host:1:a", alive_ttl_s=1)
    first, link = _two_customers_then_the_link()
    resolver = resolver_on(IdentityConfig(), "salt", a)
    resolver.resolve_batch(first)
    a.heartbeat()
    merges = resolver.resolve_batch(link).merges
    assert len(merges) == 1
    assert store.pending_merges(orphaned=True) == []
    assert store.pending_merges() == merges  # not asked about owners: everything pending
    deadline = time.monotonic() + 5
    while store.pending_merges(orphaned=True) == [] and time.monotonic() < deadline:
        time.sleep(0.2)  # the heartbeat's TTL runs out
    assert store.pending_merges(orphaned=True) == merges
    ownerless = MergeRecord("L", "W", "ev-1", T0_MS, "shared_identifier")
    store.client.hset(f"{store.prefix}:mo", "L|ev-1",
                      orjson.dumps({**ownerless._asdict(), "committed_ms": 1_000}))
    assert store.pending_merges(orphaned=True) == [ownerless, *merges]


def test_the_outbox_numbers_merges_in_commit_order_across_workers(store: RedisIdentityStore
                                                                   ) -> None:
    # Two workers on one graph: worker A merges L into W, then worker B merges W's customer with
    # a third. The commit sequence (kept by Redis, not by the workers' clocks) orders them, so
    # B can send A's still unsent merge before its own (processors.identity.merges_to_send).
    a = RedisIdentityStore(store.client, store.prefix, owner="host:1:a")
    b = RedisIdentityStore(store.client, store.prefix, owner="host:2:b")
    first, link = _two_customers_then_the_link()
    resolver_on(IdentityConfig(), "salt", a).resolve_batch(first)
    by_a = resolver_on(IdentityConfig(), "salt", a).resolve_batch(link).merges
    by_b = resolver_on(IdentityConfig(), "salt", b).resolve_batch([
        event(at_ms=T0_MS + 4 * MIN_MS, event_id="c", anonymous_id="cookie-c"),
        event(at_ms=T0_MS + 5 * MIN_MS, event_id="cb", anonymous_id="cookie-c",
              device_id="dev-1"),
    ]).merges
    assert len(by_a) == 1 and len(by_b) == 1
    entries = store.outbox()
    assert [e.merge for e in entries] == [*by_a, *by_b]
    assert [e.owner for e in entries] == ["host:1:a", "host:2:b"]
    assert entries[0].seq < entries[1].seq
    # The merges the workers wrote to ClickHouse carry the same numbers (identity_merges keeps
    # the highest per loser, whatever order the two workers' inserts arrive in).
    assert [m.seq for m in by_a + by_b] == [e.seq for e in entries]
    # An entry written before the sequence existed (plain JSON) still reads, ahead of the rest.
    old = MergeRecord("K", "Y", "ev-0", T0_MS, "shared_identifier")
    store.client.hset(f"{store.prefix}:mo", "K|ev-0",
                      orjson.dumps({**old._asdict(), "committed_ms": 1_000}))
    assert [e.merge for e in store.outbox()] == [old, *by_a, *by_b]


def test_a_batchs_links_stay_in_the_outbox_until_their_rows_are_written(
    store: RedisIdentityStore,
) -> None:
    # The worker dies after the identity commit, before the identity_links rows are written.
    # The batch is redelivered and resolved again: its identifiers are known, so it reports no
    # links. The links outbox still has them, for a recovery sweep (once the owner is gone).
    a = RedisIdentityStore(store.client, store.prefix, owner="host:1:a", alive_ttl_s=1)
    first, _ = _two_customers_then_the_link()
    result = resolver_on(IdentityConfig(), "salt", a).resolve_batch(first)
    assert len(result.links) == 2 and result.commit_id is not None
    again = resolver_on(IdentityConfig(), "salt", a).resolve_batch(first)
    assert again.links == [] and again.commit_id is None
    assert store.pending_links() == [(result.commit_id, result.links)]
    a.heartbeat()
    assert store.pending_links(orphaned=True) == []  # its worker is alive: its own to write
    store.ack_links(result.commit_id)
    assert store.pending_links() == []
    store.ack_links(result.commit_id)  # twice is harmless
    store.ack_links(None)


def test_a_commit_sent_again_after_a_lost_reply_keeps_its_merge_numbers(
    store: RedisIdentityStore,
) -> None:
    import redis

    resolver = resolver_on(IdentityConfig(), "salt", store)
    first, link = _two_customers_then_the_link()
    resolver.resolve_batch(first)
    store.client.set(f"{store.prefix}:mseq", 41)  # merges committed before, by anyone
    commit, replies = store._commit, []

    def reply_lost(**kw: object) -> object:
        reply = commit(**kw)
        replies.append(reply)
        if len(replies) == 1:
            raise redis.ConnectionError("the reply was lost (test)")
        return reply

    store._commit = reply_lost  # type: ignore[method-assign]
    merges = resolver.resolve_batch(link).merges
    assert [status for status, _ in replies][1:] == [2]  # applied, then "applied before"
    assert [m.seq for m in merges] == [42]
    assert [e.seq for e in store.outbox()] == [42]
    assert store.client.get(f"{store.prefix}:mseq") in ("42", b"42")  # numbered once

"""Serving state in Redis: one customer's live state, readable by any of their identifiers.

Written by the streaming worker after each ClickHouse flush (and by ``journeymap replay
--serve-redis``), read by the serving API (:mod:`streams.web.api`) in one round trip.

Layout under the serving prefix ``S`` (default ``jm:serve:<consumer group>``), next to the
identity graph under ``I`` (``jm:id:<consumer group>``, :mod:`sinks.identity_redis`):

- ``S:c:<customer>``   string  JSON: segment, funnels (stage, entered at, time in stage), scores,
                               top explanation features, next-best action, expected lift, times
- ``S:ids``            hash    node key (kind letter + salted SHA-256) -> customer, written by the
                               replay only: a worker's customers are found through ``I:n``, the
                               identity graph itself, which always has merges applied
- ``S:m:<customer>``   set     the node keys of one customer (replay only; workers: ``I:m:<c>``)
- ``S:forgotten``      hash    customer -> deletion time (ms): customers `journeymap forget`
                               removed; the worker holding them drops their state on its next batch

Identifiers are only ever stored as salted hashes (the resolver hashes them before anything is
written), so nothing here can give a raw email or user id back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson
import redis

from processors.errors import ServiceUnavailable

if TYPE_CHECKING:
    from online_models.suite import Scores
    from processors.funnels import CustomerFunnel

log = logging.getLogger(__name__)

BATCH: Final = 1_000  # commands (or states of one MSET) per round trip

# One round trip per API request: identifier -> customer -> state and identifiers.
# ARGV: serving prefix, identity prefix, node key ('' when looking up by customer id), customer id.
_LOOKUP: Final = """
local sp, ip, key, cid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if key ~= '' then
  local node = redis.call('HGET', ip .. ':n', key)
  if node then
    cid = string.sub(node, 1, string.find(node, '|', 1, true) - 1)
  else
    cid = redis.call('HGET', sp .. ':ids', key) or ''
  end
elseif redis.call('HEXISTS', ip .. ':r', cid) == 0
    and redis.call('EXISTS', sp .. ':m:' .. cid) == 0 then
  -- not a current customer: unknown, or merged away (its stale state must not be served)
  return {'', '', ''}
end
if cid == '' then return {'', '', ''} end
local state = redis.call('GET', sp .. ':c:' .. cid) or ''
local members = redis.call('SMEMBERS', ip .. ':m:' .. cid)
local own = redis.call('SMEMBERS', sp .. ':m:' .. cid)
for i = 1, #own do members[#members + 1] = own[i] end
return {cid, state, table.concat(members, '\\n')}
"""

# Remove one customer from the identity graph atomically: its nodes (those still pointing at it),
# its member set and its record. ARGV: identity prefix, customer id. Returns the removed node keys.
_FORGET_IDENTITY: Final = """
local ip, cid = ARGV[1], ARGV[2]
local members = redis.call('SMEMBERS', ip .. ':m:' .. cid)
local removed = {}
for i = 1, #members do
  local node = redis.call('HGET', ip .. ':n', members[i])
  if node and string.sub(node, 1, string.find(node, '|', 1, true) - 1) == cid then
    redis.call('HDEL', ip .. ':n', members[i])
    removed[#removed + 1] = members[i]
  end
end
redis.call('DEL', ip .. ':m:' .. cid)
redis.call('HDEL', ip .. ':r', cid)
return removed
"""


@dataclass(frozen=True, slots=True)
class Found:
    """What a lookup found: the customer, their stored state (None if never scored) and the
    node keys of their identifiers (kind letter + hash)."""

    customer_id: str
    state: dict[str, Any] | None
    node_keys: tuple[str, ...]


def state_of(scores: Scores, funnels: Sequence[CustomerFunnel], now_ms: int) -> dict[str, Any]:
    """The serving value of one customer after their latest scored event."""
    return {
        "customer_id": scores.customer_id,
        "segment": scores.segment,
        "funnels": [
            {
                "funnel": f.funnel,
                "stage": f.stage_name,
                "stage_index": f.stage,
                "stage_entered_at_ms": f.stage_entered_ms,
                # as of the customer's latest event (event time), not of the wall clock
                "time_in_stage_s": max(0, scores.ts_ms - f.stage_entered_ms) / 1000,
            }
            for f in funnels
        ],
        "p_convert": scores.p_convert,
        "p_churn": scores.p_churn,
        "top_features": [{"feature": name, "weight": w} for name, w in scores.top_features],
        "next_best_action": scores.next_best_action,
        "expected_lift": scores.expected_lift,
        "sentiment": scores.sentiment,
        "last_event_at_ms": scores.ts_ms,
        "updated_at_ms": now_ms,
    }


class ServingStore:
    """Reads and writes the serving state (sync redis-py; call from a thread in async code)."""

    def __init__(
        self,
        client: redis.Redis | str,
        prefix: str,
        identity_prefix: str,
        *,
        socket_timeout_s: float = 2.0,
    ) -> None:
        if isinstance(client, str):
            client = redis.Redis.from_url(
                client, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
            )
        self.client = client
        self.prefix = prefix
        self.identity_prefix = identity_prefix
        self._lookup = client.register_script(_LOOKUP)
        self._forget_identity = client.register_script(_FORGET_IDENTITY)

    def state_key(self, customer_id: str) -> str:
        return f"{self.prefix}:c:{customer_id}"

    def _run(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ServiceUnavailable(
                f"Redis did not answer while trying to {what}: {exc}; start Redis "
                "(`journeymap services up`) or fix redis.url"
            ) from None

    # -- writes ---------------------------------------------------------------------------------

    def write(self, states: Iterable[dict[str, Any]]) -> int:
        """Store each customer's state (one MSET of up to `BATCH` states per round trip; a
        customer twice in one round keeps its later state, as consecutive SETs would). Returns
        how many states were written."""
        n = 0

        def run() -> None:
            nonlocal n
            # (one MSET, one reply: a pipeline of SETs cost ~4x the client's CPU per state,
            # each command packed and each +OK parsed on its own; bench/RESULTS.md session 21)
            chunk: dict[str, bytes] = {}
            pending = 0
            for state in states:
                chunk[self.state_key(state["customer_id"])] = orjson.dumps(state)
                pending += 1
                if pending >= BATCH:
                    self.client.mset(chunk)
                    n += pending
                    chunk, pending = {}, 0
            if chunk:
                self.client.mset(chunk)
                n += pending

        self._run("write serving state", run)
        return n

    def write_identifiers(self, members: Iterable[tuple[str, Iterable[str]]]) -> int:
        """customer -> node keys, for stores without a Redis identity graph (the replay)."""
        n = 0

        def run() -> None:
            nonlocal n
            pipe = self.client.pipeline(transaction=False)
            pending = 0
            for cid, keys in members:
                keys = list(keys)
                if not keys:
                    continue
                pipe.hset(f"{self.prefix}:ids", mapping=dict.fromkeys(keys, cid))
                pipe.sadd(f"{self.prefix}:m:{cid}", *keys)
                pending += 1
                n += len(keys)
                if pending >= BATCH:
                    pipe.execute()
                    pending = 0
            if pending:
                pipe.execute()

        self._run("write the identifier lookup", run)
        return n

    def drop(self, customer_ids: Sequence[str]) -> int:
        """Remove customers' states (merged away, or forgotten)."""
        if not customer_ids:
            return 0
        keys = [self.state_key(c) for c in customer_ids]
        return int(self._run("drop serving state", lambda: self.client.unlink(*keys)))

    # -- reads ----------------------------------------------------------------------------------

    def find(self, *, node_key: str = "", customer_id: str = "") -> Found | None:
        """The customer behind a node key (or a customer id), their state and identifiers."""
        cid, state, members = self._run(
            "look up a customer",
            lambda: self._lookup(args=[self.prefix, self.identity_prefix, node_key, customer_id]),
        )
        return _found(cid, state, members)

    # -- deletion --------------------------------------------------------------------------------

    def mark_forgotten(self, customer_id: str, at_ms: int) -> None:
        self._run(
            "record a deletion",
            lambda: self.client.hset(f"{self.prefix}:forgotten", customer_id, at_ms),
        )

    def forgotten(self) -> set[str]:
        """Customers forgotten whose worker state has not been dropped yet (a small set)."""
        marks = self._run("read deletions",
                          lambda: self.client.hkeys(f"{self.prefix}:forgotten"))
        return {_text(m) for m in marks}

    def clear_forgotten(self, customer_ids: Sequence[str]) -> None:
        """The worker holding these customers dropped their state: clear the marks."""
        if customer_ids:
            self._run("clear deletion marks",
                      lambda: self.client.hdel(f"{self.prefix}:forgotten", *customer_ids))

    def forget(self, customer_id: str, node_keys: Sequence[str]) -> dict[str, int]:
        """Remove a customer's serving state and identifier lookups; keys removed per kind."""

        def run() -> dict[str, int]:
            pipe = self.client.pipeline(transaction=True)
            pipe.unlink(self.state_key(customer_id))
            pipe.unlink(f"{self.prefix}:m:{customer_id}")
            if node_keys:
                pipe.hdel(f"{self.prefix}:ids", *node_keys)
            res = pipe.execute()
            return {
                "serving_state": int(res[0]),
                "serving_members": int(res[1]),
                "serving_ids": int(res[2]) if node_keys else 0,
            }

        return dict(self._run("forget a customer", run))

    def forget_identity(self, customer_id: str) -> list[str]:
        """Remove a customer from the workers' identity graph; returns the node keys removed."""
        removed = self._run(
            "remove a customer from the identity graph",
            lambda: self._forget_identity(args=[self.identity_prefix, customer_id]),
        )
        return [_text(k) for k in removed]

    def node_keys_of(self, customer_id: str) -> list[str]:
        """A customer's node keys in the identity graph and the replay's lookup."""
        def run() -> list[str]:
            a = self.client.smembers(f"{self.identity_prefix}:m:{customer_id}")
            b = self.client.smembers(f"{self.prefix}:m:{customer_id}")
            return sorted({_text(k) for k in (*a, *b)})  # type: ignore[misc]

        return list(self._run("list a customer's identifiers", run))

    def close(self) -> None:
        self.client.close()


class AsyncServingReader:
    """The API's read side on redis.asyncio: the same one-round-trip lookup as
    :meth:`ServingStore.find`, without blocking the event loop."""

    def __init__(self, url: str, prefix: str, identity_prefix: str, *, timeout_s: float = 2.0
                 ) -> None:
        import redis.asyncio as aredis

        self.client = aredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.prefix = prefix
        self.identity_prefix = identity_prefix
        self._lookup = self.client.register_script(_LOOKUP)

    async def find(self, *, node_key: str = "", customer_id: str = "") -> Found | None:
        try:
            cid, state, members = await self._lookup(
                args=[self.prefix, self.identity_prefix, node_key, customer_id]
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ServiceUnavailable(f"Redis did not answer a customer lookup: {exc}") from None
        return _found(cid, state, members)

    async def close(self) -> None:
        await self.client.aclose()


def _found(cid: Any, state: Any, members: Any) -> Found | None:
    cid = _text(cid)
    if not cid:
        return None
    state_s = _text(state)
    keys = tuple(sorted({k for k in _text(members).split("\n") if k}))
    if not state_s and not keys:
        return None
    return Found(cid, orjson.loads(state_s) if state_s else None, keys)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)

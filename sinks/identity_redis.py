"""The identity graph in Redis, shared by every streaming worker.

The resolver (:mod:`processors.identity`) makes every decision; this store only loads and
commits, each in one Lua script per batch:

- ``identity_read.lua`` reads the batch's nodes and their customers atomically;
- ``identity_commit.lua`` writes the batch's changes only if none of the customers it used has
  changed since and its new identifiers are still new (optimistic concurrency). If another
  worker got there first, the resolver decides the batch again on fresh state. Every commit is
  therefore equivalent to the batches applied one after another: two workers can never produce
  different answers or lose a link.

The store keeps what it has read and committed (the worker's cache, up to `cache_max_keys`
nodes) with the token of each customer's record. A batch then reads only the identifiers it
has not cached, and the read first checks the tokens of the cached customers the batch uses
(any changed: the cache is dropped and the batch read afresh). Once a read finds nothing that
another writer made, later batches skip the read altogether, one round trip per batch, and
rely on the commit's checks; a failed commit drops the cache and reading starts again. A
decision is only kept in the cache once Redis accepted it. Anything else that changes the
graph (``journeymap forget``) must change or delete the customer records it touches. One store
resolves one batch at a time (like the resolver; the ingest agent awaits each batch).

Layout under the key prefix ``P`` (identifiers appear only as salted SHA-256 hashes):

- ``P:n``          hash  node key -> ``"customer|first_seen_ms|n_linked"``
- ``P:r``          hash  customer id -> JSON ``[earliest_ts, earliest_key, {kind: key}, size]``
- ``P:m:<cust>``   set   the node keys of one customer (for merges and `members_of`)
- ``P:tok:<t>``    a commit that was applied (so a retried commit is not applied twice)
- ``P:mo``         hash  merge outbox: ``loser|evidence event`` -> JSON merge record (with
  ``committed_ms``),
  written by the commit that made the merge, deleted by :meth:`RedisIdentityStore.ack_merges`
  once the worker has produced it. A worker that dies in between leaves it there, and
  :meth:`RedisIdentityStore.pending_merges` hands it to another one (loser and evidence event
  identify a merge, so consumers can drop duplicates).

While Redis is unreachable every call retries with bounded exponential backoff and logs a
warning saying what it is waiting for; nothing is lost because nothing is committed until Redis
answers. Use it from an async agent through ``asyncio.to_thread(resolver.resolve_batch, ...)``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, TypeVar

import orjson
import redis

from processors.errors import ConfigError, ServiceUnavailable
from processors.identity import IdentityGraph, MergeRecord, Root

log = logging.getLogger("journeymap.identity")
T = TypeVar("T")
_RETRYABLE: Final = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff while Redis is unreachable: `initial_s`, doubling, capped at
    `max_backoff_s`; give up with ServiceUnavailable after `max_wait_s` (None: wait forever)."""

    initial_s: float = 0.05
    max_backoff_s: float = 5.0
    max_wait_s: float | None = None


class _CachedGraph(IdentityGraph):
    """The part of the graph this worker has read or written, kept across batches.

    Alongside the graph it holds what Redis held for those nodes and customers when they were
    last read or committed: a batch whose identifiers are all cached needs no read, because the
    commit checks that every customer it used still carries the cached token.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, tuple[int, int]] = {}  # node key -> (first_seen, n_linked) in Redis
        self.tokens: dict[str, str] = {}  # customer -> token of its record in Redis
        self.batch: list[str] = []  # the current batch's node keys
        self.used: dict[str, None] = {}  # their customers in Redis when the batch began
        self.open = False  # begun and not committed: holds decisions Redis has not accepted


class _StaleCache(Exception):
    """A customer read from Redis carries another token than the cached one."""


def _script(name: str) -> str:
    files = resources.files("sinks")
    return files.joinpath("identity_lib.lua").read_text() + files.joinpath(name).read_text()


def _outbox_field(mr: MergeRecord) -> str:
    return f"{mr.loser}|{mr.evidence_event_id}"


def _net_moves(moves: list[tuple[str, str]], stored: Collection[str]) -> list[tuple[str, str]]:
    """The batch's customer moves as Redis must replay them: each customer Redis holds
    (`stored`) straight to where it ended, skipping customers that exist only in this batch
    (their identifiers are written with their final customer anyway).

    A customer never ends elsewhere while another one ends under its name (its name is its
    earliest identifier's, which goes wherever its members go), so the order does not matter;
    if that ever failed, the moves are replayed as they were made.
    """
    where: dict[str, list[str]] = {}
    placed: set[str] = set()
    for src, dst in moves:
        held = where.pop(src, [])
        if src in stored and src not in placed:
            placed.add(src)
            held.append(src)
        if held:
            where.setdefault(dst, []).extend(held)
    net = [(cid, end) for end, held in where.items() for cid in held if cid != end]
    if any(src in where for src, _ in net):
        return moves
    return net


def encode_node(cid: str, first: int, linked: int) -> str:
    return f"{cid}|{first}|{linked}"


def encode_root(root: Root, token: str) -> str:
    """The customer record; `token` names the commit that wrote it (the optimistic check)."""
    return orjson.dumps(
        [root.earliest_ts, root.earliest_key, root.uniq, root.size, token],
        option=orjson.OPT_SORT_KEYS,
    ).decode()


class RedisIdentityStore:
    """:class:`~processors.identity.IdentityStore` on Redis (sync redis-py)."""

    def __init__(
        self,
        client: redis.Redis | str,
        prefix: str = "jm:id",
        *,
        retry: RetryPolicy = RetryPolicy(),
        token_ttl_s: int = 86_400,
        cache_max_keys: int = 500_000,
    ) -> None:
        if isinstance(client, str):
            client = redis.Redis.from_url(client, decode_responses=True)
        if not client.get_connection_kwargs().get("decode_responses"):
            raise ConfigError(
                "RedisIdentityStore needs a client made with decode_responses=True "
                "(or pass the redis URL and let the store make its client)"
            )
        self.client = client
        self.prefix = prefix
        self.retry = retry
        self.token_ttl_s = token_ttl_s
        self._read = client.register_script(_script("identity_read.lua"))
        self._commit = client.register_script(_script("identity_commit.lua"))
        self.n_conflicting_commits = 0
        self.cache_max_keys = cache_max_keys
        self._cache = _CachedGraph()
        self._trusted = False  # no read while the cache has been right (see begin)

    # -- retrying ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        delay = self.retry.initial_s
        n_failed = 0
        while True:
            try:
                result = fn()
            except _RETRYABLE as exc:
                n_failed += 1
                waited = time.monotonic() - started
                limit = self.retry.max_wait_s
                if limit is not None and waited + delay > limit:
                    raise ServiceUnavailable(
                        f"Redis at {self._where()} did not answer for {waited:.1f}s while "
                        f"{what}: {exc}. Start Redis or fix redis.url; nothing was committed."
                    ) from exc
                log.warning(
                    "waiting for Redis at %s to %s (attempt %d failed: %s: %s); retrying in "
                    "%.2fs, nothing committed yet",
                    self._where(),
                    what,
                    n_failed,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, self.retry.max_backoff_s)
                continue
            if n_failed:
                log.warning(
                    "Redis at %s is back after %d failed attempts to %s",
                    self._where(),
                    n_failed,
                    what,
                )
            return result

    def _where(self) -> str:
        kw = self.client.connection_pool.connection_kwargs
        return f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}/{kw.get('db', 0)}"

    # -- IdentityStore -------------------------------------------------------------------------

    def begin(self, keys: Collection[str]) -> IdentityGraph:
        """The graph holding `keys` and their customers: this worker's cache, completed and
        checked by one atomic read, or by none at all while the cache has been right so far.

        The read sends the tokens of the cached customers the batch uses and reads the keys not
        cached; if a cached customer changed (another worker wrote it), the cache is dropped and
        the batch read afresh. Without a read, the commit makes the same checks (the customers'
        tokens, and that the uncached keys are still new), so a stale cache can cost a retried
        batch, never a wrong answer.
        """
        g = self._cache
        if g.open or len(g.stored) > self.cache_max_keys:
            g = self._reset()  # an uncommitted decision, or full: start over
        g.open = True
        g.moves.clear()
        g.new_keys.clear()
        g.changed.clear()
        g.merge_records = []
        batch = g.batch = list(keys)
        if not self._trusted:
            known, tokens = g.cid, g.tokens
            missing = [key for key in batch if key not in known]
            used = {known[key] for key in batch if key in known}
            try:
                n_found = self._load(g, missing, "\n".join(f"{c}\n{tokens[c]}" for c in used))
            except _StaleCache:
                g = self._reset()
                g.open = True
                g.batch = batch
                n_found = self._load(g, batch, "")
            # Skip this read from the next batch on once it found nothing anyone else wrote.
            self._trusted = n_found == 0
        known = g.cid
        g.used = dict.fromkeys(known[key] for key in batch if key in known)
        return g

    def _reset(self) -> _CachedGraph:
        self._cache = _CachedGraph()
        self._trusted = False
        return self._cache

    def _load(self, g: _CachedGraph, wanted: list[str], checks: str) -> int:
        """Read the nodes `wanted` and their customers into `g` (one atomic read), after
        checking the cached customers in `checks`; returns how many of `wanted` exist."""
        reply = self._call(
            "read the identity graph",
            lambda: self._read(args=[self.prefix, "\n".join(wanted), checks]),
        )
        if reply == 0:
            raise _StaleCache()
        nodes_s, cids_s, roots_s = reply
        cids = cids_s.split("\n") if cids_s else []
        roots = roots_s.split("\n") if cids_s else []
        tokens = g.tokens
        for cid, raw in zip(cids, roots, strict=True):
            if not raw:
                raise ServiceUnavailable(
                    f"identity graph under {self.prefix!r} is inconsistent: node points at "
                    f"customer {cid} which has no record; was the prefix partially deleted?"
                )
            cached = tokens.get(cid)
            if cached is not None:
                if raw[-34:-2] != cached:
                    raise _StaleCache(cid)
                continue  # unchanged since cached, members included
            ts, key, uniq, size, token = orjson.loads(raw)
            g.roots[cid] = Root(ts, key, uniq, size)
            tokens[cid] = token
            g.members[cid] = []
        n_found = 0
        for key, raw in zip(wanted, nodes_s.split("\n") if wanted else [], strict=True):
            if not raw:
                continue
            n_found += 1
            cid, first, linked = raw.split("|")
            g.cid[key] = cid
            g.first[key] = f = int(first)
            n = int(linked)
            if n:
                g.linked[key] = n
            g.stored[key] = (f, n)
            g.members[cid].append(key)
        return n_found

    def commit(self, graph: IdentityGraph) -> bool:
        """Write the batch atomically; False if another writer changed what it used.

        The check is on customer records only (plus the absence of new identifiers): every
        change to a node rewrites its customer's record, stamped with this commit's token, so
        an unchanged token means unchanged members. On False the cache is dropped.
        """
        g = graph
        assert isinstance(g, _CachedGraph) and g is self._cache and g.open, (
            "commit the graph this store's last begin() returned"
        )
        if not g.batch:
            g.open = False
            return True
        token = uuid.uuid4().hex
        cids, first, linked, stored = g.cid, g.first, g.linked, g.stored
        node_sets: list[str] = []
        states: list[tuple[str, tuple[int, int]]] = []
        for key in g.changed:
            state = (first[key], linked.get(key, 0))
            if stored.get(key) != state:
                node_sets += (key, encode_node(cids[key], *state))
                states.append((key, state))
        # A customer record changes with its nodes (above) and when customers move into it;
        # every record written gets this commit's token.
        written = {cids[key]: None for key, _ in states}
        roots = g.roots
        for _, dst in g.moves:
            if dst in roots:
                written[dst] = None
        root_sets: list[str] = []
        for cid in written:
            root_sets += (cid, encode_root(roots[cid], token))
        gone = [cid for cid in g.used if cid not in roots]

        checks: list[str] = []
        for cid in g.used:
            checks += (cid, g.tokens[cid])
        adds: list[str] = []
        for key in g.new_keys:
            adds += (cids[key], key)
        now_ms = int(time.time() * 1000)
        outbox: list[str] = []
        for mr in g.merge_records:
            outbox += (_outbox_field(mr),
                       orjson.dumps({**mr._asdict(), "committed_ms": now_ms}).decode())
        args: list[Any] = [
            self.prefix,
            token,
            self.token_ttl_s,
            "\n".join(g.new_keys),
            "\n".join(checks),
            "\n".join(f"{src}\n{dst}" for src, dst in _net_moves(g.moves, g.used)),
            "\n".join(node_sets),
            "\n".join(adds),
            "\n".join(root_sets),
            "\n".join(gone),
            "\n".join(outbox),
        ]
        # The same token on every retry: a commit whose reply was lost is not applied twice.
        status = self._call("commit identity decisions", lambda: self._commit(args=args))
        if status == 0:
            self.n_conflicting_commits += 1
            self._reset()
            return False
        stored.update(states)
        tokens = g.tokens
        for cid in written:
            tokens[cid] = token
        for cid in gone:
            del tokens[cid]
        g.open = False
        return True

    # -- merge outbox --------------------------------------------------------------------------

    def pending_merges(self, older_than_s: float = 0.0) -> list[MergeRecord]:
        """Merge records committed at least `older_than_s` ago and not yet acknowledged.

        Their worker died between the commit and producing them (or is still busy): produce
        them again, then :meth:`ack_merges`. In commit order (then merge time and loser within
        one commit): a cycle's two merges (L into W, then W back into L) only make sense in the
        order they were committed.
        """
        raw = self._call("read the merge outbox", lambda: self.client.hgetall(f"{self.prefix}:mo"))
        limit_ms = int((time.time() - older_than_s) * 1000)
        out = []
        for value in raw.values():  # type: ignore[union-attr]
            d = orjson.loads(value)
            committed_ms = d.pop("committed_ms")
            if committed_ms <= limit_ms:
                mr = MergeRecord(**d)
                out.append((committed_ms, mr.ts_ms, mr.loser, mr))
        return [entry[-1] for entry in sorted(out, key=lambda e: e[:3])]

    def ack_merges(self, merges: Collection[MergeRecord]) -> None:
        """`merges` are produced: drop them from the outbox (idempotent)."""
        if merges:
            key, fields = f"{self.prefix}:mo", [_outbox_field(mr) for mr in merges]
            self._call("acknowledge merges", lambda: self.client.hdel(key, *fields))

    def customer_of(self, key: str) -> str | None:
        raw = self._call("look up a customer", lambda: self.client.hget(f"{self.prefix}:n", key))
        return None if raw is None else str(raw).split("|", 1)[0]

    def members_of(self, customer_id: str) -> list[tuple[str, int]]:
        def read() -> list[tuple[str, int]]:
            keys = sorted(self.client.smembers(f"{self.prefix}:m:{customer_id}"))  # type: ignore[arg-type]
            if not keys:
                return []
            values = self.client.hmget(f"{self.prefix}:n", keys)
            out = []
            for key, raw in zip(keys, values, strict=True):  # type: ignore[arg-type]
                if raw is not None:
                    cid, first, _ = str(raw).split("|")
                    if cid == customer_id:
                        out.append((key, int(first)))
            return out

        return self._call("list a customer's identifiers", read)

    def partition(self) -> dict[str, frozenset[str]]:
        """Every customer and its node keys (for tests and audits; reads the whole graph)."""

        def read() -> dict[str, frozenset[str]]:
            out: dict[str, set[str]] = {}
            for key, raw in self.client.hscan_iter(f"{self.prefix}:n", count=5000):
                out.setdefault(str(raw).split("|", 1)[0], set()).add(str(key))
            return {cid: frozenset(keys) for cid, keys in out.items()}

        return self._call("read the whole identity graph", read)

    def clear(self) -> int:
        """Delete every key under this store's prefix; returns how many."""
        self._reset()

        def run() -> int:
            n = 0
            batch: list[str] = []
            for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    n += int(self.client.unlink(*batch))  # type: ignore[arg-type]
                    batch.clear()
            if batch:
                n += int(self.client.unlink(*batch))  # type: ignore[arg-type]
            return n

        return self._call("clear the identity graph", run)

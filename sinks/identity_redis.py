"""The identity graph in Redis, shared by every streaming worker.

The resolver (:mod:`processors.identity`, or the native core: see `attach_core`) makes every
decision; this store only loads and commits, each in one Lua script per batch:

- ``identity_read.lua`` reads the batch's nodes and their customers atomically;
- ``identity_commit.lua`` writes the batch's changes only if none of the customers it used has
  changed since and its new identifiers are still absent (optimistic concurrency). If another
  worker got there first, the resolver decides the batch again on fresh state. Every commit is
  therefore equivalent to the batches applied one after another: two workers can never produce
  different answers or lose a link.

The worker's cache. The store keeps the part of the graph it has read or committed (up to
`cache_max_keys` identifiers) across batches, with the token of every cached customer's record:
the token names the commit that last wrote the record (a fresh uuid4 per commit). Invalidation
rule: every commit that changes a node (its customer, first-seen time or link count) rewrites
the record of the node's customer with its own token, a merge deletes the loser's record, and
nothing else writes the graph; so a customer whose record still carries the cached token has
exactly the cached record, nodes and members. A batch reads only the identifiers the cache does
not hold; every cached customer it may read or write (the customers of its cached identifiers,
and any cached customer named after one of its identifiers) is sent with its cached token, and
the commit (and the read, when there is one) fails if any record is gone or carries another
token, or if an identifier taken as new exists. So a stale entry can cost a retried batch,
never an answer: a batch's outputs are only kept when its commit's checks passed atomically
with its writes. After a failed commit, one that raised, one whose call was retried (a lost
reply: Redis may have restarted meanwhile) or one found already applied, the whole cache is
dropped and the next batch reads afresh. Once a read finds none of the identifiers it asked
for (nobody else wrote them), later batches skip the read and leave every check to the
commit: one round trip per batch, until a commit fails. The chain: every commit sets ``P:last``
to its token; while it still names this worker's last commit, made when the whole cache was
current, nothing else has written the graph and the commit goes without the per-customer
checks (the script answers 3, writing nothing, when the chain broke; then they are sent). Every
writer of a prefix must run this commit script. One store serves one resolver, one batch at a
time.

Layout under the key prefix ``P`` (identifiers appear only as salted SHA-256 hashes):

- ``P:n``          hash  node key -> ``"customer|first_seen_ms|n_linked"``
- ``P:r``          hash  customer id -> JSON ``[earliest_ts, earliest_key, {kind: key}, size,
  token]`` (the token of the commit that wrote it)
- ``P:m:<cust>``   set   the node keys of one customer (for merges and `members_of`)
- ``P:tok:<t>``    a commit that was applied (so a retried commit is not applied twice)
- ``P:last``       string  the token of the last commit applied (the chain)
- ``P:mo``         hash  merge outbox: ``loser|evidence event`` -> JSON merge record (with
  ``committed_ms`` and the committing worker's ``owner`` id),
  written by the commit that made the merge, deleted by :meth:`RedisIdentityStore.ack_merges`
  once the worker has produced it. A worker that dies in between leaves it there, and
  :meth:`RedisIdentityStore.pending_merges` hands it to another one (loser and evidence event
  identify a merge, so consumers can drop duplicates).
- ``P:lo``         hash  links outbox: commit token -> JSON ``{committed_ms, owner, links}``, the
  batch's new identity links, written by the commit, deleted by
  :meth:`RedisIdentityStore.ack_links` once their identity_links rows are written (a batch
  resolved again after a crash reports no links: its identifiers are known by then).
- ``P:alive:<owner>``  string with a TTL, refreshed by :meth:`RedisIdentityStore.heartbeat`: the
  owner is alive, so its outbox entries are its own to produce, however long it is held up
  (a ClickHouse outage can hold an agent for minutes; a second sender would interleave the
  merges with the live worker's own messages).

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
from typing import Any, Final, NamedTuple, TypeVar

import orjson
import redis

from processors.errors import ConfigError, ServiceUnavailable
from processors.identity import (
    IdentityGraph,
    IdentityLink,
    MergeRecord,
    Root,
    customer_id_for,
    number_merges,
)

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


_Content = tuple[int, str, dict[str, str], int]  # a record without its token
# What a read brings: (customer, earliest_ts, earliest_key, uniq, size, token) of a customer not
# cached, and (key, customer, first_seen, n_linked) of a node.
_LoadedRoot = tuple[str, int, str, dict[str, str], int, str]
_LoadedNode = tuple[str, str, int, int]


class _Written(dict[str, int]):
    """A dict that notes every key written to it (`written`, in order): the nodes whose state a
    batch may have changed, so the commit compares those instead of every key of the batch."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        super().__init__()
        self.written: dict[str, None] = {}

    def __setitem__(self, key: str, value: int) -> None:
        dict.__setitem__(self, key, value)
        self.written[key] = None

    def setdefault(self, key: str, default: int) -> int:  # type: ignore[override]
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: int) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


class _CachedGraph(IdentityGraph):
    """The part of the graph this worker has read or committed, kept across batches, with what
    Redis held for it: every node's (first_seen, n_linked) and every customer's record (token
    and content). Between batches its roots are exactly the customers in `records`. The nodes'
    `first` and `linked` note the keys written since the batch began (the decision's writes)."""

    first: _Written
    linked: _Written

    def __init__(self) -> None:
        super().__init__()
        self.first = _Written()
        self.linked = _Written()
        # node key -> (first_seen, n_linked or None), as Redis holds it
        self.stored: dict[str, tuple[int, int | None]] = {}
        self.records: dict[str, tuple[str, _Content]] = {}  # customer -> (token, content)
        self.batch: list[str] = []  # the current batch's node keys
        # The cached customers of the batch's cached keys at begin (checked by token, with the
        # cached customers named after one of its keys: see RedisIdentityStore._used).
        self.used: dict[str, None] = {}
        self.open = False  # begun, not committed: it may hold decisions Redis never accepted
        self._pending: tuple[list[tuple[str, tuple[int, int | None]]], list[str], list[str]] = (
            [], [], [])  # what the last `sections` built from (see `committed`)

    # The operations RedisIdentityStore does on its cache (_NativeCache has the same).

    def n_cached(self) -> int:
        return len(self.cid)

    def open_batch(self, keys: Collection[str]) -> None:
        """A batch of node keys `keys` begins: the change log starts empty."""
        self.open = True
        self.moves.clear()
        self.new_keys.clear()
        self.merge_records = []
        self.link_records = []
        self.commit_id = None
        self.batch = list(keys)

    def keys(self) -> list[str]:
        """The batch's node keys."""
        return self.batch

    def batch_empty(self) -> bool:
        return not self.batch

    def split(self) -> tuple[list[str], list[str]]:
        """The batch's node keys the cache does not hold, and those it holds."""
        cid = self.cid
        return [k for k in self.batch if k not in cid], [k for k in self.batch if k in cid]

    def _customers(self) -> dict[str, None]:
        """The cached customers of the batch's cached keys (as of now)."""
        cid = self.cid
        return dict.fromkeys(cid[k] for k in self.batch if k in cid)

    def note_used(self) -> None:
        """Before deciding: note the customers the commit's checks name (`checks`), and start
        noting the decision's writes (not what the read loaded)."""
        self.used = self._customers()
        self.first.written.clear()
        self.linked.written.clear()

    def checks(self, noted: bool) -> str:
        """The token checks of the cached customers a batch may read or write: those of its
        cached keys (as noted before deciding when `noted`, else as of now), and any named
        after one of its keys (a rename or a new customer takes that name)."""
        used = dict(self.used) if noted else self._customers()
        records = self.records
        for name in set(map(customer_id_for, self.batch)).intersection(records):
            used[name] = None
        return "\n".join(f"{cid}\n{records[cid][0]}" for cid in used)

    def tokens(self, cids: list[str]) -> list[str | None]:
        """The token of each customer's cached record (None: not cached)."""
        records = self.records
        return [None if (r := records.get(c)) is None else r[0] for c in cids]

    def load(self, roots: list[_LoadedRoot], nodes: list[_LoadedNode]) -> None:
        """Put a read's records of customers not cached, then its nodes, into the cache."""
        records = self.records
        for cid, ts, key, uniq, size, token in roots:
            self.roots[cid] = Root(ts, key, dict(uniq), size)
            records[cid] = (token, (ts, key, uniq, size))
            self.members[cid] = []
        for key, cid, f, n in nodes:
            self.cid[key] = cid
            self.first[key] = f
            if n:
                self.linked[key] = n
            self.stored[key] = (f, n or None)  # as the commit compares: (first, linked.get(key))
            self.members[cid].append(key)

    def sections(self, token: str) -> tuple[str, str, str, str, str, str]:
        """The commit's sections for the decision (new keys, moves, node sets, member adds,
        root sets, root deletes; records stamped `token`), each '\n'-joined as
        identity_commit.lua takes them."""
        cids, first, linked, stored = self.cid, self.first, self.linked, self.stored
        node_sets: list[str] = []
        dirty: dict[str, None] = {}  # customers holding a node that changed (in order)
        # (first_seen, n_linked or None) against what Redis holds, of every key the decision
        # wrote (only a write changes a node's state; the batch's keys alone are written)
        states = [
            (key, state)
            for key in first.written | linked.written
            if (state := (first[key], linked.get(key))) != stored.get(key)
        ]
        for key, (f, n) in states:
            cid = cids[key]
            node_sets += (key, encode_node(cid, f, n or 0))
            dirty[cid] = None
        # A record is rewritten when a node of its customer changed (so any change to a node
        # changes the token of its customer's record) or its content did. Content changes only
        # by a node that changes (a new key added or attached, an earlier first-seen time: in
        # `dirty`) or by a move into the customer (its final holder is a move's target), so
        # only those customers are compared.
        roots, records = self.roots, self.records
        candidates = dirty.copy()
        for _, dst in self.moves:
            candidates[dst] = None
        root_sets: list[str] = []
        written: list[str] = []
        for cid in candidates:
            root = roots.get(cid)
            if root is None:
                continue  # moved on again later in the batch
            was = records.get(cid)
            if cid in dirty or was is None or was[1] != _content(root):
                root_sets += (cid, encode_root(root, token))
                written.append(cid)
        # Records gone: the cached customers moved away (roots only go by a move).
        gone = [cid for cid in dict.fromkeys(src for src, _ in self.moves)
                if cid in records and cid not in roots]
        adds: list[str] = []
        for key in sorted(self.new_keys, key=cids.__getitem__):  # grouped: one SADD per customer
            adds += (cids[key], key)
        self._pending = (states, written, gone)
        return ("\n".join(self.new_keys),  # taken as new: must still be absent
                "\n".join(f"{src}\n{dst}" for src, dst in self.moves),
                "\n".join(node_sets), "\n".join(adds), "\n".join(root_sets), "\n".join(gone))

    def committed(self, token: str) -> None:
        """The commit `sections` built applied cleanly: what the cache says Redis holds follows."""
        states, written, gone = self._pending
        stored, roots, records = self.stored, self.roots, self.records
        for key, state in states:
            stored[key] = state
        for cid in written:
            root = roots[cid]
            records[cid] = (token, (root.earliest_ts, root.earliest_key, dict(root.uniq),
                                    root.size))
        for cid in gone:
            del records[cid]


class _NativeCache:
    """The worker's cache held by a native identity core in overlay mode (``journeymap_native``,
    attached by :meth:`RedisIdentityStore.attach_core`): the same state and operations as
    :class:`_CachedGraph`, in Rust. The core decides on it; the batch's keys are those of the
    core's combinations given to `open_batch`. Dropped with the cache (`overlay_reset`)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.open = False
        self.merge_records: list[MergeRecord] = []  # set by the resolver before commit
        self.link_records: list[IdentityLink] = []
        self.commit_id: str | None = None

    def n_cached(self) -> int:
        return self.core.overlay_len()  # type: ignore[no-any-return]

    def open_batch(self, combos: Collection[int]) -> None:
        self.open = True
        self.merge_records = []
        self.link_records = []
        self.commit_id = None
        self.core.overlay_open(combos)

    def keys(self) -> list[str]:
        return self.core.overlay_batch()[0]  # type: ignore[no-any-return]

    def batch_empty(self) -> bool:
        return self.core.overlay_batch_empty()  # type: ignore[no-any-return]

    def split(self) -> tuple[list[str], list[str]]:
        _, missing, cached = self.core.overlay_batch()
        return missing, cached

    def note_used(self) -> None:
        self.core.overlay_note_used()

    def checks(self, noted: bool) -> str:
        return self.core.overlay_checks(noted)  # type: ignore[no-any-return]

    def tokens(self, cids: list[str]) -> list[str | None]:
        return self.core.overlay_tokens(cids)  # type: ignore[no-any-return]

    def load(self, roots: list[_LoadedRoot], nodes: list[_LoadedNode]) -> None:
        self.core.overlay_load(
            [(cid, ts, key, list(uniq.items()), size, token)
             for cid, ts, key, uniq, size, token in roots], nodes)

    def sections(self, token: str) -> tuple[str, str, str, str, str, str]:
        return self.core.overlay_sections(token)  # type: ignore[no-any-return]

    def committed(self, token: str) -> None:
        self.core.overlay_committed(token)


_Cache = _CachedGraph | _NativeCache


class _StaleCache(Exception):
    """A customer read from Redis carries another token than the cached one; `reply`, when
    the read brought every key of the batch as if nothing were cached."""

    def __init__(self, reply: list[Any] | None = None) -> None:
        super().__init__()
        self.reply = reply


class OutboxEntry(NamedTuple):
    """A merge in the outbox: its place in the global commit order, when and by whom."""

    seq: int
    committed_ms: int
    owner: str | None
    merge: MergeRecord


def _script(name: str) -> str:
    return resources.files("sinks").joinpath(name).read_text()


def _outbox_field(mr: MergeRecord) -> str:
    return f"{mr.loser}|{mr.evidence_event_id}"


def encode_node(cid: str, first: int, linked: int) -> str:
    return f"{cid}|{first}|{linked}"


def _content(root: Root) -> _Content:
    return root.earliest_ts, root.earliest_key, root.uniq, root.size


def _token_of(record: str) -> str:
    """The token at the end of a record as encode_root writes it: `...,"<32 hex>"]`."""
    return record[-34:-2]


def encode_root(root: Root, token: str) -> str:
    """The customer record; `token` names the commit that wrote it (the optimistic check)."""
    return orjson.dumps(
        [root.earliest_ts, root.earliest_key, root.uniq, root.size, token],
        option=orjson.OPT_SORT_KEYS,
    ).decode()


class RedisIdentityStore:
    """:class:`~processors.identity.IdentityStore` on Redis (sync redis-py)."""

    holds_every_key = False  # a batch loads the keys the cache does not hold

    def __init__(
        self,
        client: redis.Redis | str,
        prefix: str = "jm:id",
        *,
        retry: RetryPolicy = RetryPolicy(),
        token_ttl_s: int = 86_400,
        owner: str | None = None,
        alive_ttl_s: int = 30,
        cache_max_keys: int = 250_000,
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
        self.owner = owner  # this worker's id in the merge outbox (None: nobody's, recoverable)
        self.alive_ttl_s = alive_ttl_s
        self._read = client.register_script(_script("identity_read.lua"))
        self._commit = client.register_script(_script("identity_commit.lua"))
        self.n_conflicting_commits = 0
        self.cache_max_keys = cache_max_keys  # 0: no cache (every batch reads everything)
        self.n_reads = 0
        self.n_cache_drops = 0
        self._core: Any = None  # a native identity core holding the cache (attach_core)
        self._cache: _Cache = _CachedGraph()
        self._trusted = False  # skip the read: the last one found nothing anyone else wrote
        # The token of this worker's last commit while its whole cache was current; while Redis
        # still names it the last commit (P:last), nothing else has written the graph.
        self._chain: str | None = None
        self._fresh = False  # the cache holds this batch's read only (begun empty)
        self._n_failed = 0  # failed attempts in the last _call

    # -- retrying ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        delay = self.retry.initial_s
        n_failed = self._n_failed = 0
        while True:
            try:
                result = fn()
            except _RETRYABLE as exc:
                n_failed = self._n_failed = n_failed + 1
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

    def begin(self, keys: Collection[Any]) -> Any:
        """The graph holding `keys` and their customers: this worker's cache, completed by one
        atomic read of the keys it does not hold (which first checks the tokens of the cached
        customers the batch may use), or by no read at all while the reads find nothing new.
        With a native core attached (:meth:`attach_core`), `keys` are the indices of the batch's
        identity combinations in the core, and the cache returned is the core's overlay.
        """
        g = self._cache
        if g.open or g.n_cached() > self.cache_max_keys:
            g = self._drop()  # an uncommitted decision, or full (or no cache): start over
        g.open_batch(keys)
        self._fresh = not g.n_cached()
        # Trusted: no read, and the commit checks what the batch takes as new (`new_keys`).
        if not self._trusted:
            # The cached keys go too: if the cache turns out stale, the same read brings the
            # whole batch back (one round trip, not a failed read and a full one).
            missing, others = g.split()
            if missing:
                try:
                    n_found = self._load(g, missing, g.checks(noted=False), others)
                except _StaleCache as stale:
                    g = self._drop()
                    g.open_batch(keys)
                    self._fresh = True
                    if stale.reply is None:
                        n_found = self._load(g, g.keys(), "")
                    else:
                        n_found = self._parse(g, missing + others, stale.reply)
                # Reads stop (the commit alone checks) once one finds none of its keys.
                self._trusted = n_found == 0 and self.cache_max_keys > 0
        g.note_used()  # (what the read loaded): from here on, the decision's writes
        return g

    def attach_core(self, core: Any) -> None:
        """Hold the worker's cache in native identity core `core` (a ``NativeIdentityCore``
        made with ``overlay=True``), which decides on it: from now on `begin` takes the core's
        combination indices and returns the core's overlay (:class:`_NativeCache`), and
        `commit` writes what the core's decision changed. Attaching another core (or `None`:
        the Python cache again) drops the cache; attaching the same one changes nothing."""
        if core is self._core:
            return
        if self._core is not None:
            self._core.overlay_reset()  # (it may be attached again: it must not hold a cache)
        if core is not None:
            core.overlay_reset()
        self._core = core
        self._drop()

    def drop_cache(self) -> None:
        """Forget the worker's cache (between batches): the next batch reads afresh."""
        self._drop()

    def _drop(self) -> _Cache:
        """Forget the cache (and stop trusting it): the next read is a full one."""
        if self._cache.n_cached():
            self.n_cache_drops += 1
        if self._core is None:
            self._cache = _CachedGraph()
        else:
            self._core.overlay_reset()
            self._cache = _NativeCache(self._core)
        self._trusted = False
        self._chain = None
        return self._cache

    def _load(self, g: _Cache, wanted: list[str], checks: str,
              others: Collection[str] = ()) -> int:
        """Read the nodes `wanted` and their customers into `g` in one atomic read that first
        checks the tokens `checks` of cached customers; returns how many of `wanted` exist.
        Raises _StaleCache when a cached customer's record changed (with the reply for
        `wanted` + `others` read as if nothing were cached, when `others` were sent)."""
        self.n_reads += 1
        reply = self._call(
            "read the identity graph",
            lambda: self._read(args=[self.prefix, "\n".join(wanted), checks, "\n".join(others)]),
        )
        if reply == 0:
            raise _StaleCache()
        if reply[3]:
            raise _StaleCache(reply)
        return self._parse(g, wanted, reply)

    def _parse(self, g: _Cache, wanted: list[str], reply: list[Any]) -> int:
        """Put a read's nodes `wanted` and their customers into `g`; how many of `wanted` exist.
        Raises _StaleCache when a customer's record carries another token than the cached one."""
        nodes_s, cids_s, roots_s, _stale = reply
        cids = cids_s.split("\n") if cids_s else []
        raws = roots_s.split("\n") if cids_s else []
        roots: list[_LoadedRoot] = []
        for cid, raw, cached in zip(cids, raws, g.tokens(cids), strict=True):
            if not raw:
                raise ServiceUnavailable(
                    f"identity graph under {self.prefix!r} is inconsistent: node points at "
                    f"customer {cid} which has no record; was the prefix partially deleted?"
                )
            if cached is not None:
                if _token_of(raw) != cached:
                    raise _StaleCache()  # (the reply lacks the cached keys: read again)
                continue  # unchanged since cached: record, nodes and members
            ts, key, uniq, size, token = orjson.loads(raw)
            roots.append((cid, ts, key, uniq, size, token))
        nodes: list[_LoadedNode] = []
        for key, raw in zip(wanted, nodes_s.split("\n"), strict=True):
            if raw:
                cid, first, linked = raw.split("|")
                nodes.append((key, cid, int(first), int(linked)))
        g.load(roots, nodes)
        return len(nodes)

    def commit(self, graph: Any) -> bool:
        """Write the batch atomically; False if another writer changed what it used.

        The check is on customer records only (plus the absence of new identifiers): every
        change to a node rewrites its customer's record, stamped with this commit's token, so
        an unchanged token means unchanged members. Anything but a clean first-time success
        drops the cache.
        """
        g: _Cache = graph
        assert g is self._cache and g.open, "commit the graph this store's last begin() returned"
        if g.batch_empty():
            g.open = False
            return True
        token = uuid.uuid4().hex
        new_keys, moves, node_sets, adds, root_sets, gone = g.sections(token)
        now_ms = int(time.time() * 1000)
        outbox: list[str] = []
        for mr in g.merge_records:
            record = mr._asdict()
            del record["seq"]  # the script numbers it: `<seq> <JSON>`
            outbox += (_outbox_field(mr), orjson.dumps(
                {**record, "committed_ms": now_ms, "owner": self.owner}).decode())
        args: list[Any] = [
            self.prefix,
            token,
            self.token_ttl_s,
            new_keys,  # taken as new: must still be absent
            "",  # the root checks, left out while the chain holds
            moves,
            node_sets,
            adds,
            root_sets,
            gone,
            "\n".join(outbox),
            orjson.dumps({"committed_ms": now_ms, "owner": self.owner,
                          "links": [list(link) for link in g.link_records]}).decode()
            if g.link_records else "",
            self._chain or "",
            "",
        ]
        n_failed = 0
        try:
            while True:
                if self._chain is None:
                    args[4] = g.checks(noted=True)
                    args[13] = ""
                else:
                    args[13] = "1"  # checks left out: answer 3 if the chain broke
                # The same token on every retry: a commit whose reply was lost is not applied
                # twice.
                status, seq = self._call("commit identity decisions",
                                         lambda: self._commit(args=args))
                n_failed += self._n_failed
                if status != 3:
                    break
                self._chain, args[12] = None, ""  # another writer came in: send the checks
        except BaseException:
            self._drop()
            raise
        if status == 0:
            self.n_conflicting_commits += 1
            self._drop()
            return False
        g.commit_id = token if g.link_records else None
        number_merges(g.merge_records, int(seq))  # as the script numbered them in the outbox
        if status not in (1, 4) or n_failed:
            # Applied, but not in one clean call: Redis may have restarted in between, so
            # nothing in the cache is taken on trust any more.
            self._drop()
            return True
        g.committed(token)
        # Status 4: the chain held, the whole cache was current before this commit and is
        # after it. Status 1 after the checks: so it is if the cache is this batch's read only
        # (every customer in it was checked); otherwise parts of it may be stale.
        self._chain = token if status == 4 or self._fresh else None
        g.open = False
        return True

    # -- merge outbox --------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Say this store's owner is alive for the next `alive_ttl_s` (call well within it)."""
        if self.owner is not None:
            key = f"{self.prefix}:alive:{self.owner}"
            self._call("refresh the worker heartbeat",
                       lambda: self.client.set(key, int(time.time() * 1000), ex=self.alive_ttl_s))

    def outbox(self) -> list[OutboxEntry]:
        """Every merge not yet acknowledged, in commit order (`seq`, the global order of merges)."""
        raw = self._call("read the merge outbox", lambda: self.client.hgetall(f"{self.prefix}:mo"))
        out = []
        for value in raw.values():  # type: ignore[union-attr]
            seq_text, _, body = value.partition(" ") if value[:1] != "{" else ("0", "", value)
            d = orjson.loads(body)  # (entries written before `seq` existed start with '{')
            committed_ms, owner = d.pop("committed_ms"), d.pop("owner", None)
            d["seq"] = int(seq_text)
            out.append(OutboxEntry(d["seq"], committed_ms, owner, MergeRecord(**d)))
        return sorted(out, key=lambda e: (e.seq, e.committed_ms, e.merge.ts_ms, e.merge.loser))

    def pending_merges(self, older_than_s: float = 0.0, *, orphaned: bool = False
                       ) -> list[MergeRecord]:
        """Merge records committed at least `older_than_s` ago and not yet acknowledged.

        Their worker died between the commit and producing them (or is still busy): produce
        them again, then :meth:`ack_merges`. `orphaned`: only those whose owner has no live
        heartbeat (a recovery sweep must not race a live worker held up by an outage). In
        commit order: a cycle's two merges (L into W, then W back into L) only make sense in
        the order they were committed.
        """
        limit_ms = int((time.time() - older_than_s) * 1000)
        out = [e for e in self.outbox() if e.committed_ms <= limit_ms]
        if orphaned and out:
            live = self._live({e.owner for e in out})
            out = [e for e in out if e.owner not in live]
        return [e.merge for e in out]

    def pending_links(self, older_than_s: float = 0.0, *, orphaned: bool = False
                      ) -> list[tuple[str, list[IdentityLink]]]:
        """(commit id, links) of commits whose identity_links rows were not acknowledged as
        written, committed at least `older_than_s` ago (`orphaned`: by a worker whose heartbeat
        has lapsed). Write the rows (idempotent), then :meth:`ack_links`."""
        raw = self._call("read the links outbox", lambda: self.client.hgetall(f"{self.prefix}:lo"))
        limit_ms = int((time.time() - older_than_s) * 1000)
        entries = [(token, orjson.loads(value)) for token, value in raw.items()]  # type: ignore[union-attr]
        entries = [(t, d) for t, d in entries if d["committed_ms"] <= limit_ms]
        if orphaned:
            live = self._live({d["owner"] for _, d in entries})
            entries = [(t, d) for t, d in entries if d["owner"] not in live]
        return [(t, [IdentityLink(*link) for link in d["links"]])
                for t, d in sorted(entries, key=lambda e: (e[1]["committed_ms"], e[0]))]

    def ack_links(self, *commit_ids: str | None) -> None:
        """The identity_links rows of the commits `commit_ids` are written (idempotent; None
        stands for a commit without links)."""
        fields = [c for c in commit_ids if c is not None]
        if fields:
            self._call("acknowledge links",
                       lambda: self.client.hdel(f"{self.prefix}:lo", *fields))

    def _live(self, owners: Collection[str | None]) -> set[str]:
        """The owners among `owners` whose heartbeat has not lapsed."""
        named = sorted(o for o in owners if o is not None)
        if not named:
            return set()
        alive = self._call("read the worker heartbeats", lambda: self.client.mget(
            [f"{self.prefix}:alive:{o}" for o in named]))
        return {o for o, a in zip(named, alive, strict=True) if a is not None}  # type: ignore[arg-type]

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

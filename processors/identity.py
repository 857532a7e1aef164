"""Identity resolution: one customer out of anonymous, device, email, user and CRM identifiers.

Every event says "these identifiers are the same person". The resolver keeps a union-find graph
over normalized identifiers (one component = one customer) and resolves each event to a
canonical customer id that does not depend on arrival order: ``"c_" + hash[:16]`` of the
component's earliest identifier by ``(first_seen_ms, kind, hash)``. Replaying the same events in
any order and any duplication gives the same partition and the same ids (when no safeguard fires;
see ``docs/identity.md`` for exactly where safeguards depend on order).

Safeguards (:class:`~processors.config.IdentityConfig`): two different values of a unique kind
never share a customer, and a non-unique identifier stops linking known customers once it has
linked ``max_customers_per_identifier`` of them. A refused link is a :class:`Conflict` value.

Identifiers are hashed (SHA-256 with the salt) before anything is stored or emitted: the graph
itself only holds hashes. Storage sits behind :class:`IdentityStore`: in memory here, Redis in
:mod:`sinks.identity_redis`. The resolver decides; a store loads a batch's part of the graph
and commits the result atomically (or says it changed meanwhile, and the batch is decided again).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter
from typing import Final, Literal, NamedTuple, Protocol

from processors.config import IdentityConfig
from processors.errors import ServiceError
from processors.events import (
    IDENTITY_KINDS,
    IdentityKind,
    ResolvedEvent,
    TouchpointEvent,
    event_times_ms,
)

# One letter per kind prefixes every node key, so the kind travels with the hash.
KIND_CODE: Final[dict[str, str]] = {
    "anonymous_id": "a",
    "device_id": "d",
    "user_id": "u",
    "email": "e",
    "crm_id": "k",
}
KIND_OF_CODE: Final[dict[str, IdentityKind]] = {v: k for k, v in KIND_CODE.items()}  # type: ignore[misc]
# Which identifier an event resolves around when its identifiers cannot all be linked.
_RANK: Final[dict[str, int]] = {"u": 0, "k": 1, "e": 2, "d": 3, "a": 4}
_HASH_CACHE_MAX: Final = 1_000_000
_NEVER: Final = 1 << 62  # a settled limit no event time reaches (ms; year 9999 is < 2**48)
MAX_COMMIT_ATTEMPTS: Final = 50
_IDENTITIES: Final = attrgetter("identities")
_N_IGNORED: Final = attrgetter("n_ignored")
_FIRST_CHAR: Final = itemgetter(0)
_AFTER_FIRST_CHAR: Final = itemgetter(slice(1, None))
_NO_IDENTIFIER: Final = (
    "no usable identifier: every identity value is a placeholder such as '', 'null' or 'anonymous'"
)

MergeReason = Literal["shared_identifier", "earlier_evidence"]
ConflictReason = Literal["unique_kind", "max_customers"]


class MergeRecord(NamedTuple):
    """Customer `loser` is now `winner` (topic ``identity.merges``); downstream follows winner.

    `seq` is the merge's place in the store's commit order (1, 2, ...; 0 until committed). It
    orders the merges of one id when evidence arrived late (A into B, later B back into A): event
    times do not, and neither does the order in which workers write the rows.
    """

    loser: str
    winner: str
    evidence_event_id: str
    ts_ms: int
    reason: MergeReason
    seq: int = 0


class IdentityLink(NamedTuple):
    """A hashed identifier seen for a customer (ClickHouse ``identity_links``)."""

    customer_id: str
    kind: IdentityKind
    id_hash: str
    first_seen_ms: int


class Conflict(NamedTuple):
    """A link the event asked for and the safeguards refused: the customers stay apart."""

    reason: ConflictReason
    event_id: str
    ts_ms: int
    customer_a: str
    customer_b: str
    # The hashed identifiers that triggered it: the two unique values, or the saturated ones.
    id_hashes: tuple[str, ...]


@dataclass(slots=True)
class Root:
    """One customer: its earliest identifier (which names it), unique-kind values and size."""

    earliest_ts: int
    earliest_key: str
    uniq: dict[str, str]  # kind code -> node key, for unique kinds only
    size: int


def number_merges(merges: list[MergeRecord], last_seq: int) -> int:
    """Give `merges` the commit order `last_seq + 1, ...` in place; returns the last one given."""
    for i, mr in enumerate(merges, start=1):
        merges[i - 1] = mr._replace(seq=last_seq + i)
    return last_seq + len(merges)


def commit_attempt(store: IdentityStore, graph: object, attempt: int) -> bool:
    """Commit attempt number `attempt` of a batch decided on `graph` to `store`: True when it
    committed, False when the batch must be decided again on fresh state (ServiceError after
    MAX_COMMIT_ATTEMPTS failed attempts in a row)."""
    if store.commit(graph):  # type: ignore[arg-type]
        return True
    if attempt >= MAX_COMMIT_ATTEMPTS:  # pragma: no cover - pathological contention
        raise ServiceError(
            f"identity store changed under this batch {attempt} times in a row; "
            "is another writer looping on the same customers?"
        )
    return False


def customer_id_for(key: str) -> str:
    """The canonical id of a component whose earliest identifier is node `key`."""
    return "c_" + key[1:17]


class IdentityGraph:
    """Union-find over node keys, kept flat: every node points at its customer id directly.

    Used as the whole graph (in memory) or as one batch's loaded part of it (Redis). `moves`
    records which customers were folded into which, in order, so a store can replay the moves on
    members it did not load.
    """

    def __init__(self) -> None:
        self.cid: dict[str, str] = {}
        self.first: dict[str, int] = {}
        self.linked: dict[str, int] = {}  # node key -> merges of known customers it took part in
        self.roots: dict[str, Root] = {}
        self.members: dict[str, list[str]] = {}
        self.moves: list[tuple[str, str]] = []
        self.new_keys: list[str] = []
        # The batch's merge records, set before `commit`: a store can keep them in the same
        # atomic step as the merges (the Redis store's outbox) so they are never lost. A store's
        # commit numbers them in place (`MergeRecord.seq`, its global commit order).
        self.merge_records: list[MergeRecord] = []
        # Likewise the batch's new identity links (the rows of identity_links): a batch resolved
        # again after a crash finds its identifiers known and reports no links, so a store
        # keeps them until the rows are written. `commit_id` names the commit that kept them.
        self.link_records: list[IdentityLink] = []
        self.commit_id: str | None = None

    def add(self, key: str, ts: int, unique_codes: Collection[str]) -> str:
        cid = customer_id_for(key)
        self.cid[key] = cid
        self.first[key] = ts
        self.roots[cid] = Root(ts, key, {key[0]: key} if key[0] in unique_codes else {}, 1)
        self.members[cid] = [key]
        self.new_keys.append(key)
        return cid

    def attach(self, key: str, ts: int, cid: str, unique_codes: Collection[str]) -> None:
        """Add a new identifier straight into customer `cid`, which stays named as it is (its
        earliest identifier is earlier than `key`): what adding it alone and moving it in
        would leave, without the one-identifier customer in between."""
        self.cid[key] = cid
        self.first[key] = ts
        self.members[cid].append(key)
        self.new_keys.append(key)
        root = self.roots[cid]
        if key[0] in unique_codes:
            root.uniq[key[0]] = key
        root.size += 1

    def move(self, src: str, dst: str) -> None:
        """Fold customer `src` into `dst` (a merge, or a rename when `dst` has no root yet)."""
        moved = self.members.pop(src, [])
        cids = self.cid
        for key in moved:
            cids[key] = dst
        self.members.setdefault(dst, []).extend(moved)
        self.moves.append((src, dst))
        old = self.roots.pop(src)
        into = self.roots.get(dst)
        if into is None:
            self.roots[dst] = old
        else:
            if (old.earliest_ts, old.earliest_key) < (into.earliest_ts, into.earliest_key):
                into.earliest_ts, into.earliest_key = old.earliest_ts, old.earliest_key
            into.uniq.update(old.uniq)
            into.size += old.size

    def partition(self) -> dict[str, frozenset[str]]:
        """Customer id -> its node keys (of the loaded part, for a batch overlay)."""
        return {cid: frozenset(keys) for cid, keys in self.members.items()}


class IdentityStore(Protocol):
    """Where the graph lives. The resolver makes every decision; a store loads and commits.

    `begin(keys)` returns a graph holding at least those node keys and their customers' roots.
    `commit(graph)` writes the graph's changes atomically and returns True, or returns False
    when another writer changed any of the loaded nodes or roots since `begin` (then the batch
    is decided again on fresh state); when it returns True it has numbered the graph's merge
    records in place (`MergeRecord.seq`: 1, 2, ... in the order of all commits to the store).
    Both may block and retry while the store is unreachable.
    `holds_every_key`: `begin` hands out the whole graph whatever keys it is given, so the
    resolver need not gather them.
    """

    holds_every_key: bool

    def begin(self, keys: Collection[str]) -> IdentityGraph: ...

    def commit(self, graph: IdentityGraph) -> bool: ...

    def customer_of(self, key: str) -> str | None: ...

    def members_of(self, customer_id: str) -> list[tuple[str, int]]: ...


class InMemoryIdentityStore:
    """The whole graph in one process (the replay, tests). Plain data: it pickles."""

    holds_every_key = True

    def __init__(self) -> None:
        self.graph = IdentityGraph()
        self.merge_seq = 0  # merges committed so far (MergeRecord.seq)

    def begin(self, keys: Collection[str]) -> IdentityGraph:
        return self.graph

    def commit(self, graph: IdentityGraph) -> bool:
        self.merge_seq = number_merges(graph.merge_records, self.merge_seq)
        graph.moves.clear()  # the change log only matters to stores that replay it
        graph.new_keys.clear()
        graph.merge_records = []  # so is the outbox
        graph.link_records = []
        return True

    def customer_of(self, key: str) -> str | None:
        return self.graph.cid.get(key)

    def members_of(self, customer_id: str) -> list[tuple[str, int]]:
        g = self.graph
        return [(key, g.first[key]) for key in g.members.get(customer_id, [])]


@dataclass(slots=True)
class ResolveResult:
    """What one batch produced. `resolved` keeps the input order of the accepted events."""

    resolved: list[ResolvedEvent] = field(default_factory=list)
    merges: list[MergeRecord] = field(default_factory=list)
    links: list[IdentityLink] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    dead: list[tuple[TouchpointEvent, str]] = field(default_factory=list)
    # each dead event's position in the batch given to `resolve_batch`, as `dead` orders them
    dead_at: list[int] = field(default_factory=list)
    n_ignored_identifiers: int = 0
    n_attempts: int = 1
    commit_id: str | None = None  # the store's name for the commit (to acknowledge its links)

    def counters(self) -> dict[str, int]:
        return {
            "n_resolved": len(self.resolved),
            "n_dead": len(self.dead),
            "n_merges": len(self.merges),
            "n_links": len(self.links),
            "n_conflicts_unique": sum(c.reason == "unique_kind" for c in self.conflicts),
            "n_conflicts_cap": sum(c.reason == "max_customers" for c in self.conflicts),
            "n_ignored_identifiers": self.n_ignored_identifiers,
            "n_retries": self.n_attempts - 1,
        }


class _Decision:
    """The per-batch outputs while deciding (discarded when a commit must be retried)."""

    __slots__ = ("anchors", "conflicts", "dead", "dead_at", "link_keys", "merges", "n_ignored")

    def __init__(self) -> None:
        self.anchors: list[str | None] = []
        self.merges: list[MergeRecord] = []
        self.conflicts: list[Conflict] = []
        self.dead: list[tuple[TouchpointEvent, str]] = []
        self.dead_at: list[int] = []
        self.link_keys: dict[str, None] = {}
        self.n_ignored = 0


class _Combo:
    """One identity combination (an event's identity values): its node keys, how many of its
    values were ignored, and whether its keys were found settled in one customer (see
    :meth:`IdentityResolver._decide`): `settled_ts` is valid while `generation` is current.
    `limit` is the batch's: events at or after it change nothing (`_NEVER` when unsettled)."""

    __slots__ = ("anchor", "generation", "keys", "limit", "n_ignored", "settled_ts")

    def __init__(self, keys: tuple[str, ...], n_ignored: int) -> None:
        self.keys = keys
        self.anchor = keys[0] if keys else None
        self.n_ignored = n_ignored
        self.generation = 0
        self.settled_ts = 0
        self.limit = _NEVER


class IdentityResolver:
    """Resolve batches of accepted events to canonical customer ids.

    >>> resolver = IdentityResolver(IdentityConfig(), salt="s")
    >>> result = resolver.resolve_batch(events)            # doctest: +SKIP
    """

    def __init__(
        self, config: IdentityConfig, salt: str, store: IdentityStore | None = None
    ) -> None:
        self.config = config
        self.salt = salt
        self.store: IdentityStore = store if store is not None else InMemoryIdentityStore()
        self._salt_bytes = salt.encode()
        self._ignored = frozenset(v.strip().lower() for v in config.ignored_values)
        self._unique = frozenset(KIND_CODE[k] for k in config.unique_kinds)
        self._max_linked = config.max_customers_per_identifier
        self._caches: tuple[tuple[str, dict[str, str | None]], ...] = tuple(
            (kind, {}) for kind in IDENTITY_KINDS
        )
        self._cache_of = dict(self._caches)
        # identity values in field order -> their combination
        self._combos: dict[tuple[tuple[str, str], ...], _Combo] = {}
        # The graph the combinations' settled marks hold for; a new graph, a new generation.
        self._settled_graph: IdentityGraph | None = None
        self._generation = 0
        self.totals: dict[str, int] = {}

    # -- identifiers ---------------------------------------------------------------------------

    def key_of(self, kind: str, value: str) -> str | None:
        """The node key (kind code + salted SHA-256 hex) of a raw identifier; None if ignored."""
        cache = self._cache_of[kind]
        key = cache.get(value, "")
        if key != "":
            return key
        norm = value.strip()
        if kind == "email":
            norm = norm.lower()
        if norm.lower() in self._ignored:
            key = None
        else:
            digest = hashlib.sha256(self._salt_bytes + f"{kind}:{norm}".encode()).hexdigest()
            key = KIND_CODE[kind] + digest
        if len(cache) >= _HASH_CACHE_MAX:
            cache.clear()
        cache[value] = key
        return key

    def hash_of(self, kind: str, value: str) -> str | None:
        """The salted SHA-256 hex of a normalized identifier, as it appears in outputs."""
        key = self.key_of(kind, value)
        return None if key is None else key[1:]

    # -- queries -------------------------------------------------------------------------------

    def customer_of(self, kind: str, value: str) -> str | None:
        """The customer an identifier belongs to now, or None (unknown or ignored)."""
        key = self.key_of(kind, value)
        return None if key is None else self.store.customer_of(key)

    def identifiers_of(self, customer_id: str) -> list[IdentityLink]:
        """The hashed identifiers that make up a customer, earliest first."""
        out = [
            IdentityLink(customer_id, KIND_OF_CODE[key[0]], key[1:], first)
            for key, first in self.store.members_of(customer_id)
        ]
        out.sort(key=lambda link: (link.first_seen_ms, link.kind, link.id_hash))
        return out

    # -- resolving -----------------------------------------------------------------------------

    def resolve_batch(self, accepted: Sequence[TouchpointEvent]) -> ResolveResult:
        """Resolve a batch: events in event-time order, then one atomic commit to the store.

        Within a batch the outcome does not depend on the order of `accepted`. Applying the
        same batch twice changes nothing the second time (no merges, no links).
        """
        entries, ts_list, wanted, n_ignored = self._prepare(accepted)

        attempt = 0
        while True:
            attempt += 1
            graph = self.store.begin(wanted.keys())
            decision = self._decide(graph, accepted, entries, ts_list)
            graph.merge_records = decision.merges
            cids, first = graph.cid, graph.first
            link_keys = list(decision.link_keys)
            links: list[IdentityLink] = list(
                map(
                    tuple.__new__,
                    repeat(IdentityLink),
                    zip(
                        map(cids.__getitem__, link_keys),
                        map(KIND_OF_CODE.__getitem__, map(_FIRST_CHAR, link_keys)),
                        map(_AFTER_FIRST_CHAR, link_keys),
                        map(first.__getitem__, link_keys),
                        strict=True,
                    ),
                )
            )
            graph.link_records = links
            if commit_attempt(self.store, graph, attempt):
                break

        result = ResolveResult(
            merges=decision.merges,
            conflicts=decision.conflicts,
            dead=decision.dead,
            dead_at=decision.dead_at,
            n_ignored_identifiers=n_ignored,
            n_attempts=attempt,
        )
        anchors = decision.anchors
        events: Sequence[TouchpointEvent] = accepted
        if decision.dead:  # their anchors are None: keep the others, in order
            keep = [a is not None for a in anchors]
            events = list(compress(accepted, keep))
            anchors = list(compress(anchors, keep))
            ts_list = list(compress(ts_list, keep))
        result.resolved = list(
            map(ResolvedEvent, map(cids.__getitem__, anchors), events, repeat("all"), ts_list)  # type: ignore[arg-type]
        )
        result.links = links
        result.commit_id = graph.commit_id
        for name, value in result.counters().items():
            self.totals[name] = self.totals.get(name, 0) + value
        return result

    def _prepare(
        self, accepted: Sequence[TouchpointEvent]
    ) -> tuple[list[_Combo], list[int], dict[str, None], int]:
        """Each event's identity combination, event times, and every key the batch touches."""
        # Most events repeat an identity combination seen before (the same cookie, the same
        # cookie and device): one lookup of the combination replaces one per identifier. The
        # key is the identities' (kind, value) pairs in the message's order: the same
        # combination sent in another order only takes a second entry with the same keys.
        combos = self._combos
        pairs = list(map(tuple, map(dict.items, map(_IDENTITIES, accepted))))
        try:
            entries: list[_Combo] = list(map(combos.__getitem__, pairs))
        except KeyError:  # new combinations: made in order (a later event may repeat one)
            entries = list(map(combos.get, pairs))  # type: ignore[arg-type]
            for i, hit in enumerate(entries):
                if hit is None:
                    entries[i] = combos.get(pairs[i]) or self._combo_of(pairs[i], accepted[i])
        n_ignored = sum(map(_N_IGNORED, entries))
        ts_list = event_times_ms(accepted)
        # Each distinct combination once: its keys are what the store must load.
        # (A store that holds every key already, in memory, needs none gathered.)
        wanted = (
            {}
            if self.store.holds_every_key
            else dict.fromkeys(chain.from_iterable(e.keys for e in dict.fromkeys(entries)))
        )
        return entries, ts_list, wanted, n_ignored

    def _combo_of(self, combo: tuple[tuple[str, str], ...], ev: TouchpointEvent) -> _Combo:
        """A new combination, `ev`'s identities (pairs `combo`): made and kept."""
        # in kind order (the pairs are in the message's; one pair is in both)
        items = combo if len(combo) == 1 else ev.identities.items()
        keys = [self.key_of(k, v) for k, v in items]
        hit = _Combo(tuple(k for k in keys if k is not None), keys.count(None))
        if len(self._combos) >= _HASH_CACHE_MAX:
            self._combos.clear()
        self._combos[combo] = hit
        return hit

    def _decide(
        self,
        g: IdentityGraph,
        accepted: Sequence[TouchpointEvent],
        entries: list[_Combo],
        ts_list: list[int],
    ) -> _Decision:
        """Decide every event against graph `g`, in event-time order (ties by event id).

        An event whose identifiers are all known, all in one customer, and first seen no later
        than the event changes nothing, and stays so whatever else the batch does (customers
        only merge, first-seen times only move earlier): it is anchored at once, in any order.
        A combination found settled keeps that (with the latest first-seen time of its keys)
        for as long as the store hands out the same graph; so each distinct combination is
        looked at once per batch at most, and an event of a settled one costs one comparison.
        Every other event is decided in event-time order.
        """
        if g is not self._settled_graph:
            self._settled_graph = g
            self._generation += 1
        gen = self._generation
        cid_of = g.cid.get
        first = g.first
        first_of = first.__getitem__
        for entry in dict.fromkeys(entries):
            if entry.generation == gen:
                entry.limit = entry.settled_ts
                continue
            keys = entry.keys
            if keys and (c0 := cid_of(keys[0])) is not None:
                if len(keys) == 1:
                    ts = first_of(keys[0])
                elif list(map(cid_of, keys)).count(c0) == len(keys):
                    ts = max(map(first_of, keys))
                else:
                    entry.limit = _NEVER
                    continue
                # settled: mark it, with its keys' latest first-seen time
                entry.generation = gen
                entry.limit = entry.settled_ts = ts
                continue
            entry.limit = _NEVER
        anchors: list[str | None] = [
            e.anchor if ts >= e.limit else None for e, ts in zip(entries, ts_list, strict=True)
        ]
        d = _Decision()
        d.anchors = anchors
        slow = [i for i, a in enumerate(anchors) if a is None]
        if not slow:
            return d
        # Event-time order, ties by event id (then input order): sorted by time, then each run
        # of equal times by event id (stable sorts; ties are rare, and integer keys are cheap).
        slow.sort(key=ts_list.__getitem__)
        times = list(map(ts_list.__getitem__, slow))
        if len(set(times)) < len(slow):
            for t in {times[k] for k in range(1, len(times)) if times[k - 1] == times[k]}:
                run = slice(bisect_left(times, t), bisect_right(times, t))
                slow[run] = sorted(slow[run], key=lambda i: accepted[i].event_id)
        unique = self._unique
        link_keys = d.link_keys
        for i in slow:
            entry = entries[i]
            keys = entry.keys
            if not keys:
                d.dead.append((accepted[i], _NO_IDENTIFIER))
                d.dead_at.append(i)
                continue
            # Fast paths: every identifier known, already in one customer, no earlier evidence;
            # or one identifier, new: a new customer (what `_apply_event` does then).
            ts = ts_list[i]
            k0 = keys[0]
            c0 = cid_of(k0)
            if c0 is None:
                if len(keys) == 1:
                    g.add(k0, ts, unique)
                    link_keys[k0] = None
                    anchors[i] = k0
                    continue
            elif ts >= first[k0]:
                for k in keys[1:]:
                    if cid_of(k) != c0 or ts < first[k]:
                        break
                else:
                    anchors[i] = k0
                    continue
            anchors[i] = self._apply_event(g, d, accepted[i], keys)
        return d

    def _apply_event(
        self, g: IdentityGraph, d: _Decision, ev: TouchpointEvent, keys: Sequence[str]
    ) -> str:
        ts = ev.ts_ms
        cids = g.cid
        first = g.first
        fresh: list[str] = []
        for key in keys:
            cid = cids.get(key)
            if cid is None:
                fresh.append(key)
                d.link_keys[key] = None
                continue
            if ts < first[key]:
                first[key] = ts
                d.link_keys[key] = None
                root = g.roots[cid]
                if (ts, key) < (root.earliest_ts, root.earliest_key):
                    root.earliest_ts, root.earliest_key = ts, key
                    new_cid = customer_id_for(key)
                    if new_cid != cid:
                        g.move(cid, new_cid)
                        d.merges.append(
                            MergeRecord(cid, new_cid, ev.event_id, ts, "earlier_evidence")
                        )
        # The known customers, after any rename above (fresh keys have none yet).
        known = {c for k in keys if (c := cids.get(k)) is not None}
        if not fresh:
            if len(known) == 1:
                return keys[0]
            return self._fold(g, d, ev, keys, set())
        if len(known) <= 1 and self._join_fresh(g, known, fresh, ts):
            return keys[0]
        unique = self._unique
        for key in fresh:
            g.add(key, ts, unique)
        return self._fold(g, d, ev, keys, set(fresh))

    def _join_fresh(
        self, g: IdentityGraph, known: Collection[str], fresh: list[str], ts: int
    ) -> bool:
        """The most common case, done directly: new identifiers join at most one known customer.

        Exactly what :meth:`_fold` decides in that case, when no safeguard can fire and the
        known customer stays the winner (its earliest identifier is earlier than the new ones):
        the new identifiers go into it, no merge record (the losers were unknown), no cap
        charge (that needs two known customers). All new: one new customer named after the
        smallest key (the earliest, at one event time). Returns False, having changed nothing,
        when the case is any other; then :meth:`_fold` decides.
        """
        unique = self._unique
        if known:
            (target,) = known
            root = g.roots[target]
            earliest = (root.earliest_ts, root.earliest_key)
            uniq = root.uniq
            for key in fresh:
                if key[0] in uniq or (ts, key) < earliest:
                    return False
        else:
            if len(fresh) == 1:
                g.add(fresh[0], ts, unique)
                return True
            target = g.add(min(fresh), ts, unique)
        cids = g.cid
        for key in fresh:
            if key not in cids:  # (the smallest was added above)
                g.attach(key, ts, target, unique)
        return True

    def _saturated(self, g: IdentityGraph, key: str) -> bool:
        return key[0] not in self._unique and 1 + g.linked.get(key, 0) >= self._max_linked

    def _fold(
        self,
        g: IdentityGraph,
        d: _Decision,
        ev: TouchpointEvent,
        keys: Sequence[str],
        fresh: set[str],
    ) -> str:
        """Link the event's components one by one, strongest first, refusing unsafe links."""
        cids = g.cid
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(cids[key], []).append(key)

        def strength(item: tuple[str, list[str]]) -> tuple[tuple[bool, int], int, str]:
            cid, members = item
            root = g.roots[cid]
            best = min((self._saturated(g, k), _RANK[k[0]]) for k in members)
            return best, root.earliest_ts, root.earliest_key

        ordered = sorted(groups.items(), key=strength)
        anchor = min(ordered[0][1], key=lambda k: _RANK[k[0]])
        group_cid, group_keys = ordered[0]
        group_known = not all(k in fresh for k in group_keys)
        for cid, comp_keys in ordered[1:]:
            cid = cids[comp_keys[0]]  # an earlier fold may have renamed it
            group_cid = cids[group_keys[0]]
            if cid == group_cid:
                group_keys = group_keys + comp_keys
                continue
            g_root, c_root = g.roots[group_cid], g.roots[cid]
            clash = [
                (g_root.uniq[code], key)
                for code, key in c_root.uniq.items()
                if code in g_root.uniq and g_root.uniq[code] != key
            ]
            if clash:
                d.conflicts.append(
                    Conflict(
                        "unique_kind",
                        ev.event_id,
                        ev.ts_ms,
                        group_cid,
                        cid,
                        tuple(sorted(h[1:] for pair in clash for h in pair)),
                    )
                )
                continue
            comp_known = not all(k in fresh for k in comp_keys)
            if group_known and comp_known:
                g_ok = [k for k in group_keys if not self._saturated(g, k)]
                c_ok = [k for k in comp_keys if not self._saturated(g, k)]
                if not g_ok or not c_ok:
                    blocked = [k for k in group_keys + comp_keys if self._saturated(g, k)]
                    d.conflicts.append(
                        Conflict(
                            "max_customers",
                            ev.event_id,
                            ev.ts_ms,
                            group_cid,
                            cid,
                            tuple(sorted(k[1:] for k in blocked)),
                        )
                    )
                    continue
                # The non-saturated identifiers carry the link; saturated ones are passengers.
                for k in g_ok + c_ok:
                    if k[0] not in self._unique:
                        g.linked[k] = g.linked.get(k, 0) + 1
            if (c_root.earliest_ts, c_root.earliest_key) < (
                g_root.earliest_ts,
                g_root.earliest_key,
            ):
                winner, loser, loser_known = cid, group_cid, group_known
            else:
                winner, loser, loser_known = group_cid, cid, comp_known
            g.move(loser, winner)
            if loser_known:
                winner_known = comp_known if winner == cid else group_known
                reason: MergeReason = "shared_identifier" if winner_known else "earlier_evidence"
                d.merges.append(MergeRecord(loser, winner, ev.event_id, ev.ts_ms, reason))
            group_keys = group_keys + comp_keys
            group_known = group_known or comp_known
        return anchor


def resolve_identities(
    config: IdentityConfig, salt: str, events: Iterable[TouchpointEvent]
) -> tuple[IdentityResolver, ResolveResult]:
    """Resolve all `events` in memory, in one batch (the replay's entry point)."""
    resolver = IdentityResolver(config, salt)
    return resolver, resolver.resolve_batch(list(events))


__all__ = [
    "IDENTITY_KINDS",
    "Conflict",
    "IdentityGraph",
    "IdentityLink",
    "IdentityResolver",
    "IdentityStore",
    "InMemoryIdentityStore",
    "MergeRecord",
    "ResolveResult",
    "Root",
    "customer_id_for",
    "resolve_identities",
]


# -- the order in which merges reach the partitions -------------------------------------------


def merges_to_send(own: Sequence[MergeRecord], outbox: Sequence[tuple[int, MergeRecord]]
                   ) -> list[MergeRecord]:
    """What a batch that committed the merges `own` produces, in order: first the merges of other
    batches still unsent (`outbox`, the store's unacknowledged merges as (commit sequence,
    record)) that were committed before `own` and touch `own`'s customers (directly or through
    each other), in commit order, then `own`.

    Related merges must reach the partitions in commit order: L into W, then W back into L, sent
    by two workers at once, could otherwise announce the second at L's partition before the
    first detached L there, and each partition would then wait for good for a transfer that the
    other had passed on (a crossed cycle). Re-sending another worker's earlier merge is harmless
    (each step of a merge is idempotent; its own sender's copy is dropped as a duplicate).
    """
    mine = {(mr.loser, mr.evidence_event_id) for mr in own}
    own_seq = min((seq for seq, mr in outbox if (mr.loser, mr.evidence_event_id) in mine),
                  default=None)
    customers = {c for mr in own for c in (mr.loser, mr.winner)}
    earlier: list[MergeRecord] = []
    for seq, mr in sorted(outbox, key=lambda e: e[0], reverse=True):
        if (own_seq is not None and seq >= own_seq) or (mr.loser, mr.evidence_event_id) in mine:
            continue
        if mr.loser in customers or mr.winner in customers:
            earlier.append(mr)
            customers.update((mr.loser, mr.winner))
    return [*reversed(earlier), *own]


def merge_waves(merges: Sequence[MergeRecord]) -> list[list[MergeRecord]]:
    """`merges` (in commit order) cut into consecutive waves in which no two share a customer.

    A wave's "expect" messages are produced, then its "merge" messages, each step confirmed by
    the broker before the next: a later merge of a customer is never announced before an
    earlier one has detached it.
    """
    waves: list[list[MergeRecord]] = []
    seen: set[str] = set()
    for mr in merges:
        if not waves or mr.loser in seen or mr.winner in seen:
            waves.append([])
            seen = set()
        waves[-1].append(mr)
        seen.update((mr.loser, mr.winner))
    return waves

"""The identity resolver with its graph and decisions in Rust, and the engine choice.

:class:`NativeIdentityResolver` has :class:`~processors.identity.IdentityResolver`'s contract
(``resolve_batch(events) -> ResolveResult``, the same outputs to the last field, merges numbered
by ``seq`` as :class:`~processors.identity.InMemoryIdentityStore` numbers them) on the in-memory
graph, and on a store that can hold its worker cache in the core (the Redis store: the core in
overlay mode holds the cached part of the graph and builds the commit; docs/identity.md, "Redis
store", "Deciding in Rust"). The graph (union-find with a flat customer per node,
first-seen times, roots, members, link counts), every decision (the settled marks, the fast
paths, ``_apply_event``, ``_join_fresh``, ``_fold``), hashing of ASCII identifiers, each
event's combination lookup, event times and every output (the ``ResolvedEvent``s and the
record tuples) are the Rust port in ``native/identity/src/lib.rs`` (the separate package
``journeymap_native``, built by maturin: ``pip install ./native/identity``): one batch is
``prepare_batch`` (each event's ``__dict__`` read once) and ``decide_batch``. Identifiers that
are not ASCII go through ``key_of``.

:func:`new_resolver` picks the engine (``identity.engine``: ``auto``, ``python``, ``native``).
A native resolver pickles as plain data (its graph) and unpickles as a native one, or as the
Python resolver over the same graph where the module is not installed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from operator import attrgetter
from typing import Any

from processors.config import IdentityConfig
from processors.errors import ConfigError
from processors.events import ResolvedEvent, TouchpointEvent, event_times_ms
from processors.identity import (
    _HASH_CACHE_MAX,
    _NO_IDENTIFIER,
    Conflict,
    IdentityGraph,
    IdentityLink,
    IdentityResolver,
    IdentityStore,
    InMemoryIdentityStore,
    MergeRecord,
    ResolveResult,
    Root,
    _Combo,
    commit_attempt,
)
from processors.native import import_core, not_built

# (optional: the Python resolver does the same)
_module, NATIVE_IMPORT_ERROR = import_core("journeymap_native")
NativeIdentityCore: Any = getattr(_module, "NativeIdentityCore", None)
native_event_times_ms: Any = getattr(_module, "event_times_ms", None)
NATIVE_AVAILABLE = NativeIdentityCore is not None
# Built from sources with the overlay mode (a store's worker cache in the core): an older build
# decides in memory only.
NATIVE_OVERLAY = NATIVE_AVAILABLE and hasattr(NativeIdentityCore, "overlay_open")
_NATIVE: attrgetter[int] = attrgetter("native")
# A graph as plain data: ([(key, customer, first_seen, linked)],
# [(customer, earliest_ts, earliest_key, [(code, key)], size, [member keys])]).
GraphState = tuple[list[tuple[str, str, int, int]],
                   list[tuple[str, int, str, list[tuple[str, str]], int, list[str]]]]


def _not_built() -> ConfigError:
    return not_built("identity", "identity", "journeymap_native", NATIVE_IMPORT_ERROR,
                     "`pip install ./native/identity`")


class _NativeCombo(_Combo):
    __slots__ = ("native",)
    native: int  # the combination's index in the core


def graph_from_state(state: GraphState) -> IdentityGraph:
    """An :class:`IdentityGraph` holding `state` (the form of ``NativeIdentityCore.export``)."""
    nodes, roots = state
    g = IdentityGraph()
    for key, cid, first, linked in nodes:
        g.cid[key], g.first[key] = cid, first
        if linked:
            g.linked[key] = linked
    for cid, ts, key, uniq, size, members in roots:
        g.roots[cid] = Root(ts, key, dict(uniq), size)
        g.members[cid] = list(members)
    return g


class NativeInMemoryStore:
    """The graph, held by the Rust core; `graph` copies it out as an :class:`IdentityGraph`.

    The native resolver decides and commits in one call, so `begin` and `commit` are not part
    of its work; `merge_seq` counts the merges committed, as :class:`InMemoryIdentityStore`'s.
    """

    holds_every_key = True

    def __init__(self, core: Any) -> None:
        self.core = core
        self.merge_seq = 0

    @property
    def graph(self) -> IdentityGraph:
        return graph_from_state(self.core.export())

    def begin(self, keys: Collection[str]) -> IdentityGraph:
        raise TypeError("the native core decides and commits in one call (resolve_batch)")

    def commit(self, graph: IdentityGraph) -> bool:
        raise TypeError("the native core decides and commits in one call (resolve_batch)")

    def customer_of(self, key: str) -> str | None:
        return self.core.customer_of(key)  # type: ignore[no-any-return]

    def members_of(self, customer_id: str) -> list[tuple[str, int]]:
        return self.core.members_of(customer_id)  # type: ignore[no-any-return]


class NativeIdentityResolver(IdentityResolver):
    """:class:`IdentityResolver` deciding in Rust (see the module doc): on the in-memory store,
    or on `store`, a store that can hold its worker cache in the core (the Redis store: its
    ``attach_core``; the core then holds only the cached part of the graph, see
    docs/identity.md, "Redis store").

    `combo_cap` bounds the identity combinations the core remembers (the same bound as the
    Python resolver's, 1,000,000): when a batch starts with that many, they are all forgotten
    and made again as they come (a cache: the outputs do not change). On a store, `key_cap`
    bounds the node keys the core has interned (cached or not) the same way: the store's cache
    is dropped with them.
    """

    def __init__(
        self,
        config: IdentityConfig,
        salt: str,
        native_hashing: bool = True,
        native_prepare: bool = True,
        store: IdentityStore | None = None,
    ) -> None:
        if NativeIdentityCore is None:
            raise _not_built()
        super().__init__(config, salt)
        self.core = NativeIdentityCore(
            "".join(sorted(self._unique)), self._max_linked, salt, sorted(self._ignored),
            overlay=store is not None,
        )
        self.key_cap = 2 * _HASH_CACHE_MAX
        # New identifiers hashed in Rust (ASCII values; others go through `key_of`)
        self.native_hashing = native_hashing
        # Each event's combination looked up in Rust from its identities (else `_prepare`)
        self.native_prepare = native_prepare and native_hashing
        self.combo_cap = _HASH_CACHE_MAX
        # Event times computed in Rust (the same values as `events.event_times_ms`, cached in
        # each event alike); else by `event_times_ms`
        self.native_times = True
        self.overlay = store is not None
        if store is None:
            self.store = NativeInMemoryStore(self.core)  # type: ignore[assignment]
        else:
            attach = getattr(store, "attach_core", None)
            if attach is None:
                raise ConfigError(
                    f"identity.engine = 'native' cannot decide on {type(store).__name__} (it "
                    "cannot hold the native core's cache): use identity.engine 'auto' or 'python'"
                )
            attach(self.core)
            self.store = store

    def __reduce__(self) -> tuple[Any, ...]:
        if self.overlay:
            raise TypeError("a resolver on a shared store does not pickle (its graph is there)")
        store: NativeInMemoryStore = self.store  # type: ignore[assignment]
        return (_restore, (self.config, self.salt, self.core.export(), store.merge_seq,
                           dict(self.totals)))

    def _combo_of(self, combo: tuple[tuple[str, str], ...], ev: TouchpointEvent) -> _Combo:
        items = combo if len(combo) == 1 else ev.identities.items()
        raw = self.core.add_combo_raw(list(items)) if self.native_hashing else None
        if raw is None:
            keys = [self.key_of(k, v) for k, v in items]
            hit = _NativeCombo(tuple(k for k in keys if k is not None), keys.count(None))
            hit.native = self.core.add_combo(list(hit.keys))
        else:
            index, hashed, n_ignored = raw
            hit = _NativeCombo(tuple(hashed), n_ignored)
            hit.native = index
        self._combos[combo] = hit
        return hit

    def resolve_batch(self, accepted: Sequence[TouchpointEvent]) -> ResolveResult:
        if self.core.n_combos() >= self.combo_cap or (
                self.overlay and self.core.n_keys() >= self.key_cap):
            if self.overlay:  # (between batches: the store's cache is not open)
                self.store.drop_cache()  # type: ignore[attr-defined]
                self.core.forget_keys()
            self.core.clear_combos()  # both sides: Python's hold core indices
            self._combos.clear()
        # the core reads each event once (its identities and time), keeps the batch and
        # decides it in one more call; Python only makes combinations the core cannot
        events = accepted if type(accepted) is list else list(accepted)
        core = self.core
        if self.native_prepare:
            n_ignored, missing = core.prepare_batch(events, self.native_times)
            for i in missing:  # Python's strip/lower (a value that is not ASCII)
                pairs = tuple(dict.items(events[i].identities))
                entry = self._combos.get(pairs) or self._combo_of(pairs, events[i])
                core.set_combo(i, entry.native)  # type: ignore[attr-defined]
                n_ignored += entry.n_ignored
            if not self.native_times:
                core.set_times(event_times_ms(events))
        else:
            entries, ts_list, _wanted, n_ignored = self._prepare(events)
            core.set_combos(list(map(_NATIVE, entries)))
            core.set_times(ts_list)
        if self.overlay:  # (a no-op unless another resolver took the store meanwhile)
            self.store.attach_core(core)  # type: ignore[attr-defined]
        attempt = 0
        while True:
            attempt += 1
            overlay = self.store.begin(core.batch_combos()) if self.overlay else None
            # every output made in Rust: the resolved events (dead ones left out) and the
            # records; merges numbered here in memory (0 on a store, which numbers them)
            store: NativeInMemoryStore = self.store  # type: ignore[assignment]
            resolved, merge_records, conflicts, link_records, dead = core.decide_batch(
                events, ResolvedEvent, MergeRecord, Conflict, IdentityLink,
                None if overlay is not None else store.merge_seq)
            if overlay is None:
                store.merge_seq += len(merge_records)
                break
            # the store commits what the core noted, and numbers the merges in place
            overlay.merge_records, overlay.link_records = merge_records, link_records
            if commit_attempt(self.store, overlay, attempt):
                break
        result = ResolveResult(
            merges=merge_records,
            conflicts=conflicts,
            dead=[(events[i], _NO_IDENTIFIER) for i in dead],
            dead_at=dead,
            n_ignored_identifiers=n_ignored,
            n_attempts=attempt,
            commit_id=None if overlay is None else overlay.commit_id,
        )
        result.resolved = resolved
        result.links = link_records
        for name, value in result.counters().items():
            self.totals[name] = self.totals.get(name, 0) + value
        return result


def _restore(config: IdentityConfig, salt: str, state: GraphState, merge_seq: int,
             totals: dict[str, int]) -> IdentityResolver:
    """Unpickle a native resolver: native again, or Python over the same graph without the
    module (a checkpoint written where it was installed, read where it is not)."""
    if NativeIdentityCore is None:
        store = InMemoryIdentityStore()
        store.graph = graph_from_state(state)
        resolver = IdentityResolver(config, salt, store)
    else:
        resolver = NativeIdentityResolver(config, salt)
        resolver.core.load(*state)
        store = resolver.store  # type: ignore[assignment]
    store.merge_seq = merge_seq
    resolver.totals = totals
    return resolver


def new_resolver(config: IdentityConfig, salt: str,
                 store: IdentityStore | None = None) -> IdentityResolver:
    """The resolver for `config.engine`: the native one when it is installed (`auto`) or asked
    for (`native`: a :class:`ConfigError` if it is not installed), else the Python one; on the
    in-memory graph (`store` None) or on `store` (the Redis store: the core holds its worker
    cache; `auto` takes the Python resolver for a store that cannot hold it, `native` raises
    :class:`ConfigError`)."""
    engine = config.engine
    native_store = store is None or (hasattr(store, "attach_core") and NATIVE_OVERLAY)
    if engine == "python" or (engine == "auto" and not (NATIVE_AVAILABLE and native_store)):
        return IdentityResolver(config, salt, store if store is not None else
                                InMemoryIdentityStore())
    if store is not None and NATIVE_AVAILABLE and not NATIVE_OVERLAY:
        raise ConfigError(
            "identity.engine = 'native' on a store needs the native identity core built from "
            "these sources (the installed journeymap_native has no overlay mode): run "
            "scripts/build-native.sh, or set identity.engine to 'auto' or 'python'"
        )
    return NativeIdentityResolver(config, salt, store=store)


def engine_of(resolver: IdentityResolver) -> str:
    """'native' or 'python': which engine `resolver` decides with (for logs)."""
    return "native" if isinstance(resolver, NativeIdentityResolver) else "python"


__all__ = [
    "NATIVE_AVAILABLE",
    "NATIVE_OVERLAY",
    "NativeIdentityResolver",
    "NativeInMemoryStore",
    "engine_of",
    "graph_from_state",
    "new_resolver",
]

"""Experiment (issue 3): the in-memory identity resolver with its graph and decisions in Rust.

:class:`NativeIdentityResolver` has :class:`~processors.identity.IdentityResolver`'s contract
(``resolve_batch(events) -> ResolveResult``, the same outputs to the last field) for the
in-memory store only. Python still reads each event's identities and time, hashes new
identifiers (``key_of``) and builds the outputs; the graph (union-find with a flat customer per
node, first-seen times, roots, members, link counts) and every decision (the settled marks,
the fast paths, ``_apply_event``, ``_join_fresh``, ``_fold``) are the Rust port in
``native/identity/src/lib.rs`` (module ``journeymap_native``, built with maturin).
``bench/bench_identity_native.py --fingerprint`` checks it against the Python resolver.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import compress, repeat, starmap
from operator import attrgetter

from journeymap_native import NativeIdentityCore  # type: ignore[import-not-found]

from processors.config import IdentityConfig
from processors.events import ResolvedEvent, TouchpointEvent, event_times_ms
from processors.identity import (
    _HASH_CACHE_MAX,
    _NO_IDENTIFIER,
    Conflict,
    IdentityGraph,
    IdentityLink,
    IdentityResolver,
    MergeRecord,
    ResolveResult,
    Root,
    _Combo,
    number_merges,
)

_NATIVE: attrgetter[int] = attrgetter("native")


class _NativeCombo(_Combo):
    __slots__ = ("native",)


class NativeInMemoryStore:
    """The graph, held by the Rust core; `graph` copies it out as an :class:`IdentityGraph`."""

    holds_every_key = True

    def __init__(self, core: NativeIdentityCore) -> None:
        self.core = core
        self.merge_seq = 0

    @property
    def graph(self) -> IdentityGraph:
        nodes, roots = self.core.export()
        g = IdentityGraph()
        for key, cid, first, linked in nodes:
            g.cid[key], g.first[key] = cid, first
            if linked:
                g.linked[key] = linked
        for cid, ts, key, uniq, size, members in roots:
            g.roots[cid] = Root(ts, key, dict(uniq), size)
            g.members[cid] = members
        return g

    def begin(self, keys: Collection[str]) -> IdentityGraph:  # pragma: no cover - not used
        raise NotImplementedError("the native core decides and commits in one call")

    def commit(self, graph: IdentityGraph) -> bool:  # pragma: no cover - not used
        raise NotImplementedError("the native core decides and commits in one call")

    def customer_of(self, key: str) -> str | None:
        return self.core.customer_of(key)

    def members_of(self, customer_id: str) -> list[tuple[str, int]]:
        return self.core.members_of(customer_id)


class NativeIdentityResolver(IdentityResolver):
    """:class:`IdentityResolver` on the in-memory store, deciding in Rust (see the module doc)."""

    def __init__(
        self,
        config: IdentityConfig,
        salt: str,
        native_hashing: bool = True,
        native_prepare: bool = True,
    ) -> None:
        super().__init__(config, salt)
        self.core = NativeIdentityCore(
            "".join(sorted(self._unique)), self._max_linked, salt, sorted(self._ignored)
        )
        # New identifiers hashed in Rust (ASCII values; others go through `key_of`)
        self.native_hashing = native_hashing
        # Each event's combination looked up in Rust from its identities (else `_prepare`)
        self.native_prepare = native_prepare and native_hashing
        self.store = NativeInMemoryStore(self.core)  # type: ignore[assignment]

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
        if len(self._combos) >= _HASH_CACHE_MAX:
            self._combos.clear()
        self._combos[combo] = hit
        return hit

    def resolve_batch(self, accepted: Sequence[TouchpointEvent]) -> ResolveResult:
        if self.native_prepare:
            indices, n_ignored = self.core.prepare(accepted)
            for i in [i for i, c in enumerate(indices) if c < 0]:  # Python's strip/lower
                pairs = tuple(dict.items(accepted[i].identities))
                entry = self._combos.get(pairs) or self._combo_of(pairs, accepted[i])
                indices[i] = entry.native  # type: ignore[attr-defined]
                n_ignored += entry.n_ignored
            ts_list = event_times_ms(accepted)
        else:
            entries, ts_list, _wanted, n_ignored = self._prepare(accepted)
            indices = list(map(_NATIVE, entries))
        anchors, merges, conflicts, links, dead = self.core.decide(accepted, indices, ts_list)
        merge_records = list(starmap(MergeRecord, merges))
        store: NativeInMemoryStore = self.store  # type: ignore[assignment]
        store.merge_seq = number_merges(merge_records, store.merge_seq)
        result = ResolveResult(
            merges=merge_records,
            conflicts=list(map(Conflict._make, conflicts)),
            dead=[(accepted[i], _NO_IDENTIFIER) for i in dead],
            n_ignored_identifiers=n_ignored,
        )
        events: Sequence[TouchpointEvent] = accepted
        if dead:
            keep = [a is not None for a in anchors]
            events = list(compress(accepted, keep))
            anchors = list(compress(anchors, keep))
            ts_list = list(compress(ts_list, keep))
        result.resolved = list(map(ResolvedEvent, anchors, events, repeat("all"), ts_list))
        result.links = list(map(IdentityLink._make, links))
        for name, value in result.counters().items():
            self.totals[name] = self.totals.get(name, 0) + value
        return result


__all__ = ["NativeIdentityResolver", "NativeInMemoryStore"]

"""Identity merges do not depend on arrival order, are idempotent, and respect the safeguards."""

from __future__ import annotations

import hashlib
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.config import IdentityConfig
from processors.events import TouchpointEvent
from processors.identity import KIND_CODE, IdentityResolver, InMemoryIdentityStore
from tests.factories import T0_MS, event

SALT = "prop"
KINDS = ("anonymous_id", "device_id", "user_id", "email", "crm_id")
NO_SAFEGUARDS = IdentityConfig(unique_kinds=[], max_customers_per_identifier=10**9)


@st.composite
def events(draw: st.DrawFn, max_events: int = 25) -> list[TouchpointEvent]:
    n = draw(st.integers(1, max_events))
    out = []
    for i in range(n):
        kinds = draw(st.sets(st.sampled_from(KINDS), min_size=1, max_size=3))
        ids = {k: draw(st.sampled_from([f"{k[0]}{j}" for j in range(4)] + ["null"])) for k in kinds}
        out.append(event(event_id=f"e{i}", at_ms=T0_MS + draw(st.integers(0, 20)), **ids))
    return out


def batches(evs: list[TouchpointEvent], cuts: list[int]) -> list[list[TouchpointEvent]]:
    points = sorted({c % (len(evs) + 1) for c in cuts} | {0, len(evs)})
    return [evs[a:b] for a, b in itertools.pairwise(points)]


def run(config: IdentityConfig, parts: list[list[TouchpointEvent]]) -> IdentityResolver:
    r = IdentityResolver(config, SALT)
    for part in parts:
        r.resolve_batch(part)
    return r


def partition(r: IdentityResolver) -> dict[str, frozenset[str]]:
    assert isinstance(r.store, InMemoryIdentityStore)
    return r.store.graph.partition()


def key(kind: str, value: str) -> str:
    return KIND_CODE[kind] + hashlib.sha256(f"{SALT}{kind}:{value}".encode()).hexdigest()


def oracle(evs: list[TouchpointEvent]) -> dict[str, frozenset[str]]:
    """Connected components of the evidence graph, each named by its earliest identifier."""
    parent: dict[str, str] = {}
    first: dict[str, int] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    for ev in evs:
        keys = [key(k, v) for k, v in ev.identities.items() if v != "null"]
        for k in keys:
            parent.setdefault(k, k)
            first[k] = min(first.get(k, ev.ts_ms), ev.ts_ms)
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
    comps: dict[str, set[str]] = {}
    for k in parent:
        comps.setdefault(find(k), set()).add(k)
    out = {}
    for members in comps.values():
        earliest = min(members, key=lambda k: (first[k], k))
        out["c_" + earliest[1:17]] = frozenset(members)
    return out


@settings(max_examples=150, deadline=None)
@given(
    evs=events(),
    perm=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(0, 50), max_size=5),
    dup=st.lists(st.integers(0, 24)),
)
def test_without_safeguards_any_order_split_or_duplication_gives_the_evidence_components(
    evs: list[TouchpointEvent], perm: object, cuts: list[int], dup: list[int]
) -> None:
    shuffled = evs + [evs[i % len(evs)] for i in dup]
    perm.shuffle(shuffled)  # type: ignore[attr-defined]
    r = run(NO_SAFEGUARDS, batches(shuffled, cuts))
    assert partition(r) == oracle(evs)
    # Every event, followed through the merge chain, ends on its identifiers' customer.
    last = r.resolve_batch(evs)
    assert last.merges == [] and last.links == []


@settings(max_examples=150, deadline=None)
@given(evs=events(), cuts=st.lists(st.integers(0, 50), max_size=5))
def test_merge_records_lead_every_earlier_customer_id_to_the_final_one(
    evs: list[TouchpointEvent], cuts: list[int]
) -> None:
    """A downstream that applies each batch's merges in order, then its events, ends right.

    (An id can come back: a late event can make an absorbed identifier the earliest again.)
    """
    r = IdentityResolver(NO_SAFEGUARDS, SALT)
    state: dict[str, str] = {}  # event id -> the customer it is filed under downstream
    for part in batches(evs, cuts):
        out = r.resolve_batch(part)
        for m in out.merges:
            assert m.loser != m.winner
            state = {e: (m.winner if c == m.loser else c) for e, c in state.items()}
        state.update({e.event.event_id: e.customer_id for e in out.resolved})
    final = {e.event.event_id: e.customer_id for e in r.resolve_batch(evs).resolved}
    assert state == final


@settings(max_examples=150, deadline=None)
@given(evs=events(), perm=st.randoms(use_true_random=False), cap=st.integers(1, 4))
def test_with_safeguards_one_batch_in_any_order_gives_the_same_answer(
    evs: list[TouchpointEvent], perm: object, cap: int
) -> None:
    config = IdentityConfig(max_customers_per_identifier=cap)
    shuffled = list(evs)
    perm.shuffle(shuffled)  # type: ignore[attr-defined]
    assert partition(run(config, [evs])) == partition(run(config, [shuffled]))


@settings(max_examples=150, deadline=None)
@given(
    evs=events(),
    perm=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(0, 50), max_size=5),
    cap=st.integers(1, 4),
)
def test_safeguards_hold_and_a_batch_applied_twice_changes_nothing(
    evs: list[TouchpointEvent], perm: object, cuts: list[int], cap: int
) -> None:
    config = IdentityConfig(max_customers_per_identifier=cap)
    shuffled = list(evs)
    perm.shuffle(shuffled)  # type: ignore[attr-defined]
    r = IdentityResolver(config, SALT)
    for part in batches(shuffled, cuts):
        r.resolve_batch(part)
        before = partition(r)
        again = r.resolve_batch(part)
        assert partition(r) == before and again.merges == [] and again.links == []
    assert isinstance(r.store, InMemoryIdentityStore)
    graph = r.store.graph
    evidence = oracle(evs)
    for customer, members in partition(r).items():
        for code in ("u", "k"):  # user_id and crm_id are unique per customer
            assert len([m for m in members if m[0] == code]) <= 1, customer
        # Safeguards only ever keep apart: a customer lies inside one evidence component.
        assert any(members <= comp for comp in evidence.values())
        assert graph.roots[customer].size == len(members)
    for k, n in graph.linked.items():
        assert 1 + n <= cap, k


@settings(max_examples=100, deadline=None)
@given(
    evs=events(),
    perm=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(0, 50), max_size=5),
)
def test_with_safeguards_that_never_fire_order_does_not_matter(
    evs: list[TouchpointEvent], perm: object, cuts: list[int]
) -> None:
    config = IdentityConfig(max_customers_per_identifier=3)
    shuffled = list(evs)
    perm.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = IdentityResolver(config, SALT), IdentityResolver(config, SALT)
    fired = sum(len(a.resolve_batch(p).conflicts) for p in batches(evs, cuts))
    fired += sum(len(b.resolve_batch(p).conflicts) for p in batches(shuffled, cuts[::-1]))
    if fired == 0:
        assert partition(a) == partition(b) == oracle(evs)

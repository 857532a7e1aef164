"""The native (Rust) identity core decides exactly as the Python resolver; choosing the engine.

Tests that need the extension module (``journeymap_native``, ``pip install ./native/identity``)
skip without it on a developer's machine and FAIL in CI (``CI=true``): CI must test it.
"""

from __future__ import annotations

import pickle
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import identity_native
from processors.chain import JourneyChain
from processors.config import IdentityConfig, ProcessingConfig
from processors.errors import ConfigError
from processors.events import TouchpointEvent
from processors.identity import (
    IdentityGraph,
    IdentityResolver,
    InMemoryIdentityStore,
    ResolveResult,
)
from processors.identity_native import NativeIdentityResolver, engine_of, new_resolver
from processors.validation import sources_at
from sinks.identity_redis import RedisIdentityStore
from tests.factories import T0_MS, event
from tests.native_cores import require_native
from tests.property.test_event_time_props import _ANY_TZ, _RECENT, _aware, reference
from tests.property.test_identity_props import KINDS, batches

SALT = "native-test"


@pytest.fixture(scope="module")
def native() -> None:
    """The tests that compare the engines need the module: fail in CI, skip elsewhere."""
    require_native(identity_native.NATIVE_AVAILABLE, identity_native.NATIVE_IMPORT_ERROR,
                   "identity", "`pip install ./native/identity`")


# Values that exercise the paths that differ between the engines' preparation: the same
# identifier in other case and whitespace (emails compare trimmed and lower-cased; other kinds
# trimmed), placeholders in any case, Python-only whitespace (\x1f) and non-ASCII values
# (hashed through Python's `key_of`).
_VALUES = ("0", "1", "2", "3", " 1 ", "\x1f2", "é1", "Ω", "null", " NULL", "Anonymous", "")


@st.composite
def identity_events(draw: st.DrawFn, max_events: int = 30) -> list[TouchpointEvent]:
    n = draw(st.integers(1, max_events))
    out = []
    for _ in range(n):
        kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=4, unique=True))
        ids = {}
        for k in kinds:
            v = draw(st.sampled_from(_VALUES))
            ids[k] = (f"{v}@X.io" if k == "email" and v.strip() not in ("", "null") else
                      v if v else "-")
        out.append(event(event_id=f"e{draw(st.integers(0, n))}",
                         at_ms=T0_MS + draw(st.integers(0, 12)), **ids))
    return out


configs = st.builds(
    IdentityConfig,
    unique_kinds=st.lists(st.sampled_from(KINDS), max_size=3, unique=True),
    max_customers_per_identifier=st.integers(1, 4),
)


def outputs(r: ResolveResult) -> tuple[Any, ...]:
    """Everything a batch produced, as plain values (merges with their seq)."""
    return (
        [(type(e), e.customer_id, id(e.event), e.ts_ms, e.segment) for e in r.resolved],
        [(type(m), tuple(m)) for m in r.merges],
        [(type(link), tuple(link)) for link in r.links],
        [(type(c), tuple(c)) for c in r.conflicts],
        [(ev.event_id, why) for ev, why in r.dead],
        r.dead_at,
        r.counters(),
        r.n_ignored_identifiers,
        r.commit_id,
    )


def graph_of(r: IdentityResolver) -> tuple[Any, ...]:
    g: IdentityGraph = r.store.graph  # type: ignore[attr-defined]
    return (
        sorted(g.cid.items()), sorted(g.first.items()), sorted(g.linked.items()),
        sorted((c, x.earliest_ts, x.earliest_key, sorted(x.uniq.items()), x.size)
               for c, x in g.roots.items()),
        sorted((c, list(keys)) for c, keys in g.members.items() if keys),
        r.store.merge_seq,  # type: ignore[attr-defined]
    )


@settings(max_examples=200, deadline=None)
@given(
    evs=identity_events(),
    config=configs,
    cuts=st.lists(st.integers(0, 60), max_size=5),
    perm=st.randoms(use_true_random=False),
    cap=st.integers(1, 8),
    pickle_at=st.integers(0, 6),
    narrow=st.sampled_from([0, 0, 1, 3]),
)
def test_native_gives_the_python_resolvers_outputs_batch_after_batch(
    native: None, evs: list[TouchpointEvent], config: IdentityConfig, cuts: list[int],
    perm: Any, cap: int, pickle_at: int, narrow: int,
) -> None:
    shuffled = evs + evs[: len(evs) // 2]
    perm.shuffle(shuffled)
    py = IdentityResolver(config, SALT)
    nat = narrowed(NativeIdentityResolver(config, SALT), narrow)
    nat.combo_cap = cap  # the combination table is cleared between batches: same outputs
    parts = [*batches(shuffled, cuts), evs]  # then every event again (known identifiers)
    for n, part in enumerate(parts):
        if n == pickle_at:  # a checkpoint: pickled and restored halfway, it goes on the same
            nat = pickle.loads(pickle.dumps(nat))
            assert isinstance(nat, NativeIdentityResolver)
        got, want = nat.resolve_batch(part), py.resolve_batch(part)
        assert outputs(got) == outputs(want)
        assert all(part[i] is ev for (ev, _), i in zip(got.dead, got.dead_at, strict=True))
        assert graph_of(nat) == graph_of(py)
    assert nat.totals == py.totals
    assert nat.core.n_combos() <= cap + len(parts[-1])
    for ev in evs:
        for kind, value in ev.identities.items():
            assert nat.customer_of(kind, value) == py.customer_of(kind, value)
    for customer in py.store.graph.roots:  # type: ignore[attr-defined]
        assert nat.identifiers_of(customer) == py.identifiers_of(customer)


def narrowed(resolver: NativeIdentityResolver, bits: int) -> NativeIdentityResolver:
    """`resolver` with its core's string hashes cut to `bits` bits (0: as they are): different
    node keys, customer names and combinations then share hashes, and the core must tell them
    apart by their bytes."""
    if bits:
        resolver.core._narrow_hashes(bits)
    return resolver


def test_narrowed_hashes_are_only_set_on_an_empty_core(native: None) -> None:
    resolver = NativeIdentityResolver(IdentityConfig(), SALT)
    resolver.resolve_batch([event(anonymous_id="a1")])
    with pytest.raises(ValueError, match="before anything is indexed"):
        resolver.core._narrow_hashes(2)


@pytest.mark.parametrize("narrow", [0, 1, 6])
def test_large_batches_with_repeats_in_one_chunk_and_colliding_hashes(
    native: None, narrow: int,
) -> None:
    """`prepare_batch` reads events in chunks (their lookups after the whole chunk is read)
    and the string indexes grow by their stored hashes: batches of hundreds of events, a new
    combination repeated within a chunk, values Python hashes (not ASCII) among them, every
    hash narrowed (each lookup probing past others), the table cleared and grown again, give
    the Python resolver's outputs and graph."""
    config = IdentityConfig(unique_kinds=["user_id"], max_customers_per_identifier=3)
    py = IdentityResolver(config, SALT)
    nat = narrowed(NativeIdentityResolver(config, SALT), narrow)
    nat.combo_cap = 150  # (151 combinations a batch: cleared before each one after the first)
    for b in range(4):
        part = []
        for i in range(400):
            k = (i * 7 + b * 53) % 151  # repeats: within a chunk of 16 and across batches
            ids = {"anonymous_id": f"v{k}", "device_id": f"w{k // 3}"}
            if k % 2 == 0:
                ids["crm_id"] = f"c{k // 7}"  # (chains of customers: merges)
            if k % 5 == 0:
                ids["user_id"] = f"u{k % 3}"  # (unique: conflicts)
            if k % 11 == 0:
                ids["email"] = f"É{k}@x.io" if k % 2 else f" V{k}@X.io "
            part.append(event(event_id=f"e{b}-{i}", at_ms=T0_MS + (i * 31 + b) % 50, **ids))
        got, want = nat.resolve_batch(part), py.resolve_batch(part)
        assert outputs(got) == outputs(want)
        assert graph_of(nat) == graph_of(py)
    assert nat.totals == py.totals
    assert min(py.totals["n_merges"], py.totals["n_conflicts_unique"]) > 0


class _Plain:
    """An event-like object whose attributes CPython 3.11 keeps inline (no dict made)."""

    def __init__(self, ev: TouchpointEvent) -> None:
        self.identities = dict(ev.identities)
        self.ts_ms = ev.ts_ms


class _Slotted:
    __slots__ = ("identities", "ts_ms")

    def __init__(self, ev: TouchpointEvent) -> None:
        self.identities = dict(ev.identities)
        self.ts_ms = ev.ts_ms


@pytest.mark.parametrize("cls", [_Plain, _Slotted])
def test_prepare_batch_reads_objects_without_an_instance_dict_alike(
    native: None, cls: type,
) -> None:
    """`prepare_batch` asks for each event's instance dict ahead of its reads where it has
    one: objects without one (attributes inline, or slots) read as the events do."""
    evs = [event(anonymous_id=f"a{i % 37}", at_ms=T0_MS + i) for i in range(300)]
    want = NativeIdentityResolver(IdentityConfig(), SALT).core
    assert want.prepare_batch(evs) == (0, [])
    core = NativeIdentityResolver(IdentityConfig(), SALT).core
    assert core.prepare_batch([cls(ev) for ev in evs]) == (0, [])
    assert core.batch_combos() == want.batch_combos()


def test_merges_are_numbered_in_commit_order_like_the_in_memory_store(native: None) -> None:
    r = NativeIdentityResolver(IdentityConfig(), SALT)
    r.resolve_batch([event(at_ms=T0_MS, anonymous_id="a"), event(at_ms=T0_MS + 1, device_id="d")])
    one = r.resolve_batch([event(at_ms=T0_MS + 2, anonymous_id="a", device_id="d")])
    r.resolve_batch([event(at_ms=T0_MS + 3, anonymous_id="b"), event(at_ms=T0_MS + 4, email="e")])
    two = r.resolve_batch([event(at_ms=T0_MS + 5, anonymous_id="b", email="e")])
    assert [m.seq for m in one.merges + two.merges] == [1, 2]
    assert r.store.merge_seq == 2  # type: ignore[attr-defined]


def test_a_pickled_native_resolver_restores_as_python_without_the_module(
    native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint written where the module is installed reads where it is not."""
    r = NativeIdentityResolver(IdentityConfig(), SALT)
    evs = [event(at_ms=T0_MS, anonymous_id="a"), event(at_ms=T0_MS + 1, device_id="d"),
           event(at_ms=T0_MS + 2, anonymous_id="a", device_id="d")]
    py = IdentityResolver(IdentityConfig(), SALT)
    r.resolve_batch(evs[:2])
    py.resolve_batch(evs[:2])
    blob = pickle.dumps(r)
    monkeypatch.setattr(identity_native, "NativeIdentityCore", None)
    back = pickle.loads(blob)
    assert type(back) is IdentityResolver and isinstance(back.store, InMemoryIdentityStore)
    assert graph_of(back) == graph_of(py)
    assert outputs(back.resolve_batch(evs[2:])) == outputs(py.resolve_batch(evs[2:]))


def test_the_chain_dead_letters_an_event_without_identifiers_with_its_own_source(
    native: None,
) -> None:
    """Events whose identifiers are all placeholders are dead letters of stage ``resolve``,
    each with the source (topic, partition, offset) of its own message, with either engine."""
    lines = [event(event_id=f"e{i}", at_ms=T0_MS + (7 - i) * 1000,
                   anonymous_id="null" if i % 3 == 0 else f"a{i}").model_dump_json().encode()
             for i in range(8)]
    for engine in ("native", "python"):
        chain = JourneyChain(ProcessingConfig(identity=IdentityConfig(engine=engine)))
        out = chain.process(list(zip(lines, sources_at("t", 2, range(100, 108)), strict=True)))
        dead = [(TouchpointEvent.model_validate_json(d.raw).event_id, d.source.offset, d.stage)
                for d in out.dead]
        assert sorted(dead) == [("e0", 100, "resolve"), ("e3", 103, "resolve"),
                                ("e6", 106, "resolve")]
        assert len(out.resolved) == 5


def test_the_core_decides_only_a_prepared_batch(native: None) -> None:
    """`decide_batch` takes the events `prepare_batch` read (each given a combination) and
    the record types it was written for; `set_combo` only a combination the core has."""
    from processors.events import ResolvedEvent
    from processors.identity import Conflict, IdentityLink, MergeRecord

    core = NativeIdentityResolver(IdentityConfig(), SALT).core
    evs = [event(at_ms=T0_MS, anonymous_id="a"), event(at_ms=T0_MS + 1, anonymous_id="é")]
    types = (ResolvedEvent, MergeRecord, Conflict, IdentityLink)
    n_ignored, missing = core.prepare_batch(evs)
    assert (n_ignored, missing) == (0, [1])  # not ASCII: Python makes its combination
    with pytest.raises(ValueError, match="set_combo"):
        core.decide_batch(evs, *types)
    with pytest.raises(IndexError):
        core.set_combo(1, core.n_combos())
    with pytest.raises(IndexError):
        core.set_combo(2, 0)
    core.set_combo(1, 0)
    with pytest.raises(ValueError, match="prepared batch"):
        core.decide_batch(evs[:1], *types)
    with pytest.raises(TypeError, match="named tuple"):
        core.decide_batch(evs, ResolvedEvent, tuple, Conflict, IdentityLink)
    with pytest.raises(TypeError, match="named tuple"):
        core.decide_batch(evs, ResolvedEvent, MergeRecord, Conflict, MergeRecord)
    resolved, merges, conflicts, links, dead = core.decide_batch(evs, *types, 0)
    assert [(type(e), e.ts_ms, e.event) for e in resolved] == [
        (ResolvedEvent, T0_MS, evs[0]), (ResolvedEvent, T0_MS + 1, evs[1])]
    assert resolved[0].customer_id == resolved[1].customer_id  # (event 1 given a's combination)
    assert [type(link) for link in links] == [IdentityLink]
    assert (merges, conflicts, dead) == ([], [], [])


_BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_benchmark_fingerprint_cases_give_equal_outputs(native: None) -> None:
    """bench_identity's fingerprint cases (smaller): every output and the final graph."""
    sys.path.insert(0, str(_BENCH))
    try:
        import bench_identity as bi
    finally:
        sys.path.remove(str(_BENCH))
    sim, synthetic, tangled = bi.sim_events(300), bi.make_events(4000), bi.make_tangled(3000)
    cases = [
        (sim, IdentityConfig(), 100, False, 2),
        (sim, IdentityConfig(max_customers_per_identifier=1), 37, True, 1),
        (synthetic, IdentityConfig(), 500, False, 2),
        (synthetic[:1500], IdentityConfig(unique_kinds=[], max_customers_per_identifier=2), 1,
         True, 1),
        (tangled, IdentityConfig(), 200, False, 2),
        (tangled, IdentityConfig(max_customers_per_identifier=1), 37, True, 2),
        (tangled[:1000], IdentityConfig(unique_kinds=["user_id", "crm_id", "email", "device_id"]),
         1, True, 1),
    ]
    try:
        for evs, config, size, shuffle, passes in cases:
            bi.IdentityResolver = IdentityResolver
            want = bi._outputs_hash(evs, config, size, shuffle, passes)
            for bits in (0, 4):  # 4: the core's string hashes collide all the time
                bi.IdentityResolver = (lambda c, salt, store=None, bits=bits:
                                       narrowed(NativeIdentityResolver(c, salt), bits))
                assert bi._outputs_hash(evs, config, size, shuffle, passes) == want
    finally:
        bi.IdentityResolver = IdentityResolver


@settings(max_examples=300, deadline=None)
@given(
    ats=st.lists(st.one_of(_aware(_ANY_TZ), _RECENT), max_size=40),
    cached=st.lists(st.booleans(), max_size=40),
)
def test_native_event_times_equal_the_reference_and_are_cached_alike(
    native: None, ats: list[datetime], cached: list[bool]
) -> None:
    """Any date, any fixed offset (pydantic-core's, `timezone`), a named zone, naive, fold,
    consecutive events sharing one tzinfo, some events with `ts_ms` already read."""
    evs = []
    for i, at in enumerate(ats):
        ev = event(anonymous_id="a")
        ev.__dict__["occurred_at"] = at
        if i and i % 3 == 0:  # the same tzinfo object as the event before
            ev.__dict__["occurred_at"] = at.replace(tzinfo=ats[i - 1].tzinfo)
        if i < len(cached) and cached[i]:
            assert ev.ts_ms == reference(ev.occurred_at)  # read (and cached) before
        evs.append(ev)
    want = [reference(ev.occurred_at) for ev in evs]
    assert identity_native.native_event_times_ms(evs) == want
    assert [ev.__dict__["ts_ms"] for ev in evs] == want  # as `event_times_ms` leaves them


# -- choosing the engine ---------------------------------------------------------------------


def test_auto_is_native_when_installed_python_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    r = new_resolver(IdentityConfig(), SALT)
    assert engine_of(r) == ("native" if identity_native.NATIVE_AVAILABLE else "python")
    monkeypatch.setattr(identity_native, "NativeIdentityCore", None)
    monkeypatch.setattr(identity_native, "NATIVE_AVAILABLE", False)
    assert engine_of(new_resolver(IdentityConfig(), SALT)) == "python"


def test_python_engine_and_a_store_that_cannot_hold_the_core_get_the_python_resolver() -> None:
    r = new_resolver(IdentityConfig(engine="python"), SALT)
    assert type(r) is IdentityResolver and isinstance(r.store, InMemoryIdentityStore)
    store = InMemoryIdentityStore()  # given: it has no attach_core
    r = new_resolver(IdentityConfig(), SALT, store)
    assert type(r) is IdentityResolver and r.store is store
    redis_store = RedisIdentityStore("redis://127.0.0.1:1/0")  # (connects on first use only)
    r = new_resolver(IdentityConfig(engine="python"), SALT, redis_store)
    assert type(r) is IdentityResolver and r.store is redis_store


def test_native_engine_on_a_store_that_cannot_hold_the_core_says_so(native: None) -> None:
    with pytest.raises(ConfigError, match="cannot decide on InMemoryIdentityStore"):
        new_resolver(IdentityConfig(engine="native"), SALT, InMemoryIdentityStore())


def test_an_older_build_without_the_overlay_mode_leaves_the_redis_store_to_python(
    native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity_native, "NATIVE_OVERLAY", False)
    store = RedisIdentityStore("redis://127.0.0.1:1/0")  # (connects on first use only)
    assert type(new_resolver(IdentityConfig(), SALT, store)) is IdentityResolver
    assert engine_of(new_resolver(IdentityConfig(), SALT)) == "native"  # in memory: still
    with pytest.raises(ConfigError, match=r"build-native\.sh"):
        new_resolver(IdentityConfig(engine="native"), SALT, store)


def test_native_and_auto_engines_decide_natively_on_the_redis_store(native: None) -> None:
    for engine in ("native", "auto"):
        store = RedisIdentityStore("redis://127.0.0.1:1/0")  # (connects on first use only)
        r = new_resolver(IdentityConfig(engine=engine), SALT, store)
        assert type(r) is NativeIdentityResolver and r.store is store
        assert store._core is r.core  # the store's worker cache is the core's overlay
        with pytest.raises(TypeError, match="does not pickle"):
            pickle.dumps(r)


def test_native_engine_without_the_module_says_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(identity_native, "NativeIdentityCore", None)
    monkeypatch.setattr(identity_native, "NATIVE_AVAILABLE", False)
    with pytest.raises(ConfigError, match=r"pip install \./native/identity.*"
                                          r"JOURNEYMAP_IDENTITY__ENGINE"):
        new_resolver(IdentityConfig(engine="native"), SALT)
    with pytest.raises(ConfigError, match=r"identity\.engine = 'native'"):
        JourneyChain(ProcessingConfig(identity=IdentityConfig(engine="native")))


def test_the_chain_resolves_with_the_configured_engine(native: None) -> None:
    for engine, kind in (("native", NativeIdentityResolver), ("python", IdentityResolver)):
        chain = JourneyChain(ProcessingConfig(identity=IdentityConfig(engine=engine)))
        assert type(chain.resolver) is kind
        again = pickle.loads(pickle.dumps(chain))  # checkpoints pickle the chain
        assert type(again.resolver) is kind

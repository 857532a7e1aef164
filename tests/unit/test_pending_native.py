"""The chain's funnel reorder buffer as native records (``NativePending``, issue 4): a native
chain releases exactly what a Python chain releases, to the funnels, the attribution paths and
``out.released``, across ties in time, merges (renames), detach and attach between chains,
forgetting and reviving customers, and pickling mid-stream; checkpoints cross engines both
ways, and old ones (``_pending`` a list of tuples) still load.

Random scenarios drawn by hypothesis run the same operations on two Python chains and two native
ones (two partitions each) and compare every output and the state after each operation.

Tests that need the extension module's classes skip without them on a developer's machine and
FAIL in CI (``CI=true``), as in ``test_funnels_paths_native.py``.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import attribution_native, funnels_native, pending_native
from processors.attribution import PathAccumulator
from processors.chain import ChainOutput, JourneyChain
from processors.config import JourneyConfig, OutcomesConfig, ProcessingConfig
from processors.events import ResolvedEvent
from processors.funnels import FunnelTracker
from processors.identity import MergeRecord
from tests.factories import MIN_MS, T0_MS, resolved
from tests.native_cores import require_native
from tests.unit.test_funnels_paths_native import FUNNELS, TOUCHPOINTS


@pytest.fixture(scope="module")
def native() -> None:
    for name, cls, error in (
        ("reorder buffer (NativePending)", pending_native.NativePending,
         pending_native._IMPORT_ERROR),
        ("funnel loops (NativeFunnelStep)", funnels_native.NativeFunnelStep,
         funnels_native._IMPORT_ERROR),
        ("path loop (NativePaths)", attribution_native.NativePaths,
         attribution_native._IMPORT_ERROR),
    ):
        require_native(cls is not None, error, f"journeys {name}", "scripts/build-native.sh")


CUSTOMERS = ["c0", "c1", "c2", "c3", "c4"]


def config_of(engine: str) -> ProcessingConfig:
    return ProcessingConfig(
        outcomes=OutcomesConfig(conversion=["purchase"], churn=["cancel"], null_horizon_s=3600),
        journey=JourneyConfig(engine=engine, allowed_lateness_s=300),  # type: ignore[arg-type]
        funnels=FUNNELS,
        identity_salt="s",
    )


# An event as drawn: (customer, touchpoint, minute, event id, channel, revenue, segment). The same
# id drawn twice is the same event (a copy: the journeys drop it, transfers must not double it).
Spec = tuple[str, str, int, str, str, float | None, str]


@st.composite
def event_specs(draw: st.DrawFn, minute: int) -> list[Spec]:
    """A batch: times close together (ties in time are common), sometimes back in time (late
    for the funnels, or for the journeys), sometimes far ahead (the frontier moves)."""
    out = []
    for _ in range(draw(st.integers(0, 10))):
        minute += draw(st.sampled_from([0, 0, 0, 1, 2, 3, -2, -7, 12]))
        n = draw(st.integers(0, 40))
        out.append((draw(st.sampled_from(CUSTOMERS)), draw(st.sampled_from(TOUCHPOINTS)), minute,
                    f"e{n}-{minute}", draw(st.sampled_from(["web", "app"])),
                    draw(st.sampled_from([None, 0.0, 7.5])), draw(st.sampled_from(["a", "b"]))))
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    minute = 0
    for _ in range(draw(st.integers(1, 14))):
        side = draw(st.integers(0, 1))
        kind = draw(st.sampled_from(["batch", "batch", "batch", "merge", "move", "pickle",
                                     "forget", "revive"]))
        if kind == "batch":
            specs = draw(event_specs(minute))
            ops.append(("batch", side, specs))
            minute = max([minute] + [s[2] for s in specs])
        elif kind in ("merge", "move"):
            loser, winner = draw(st.lists(st.sampled_from(CUSTOMERS), min_size=2, max_size=2,
                                          unique=True))
            ops.append((kind, side, loser, winner, minute))
        elif kind in ("forget", "revive"):
            ops.append((kind, side, draw(st.sampled_from(CUSTOMERS))))
        else:
            ops.append(("pickle", side))
    ops.append(("finish", 0))
    ops.append(("finish", 1))
    return ops


def make(spec: Spec) -> ResolvedEvent:
    cid, tp, minute, event_id, channel, revenue, segment = spec
    return resolved(cid, tp, T0_MS + minute * MIN_MS, event_id=event_id, channel=channel,
                    revenue=revenue, segment=segment)


def output(out: ChainOutput) -> str:
    return repr((
        [(e.customer_id, e.event.event_id, e.segment, e.ts_ms) for e in out.released],
        out.funnel_transitions,
        [e.event.event_id for e in out.applied],
    ))


def state(chain: JourneyChain) -> str:
    funnels: FunnelTracker = chain.funnels
    paths: PathAccumulator = chain.paths
    waiting = [(ts, seq, e.customer_id, e.event.event_id, e.segment)
               for ts, seq, e in chain._waiting()]
    return repr((funnels.state, sorted(paths.open.items()), paths.done, waiting,
                 chain._renamed, chain._seq))


def drive(engine: str, ops: list[tuple[Any, ...]]) -> list[str]:
    """Every output and both chains' state after each operation."""
    chains = [JourneyChain(config_of(engine)), JourneyChain(config_of(engine))]
    seen = []
    for op in ops:
        kind, side = op[0], op[1]
        chain = chains[side]
        if kind == "batch":
            out = chain.process_resolved([make(s) for s in op[2]])
            seen.append(output(out))
        elif kind == "merge":  # both customers here: the loser's waiting events are renamed
            merge = MergeRecord(op[2], op[3], "m", T0_MS + op[4] * MIN_MS, "shared_identifier")
            seen.append(output(chain.process_resolved([], [merge])))
        elif kind == "move":  # the loser here, the winner in the other chain
            merge = MergeRecord(op[2], op[3], "m", T0_MS + op[4] * MIN_MS, "shared_identifier")
            package = pickle.loads(pickle.dumps(chain.detach_customer(op[2], op[3])))
            seen.append(repr([(e.customer_id, e.event.event_id) for e in package["pending"]]))
            seen.append(output(chains[1 - side].attach_customer(package, merge)))
        elif kind == "forget":
            chain.forget_customer(op[2])
        elif kind == "revive":
            chain.revive(op[2])
        elif kind == "pickle":
            chains[side] = pickle.loads(pickle.dumps(chain))
        else:
            seen.append(output(chain.finish()))
        seen.append(state(chains[0]) + state(chains[1]))
    return seen


@settings(max_examples=250, deadline=None)
@given(scenarios())
def test_native_release_equals_python(native: None, ops: list[tuple[Any, ...]]) -> None:
    assert drive("auto", ops) == drive("python", ops)


def test_the_native_chain_keeps_native_records(native: None) -> None:
    chain = JourneyChain(config_of("auto"))
    assert type(chain._pending) is pending_native.NativePending
    assert type(JourneyChain(config_of("python"))._pending) is list
    chain.process_resolved([make(("c0", "landing_page", 0, "x", "web", None, "a"))])
    assert type(pickle.loads(pickle.dumps(chain))._pending) is pending_native.NativePending


@settings(max_examples=120, deadline=None)
@given(scenarios())
def test_the_core_feeding_the_buffer_equals_extending_it(
        native: None, ops: list[tuple[Any, ...]]) -> None:
    """The native journeys core puts its applied events' records (with their digests) into the
    buffer as it reads them: the same entries, releases and state as ``_pending.extend``."""
    from processors.journeys_native import NativeJourneyProcessor
    assert NativeJourneyProcessor.feeds_pending  # (this tree's module)
    fed = drive("auto", ops)
    try:
        NativeJourneyProcessor.feeds_pending = False
        assert fed == drive("auto", ops)
    finally:
        NativeJourneyProcessor.feeds_pending = True


def test_ties_in_time_go_out_in_digest_order_whatever_the_arrival(native: None) -> None:
    """Events of one millisecond reach the funnels in event-id digest order: two arrival orders
    give the same release."""
    specs = [(f"c{i % 3}", "landing_page", 1, f"tie{i}", "web", None, "a") for i in range(12)]
    released = []
    for order in (specs, specs[::-1]):
        chain = JourneyChain(config_of("auto"))
        chain.process_resolved([make(s) for s in order])
        released.append([e.event.event_id for e in chain.finish().released])
    assert released[0] == released[1] and sorted(released[0]) == sorted(s[3] for s in specs)
    assert released[0] != [s[3] for s in specs]  # (not just the arrival order)


def busy_chain(engine: str) -> JourneyChain:
    chain = JourneyChain(config_of(engine))
    chain.process_resolved([make(("c0", "landing_page", 0, "a0", "web", None, "a")),
                            make(("c1", "blog", 1, "b0", "app", None, "b")),
                            make(("c0", "signup", 2, "a1", "web", None, "a"))])
    chain.process_resolved([], [MergeRecord("c1", "c0", "m", T0_MS, "shared_identifier")])
    assert len(chain._waiting()) == 3  # (nothing released yet: the tests below carry it over)
    return chain


def rest(chain: JourneyChain) -> list[str]:
    later = chain.process_resolved([make(("c0", "trial_start", 3, "a2", "web", None, "a")),
                                    make(("c2", "landing_page", 40, "z", "web", None, "a"))])
    return [output(later), output(chain.finish()), state(chain)]


def test_checkpoints_cross_engines(native: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A native chain's checkpoint holds ``_pending`` as the Python list; it loads natively, or
    as the Python engine without the module, and either goes on as the other would."""
    expected = rest(busy_chain("python"))
    blob = pickle.dumps(busy_chain("auto"))
    again = pickle.loads(blob)
    assert type(again._pending) is pending_native.NativePending
    assert rest(again) == expected

    for module, name in ((pending_native, "NativePending"), (funnels_native, "NativeFunnelStep"),
                         (attribution_native, "NativePaths")):
        monkeypatch.setattr(module, name, None)
    python = pickle.loads(blob)
    assert type(python._pending) is list and type(python.funnels) is FunnelTracker
    py_blob = pickle.dumps(python)
    assert rest(python) == expected
    monkeypatch.undo()

    adopted = pickle.loads(py_blob)  # a Python checkpoint goes on natively
    assert type(adopted._pending) is pending_native.NativePending
    assert rest(adopted) == expected


def test_old_checkpoints_with_digests_in_the_heap_load(native: None) -> None:
    """Checkpoints from before the heap dropped its digests: ``(ts, digest, seq, event)``."""
    expected = rest(busy_chain("python"))
    chain = busy_chain("python")
    old = dict(chain.__dict__)
    old["_pending"] = [(ts, b"digest", seq, ev) for ts, seq, ev in chain._waiting()]
    restored = JourneyChain.__new__(JourneyChain)
    old["config"] = config_of("auto")
    restored.__setstate__(pickle.loads(pickle.dumps(old)))
    assert type(restored._pending) is pending_native.NativePending
    assert rest(restored) == expected


def test_python_funnels_and_paths_set_on_a_native_chain_read_the_events(native: None) -> None:
    """A Python tracker or accumulator put on a chain after it was made (as a test or a tool
    may) is fed the released events, as the Python release feeds them."""
    expected = rest(busy_chain("python"))
    chain = JourneyChain(config_of("auto"))
    python = JourneyChain(config_of("python"))
    chain.funnels, chain.paths = python.funnels, python.paths
    chain.process_resolved([make(("c0", "landing_page", 0, "a0", "web", None, "a")),
                            make(("c1", "blog", 1, "b0", "app", None, "b")),
                            make(("c0", "signup", 2, "a1", "web", None, "a"))])
    chain.process_resolved([], [MergeRecord("c1", "c0", "m", T0_MS, "shared_identifier")])
    assert type(chain._pending) is pending_native.NativePending
    assert rest(chain) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from(CUSTOMERS)), max_size=60),
       st.sets(st.sampled_from([*CUSTOMERS, "nobody"])))
def test_asking_the_buffer_natively_equals_reading_its_entries(
        native: None, drawn: list[tuple[int, str]], ids: set[str]) -> None:
    """A merge asks the buffer for its customers, one customer's event ids, and takes a
    customer's events out, without making every entry (each merge used to copy all the waiting
    events): the same answers as the entries give, and what stays is the list heapq.heapify
    makes of the entries left, in the same arrangement."""
    import heapq
    entries = [(T0_MS + minute * MIN_MS, seq, make((cid, "landing_page", minute, f"e{seq}",
                                                    "web", None, "a")))
               for seq, (minute, cid) in enumerate(drawn)]
    buffer = pending_native.NativePending()
    buffer.replace(entries)  # (any order: the drawn one)
    assert buffer.customers_in(ids) == {e[-1].customer_id for e in entries} & ids
    for cid in CUSTOMERS:
        assert buffer.event_ids_of(cid) == {e[-1].event.event_id for e in entries
                                            if e[-1].customer_id == cid}
    taken = buffer.take(ids)
    assert taken == [e for e in entries if e[-1].customer_id in ids]
    rest = [e for e in entries if e[-1].customer_id not in ids]
    if taken:
        heapq.heapify(rest)
    assert buffer.entries() == rest
    assert buffer.take(ids) == []


def test_the_buffer_keeps_its_waiting_customers_through_pushes_and_releases(native: None) -> None:
    """The per-customer count is built by the first question and then kept with every event
    in (apply, push) and out (release, take): the answers stay those of the entries."""
    chain = JourneyChain(config_of("auto"))
    chain.process_resolved([make((CUSTOMERS[i % 3], "landing_page", i, f"a{i}", "web", None,
                                  "a")) for i in range(12)])
    buffer = chain._pending

    def agrees() -> None:
        entries = buffer.entries()
        assert buffer.customers_in(set(CUSTOMERS)) == {e[-1].customer_id for e in entries}
        for cid in CUSTOMERS:
            assert buffer.event_ids_of(cid) == {e[-1].event.event_id for e in entries
                                                if e[-1].customer_id == cid}

    agrees()  # (builds the count)
    chain.process_resolved([make((CUSTOMERS[3], "pricing_page", 13, "b1", "web", None, "a"))])
    agrees()
    buffer.push(T0_MS, 999, make((CUSTOMERS[4], "signup", 0, "b2", "web", None, "a")))
    agrees()
    # far ahead: the frontier passes the first events, which are released and counted out
    chain.process_resolved([make((CUSTOMERS[0], "signup", 400, "b3", "web", None, "a"))])
    assert len(buffer) < 15
    agrees()
    assert buffer.take({CUSTOMERS[0]}) and buffer.take({CUSTOMERS[0]}) == []
    agrees()

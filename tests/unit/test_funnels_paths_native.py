"""The native (Rust) loops of the funnel tracker (``update``, ``advance``, over its open runs in
native memory) and of the attribution paths (``PathAccumulator.add``) give exactly the Python
ones' outputs and state, across merges of customers, detach and attach, forgetting a customer
and pickling; choosing the engine (``journey.engine``); checkpoints across engines (issue 4).

Random scenarios drawn by hypothesis run the same operations on a Python and a native object and
compare every output and the whole state (its repr: dict order too) after each operation.

Tests that need the extension module's classes (``journeymap_journeys``, built by
``scripts/build-native.sh``) skip without them on a developer's machine (a module built before
the classes existed has none) and FAIL in CI (``CI=true``): CI must test them.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import attribution_native, funnels, funnels_native
from processors.attribution import PathAccumulator
from processors.attribution_native import (
    NativePathAccumulator,
    adopt_paths,
    new_path_accumulator,
)
from processors.chain import JourneyChain
from processors.config import (
    FunnelConfig,
    JourneyConfig,
    OutcomesConfig,
    ProcessingConfig,
)
from processors.errors import ConfigError
from processors.events import ResolvedEvent
from processors.funnels import FunnelTracker
from processors.funnels_native import (
    NativeFunnelTracker,
    adopt_funnels,
    new_funnel_tracker,
)
from tests.factories import DAY_MS, MIN_MS, T0_MS, resolved
from tests.native_cores import require_native


@pytest.fixture(scope="module")
def native() -> None:
    """The tests that compare the engines need the classes: fail in CI, skip elsewhere."""
    for name, cls, error in (
        ("funnel loops (NativeFunnelStep)", funnels_native.NativeFunnelStep,
         funnels_native._IMPORT_ERROR),
        ("path loop (NativePaths)", attribution_native.NativePaths,
         attribution_native._IMPORT_ERROR),
    ):
        require_native(cls is not None, error,
                       f"journeys {name}", "scripts/build-native.sh")


TOUCHPOINTS = ["landing_page", "signup", "trial_start", "purchase", "pricing_help", "cancel",
               "blog"]
CUSTOMERS = ["c0", "c1", "c2", "c3"]


def funnel(name: str, order: str, window_min: int, stages: list[list[str]]) -> FunnelConfig:
    return FunnelConfig.model_validate({
        "name": name, "order": order, "conversion_window_s": window_min * 60,
        "stages": [{"name": f"{name}{i}", "touchpoints": tps} for i, tps in enumerate(stages)]})


# Two funnels sharing touchpoints (a route with two entries), one strict, one relaxed.
FUNNELS = [
    funnel("signup", "strict", 10, [["landing_page"], ["signup"], ["trial_start"], ["purchase"]]),
    funnel("buy", "relaxed", 30, [["landing_page", "blog"], ["pricing_help"], ["purchase"]]),
]


def config_of(engine: str = "auto") -> ProcessingConfig:
    return ProcessingConfig(
        outcomes=OutcomesConfig(conversion=["purchase"], churn=["cancel"], null_horizon_s=3600),
        journey=JourneyConfig(engine=engine),  # type: ignore[arg-type]
        funnels=FUNNELS,
    )


@st.composite
def events(draw: st.DrawFn, t0: int) -> list[ResolvedEvent]:
    """A batch: mostly forward in time per customer, sometimes back (late for the funnels),
    gaps from none to days (windows, the null horizon, cohort weeks)."""
    out = []
    t = t0
    for _ in range(draw(st.integers(0, 12))):
        t += draw(st.sampled_from([0, 0, 1, 2, 5, 9, 10, 11, 61, 1440, -3])) * MIN_MS
        revenue = draw(st.sampled_from([None, 0.0, 12.5, 3.0]))
        out.append(resolved(draw(st.sampled_from(CUSTOMERS)), draw(st.sampled_from(TOUCHPOINTS)),
                            t, segment=draw(st.sampled_from(["a", "b"])),
                            channel=draw(st.sampled_from(["web", "app", "email"])),
                            revenue=revenue))
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    t = T0_MS + draw(st.integers(0, 6)) * DAY_MS
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["update", "update", "update", "advance", "merge", "pickle",
                                     "move", "forget"]))
        if kind == "update":
            batch = draw(events(t))
            ops.append(("update", batch))
            if batch:
                t = max(t, max(e.ts_ms for e in batch))
        elif kind == "advance":
            t += draw(st.sampled_from([0, 5, 10, 31, 120])) * MIN_MS
            ops.append(("advance", t - draw(st.sampled_from([0, 15])) * MIN_MS))
        elif kind == "merge":
            loser, winner = draw(st.lists(st.sampled_from(CUSTOMERS), min_size=2, max_size=2))
            ops.append(("merge", loser, winner))
        elif kind in ("move", "forget"):
            ops.append((kind, draw(st.sampled_from(CUSTOMERS))))
        else:
            ops.append(("pickle",))
    ops.append(("advance", t + 10 * DAY_MS))
    return ops


def funnel_state(tracker: FunnelTracker) -> str:
    return repr((tracker.state, sorted(tracker._weeks.items())))


def drive_funnels(tracker: FunnelTracker, ops: list[tuple[Any, ...]]) -> list[str]:
    """Every output and the state after each operation."""
    seen = []
    for op in ops:
        if op[0] == "update":
            result = tracker.update(op[1])
            out: object = (result.transitions, [id(e) for e in result.late])
        elif op[0] == "advance":
            out = tracker.advance(op[1])
        elif op[0] == "merge":
            out = tracker.merge_customer(op[1], op[2])
        elif op[0] == "move":  # to another partition and back (the chain's transfers)
            runs = tracker.detach(op[1])
            tracker.attach(op[1], pickle.loads(pickle.dumps(runs)))
            out = sorted(runs)
        elif op[0] == "forget":  # as the chain's forget_customer
            out = [runs.pop(op[1], None) for runs in tracker.state.runs.values()]
        else:
            tracker = pickle.loads(pickle.dumps(tracker))
            out = type(tracker).__name__.removeprefix("Native")
        seen.append(repr(out) + funnel_state(tracker))
    seen.append(repr(tracker.snapshot()) + repr(tracker.snapshot(())))
    return seen


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_native_funnels_equal_python(native: None, ops: list[tuple[Any, ...]]) -> None:
    python = drive_funnels(FunnelTracker(FUNNELS), ops)
    assert drive_funnels(NativeFunnelTracker(FUNNELS), ops) == python


def at(cid: str, touchpoint: str, minute: int, segment: str = "a") -> ResolvedEvent:
    return resolved(cid, touchpoint, T0_MS + minute * MIN_MS, segment=segment)


def run_both(steps: list[tuple[Any, ...]]) -> list[Any]:
    """`steps` on a Python and a native tracker: every output and the state after each step
    equal; the Python tracker's outputs returned."""
    seen: list[list[str]] = [[], []]
    outs: list[Any] = []
    for k, tracker in enumerate((FunnelTracker(FUNNELS), NativeFunnelTracker(FUNNELS))):
        held: dict[str, Any] = {}
        for op, *args in steps:
            if op == "update":
                out: Any = tracker.update(args[0]).transitions
            elif op == "advance":
                out = tracker.advance(T0_MS + args[0] * MIN_MS)
            elif op == "merge":
                out = tracker.merge_customer(*args)
            elif op == "detach":
                out = held[args[0]] = tracker.detach(args[0])
            else:  # any mapping will do (the chain's are dicts)
                out = tracker.attach(args[0], MappingProxyType(held.pop(args[0])))
            seen[k].append(repr(out) + funnel_state(tracker))
            if k == 0:
                outs.append(out)
    assert seen[1] == seen[0]
    return outs


# signup (strict, 10 min): landing_page signup trial_start purchase;
# buy (relaxed, 30 min): landing_page|blog pricing_help purchase.
C0_OPEN = [at("c0", "landing_page", 0), at("c0", "signup", 2), at("c0", "purchase", 3)]
C1_OPEN = [at("c1", "landing_page", 1, "b"), at("c1", "trial_start", 5, "b"),
           at("c1", "pricing_help", 6, "b")]


def moves(out: list[Any]) -> list[tuple[str, str, int, int, int, str]]:
    return [(t.customer_id, t.funnel, t.from_stage, t.to_stage, (t.ts_ms - T0_MS) // MIN_MS,
             t.segment) for t in out]


def test_native_merge_loser_with_runs_winner_without(native: None) -> None:
    """The loser's runs become the winner's, same moves: nothing new to report."""
    outs = run_both([("update", C0_OPEN), ("merge", "c0", "c9")])
    # c0's relaxed run converted at purchase (3): only its strict run is open
    assert outs[-1] == []


def test_native_merge_retracts_the_first_equal_time(native: None) -> None:
    """Times to advance 2, 1, 2 min in one cell: retracting c2's (2) takes the first 2 out, as
    ``list.remove``, and the replay adds it back last."""
    outs = run_both([
        ("update", [at("c0", "landing_page", 0), at("c0", "signup", 2),
                    at("c1", "landing_page", 5), at("c1", "signup", 6),
                    at("c2", "landing_page", 10), at("c2", "signup", 12)]),
        ("merge", "c2", "c9")])
    assert outs[-1] == []


def test_native_merge_winner_with_runs_loser_without(native: None) -> None:
    outs = run_both([("update", C1_OPEN), ("merge", "c9", "c1"), ("merge", "c1", "c1")])
    assert outs[-2:] == [[], []]


def test_native_merge_both_with_runs(native: None) -> None:
    """Strict: c1's start (1) is inside c0's run (0), c1's trial_start (5), ignored in its
    own run (at stage 0), advances the run c0 took to signup (2); relaxed: c0's run converted
    (3), c1's is as it was. The new move is reported under the winner, in c0's segment."""
    outs = run_both([("update", C0_OPEN + C1_OPEN), ("merge", "c0", "c1")])
    assert moves(outs[-1]) == [("c1", "signup", 1, 2, 5, "a")]
    outs = run_both([("update", C0_OPEN + C1_OPEN), ("merge", "c1", "c0")])
    assert moves(outs[-1]) == [("c0", "signup", 1, 2, 5, "a")]


def test_native_merge_drops_inside_the_replay(native: None) -> None:
    """c0's strict run (0) would have dropped at 10 had c1's events (12) been its own: the
    replay drops it and starts a new run at c1's landing_page of 12."""
    outs = run_both([
        ("update", [at("c0", "landing_page", 0), at("c1", "landing_page", 5, "b"),
                    at("c1", "landing_page", 12, "b"), at("c1", "signup", 13, "b")]),
        ("merge", "c1", "c0")])
    # c1's signup (13) advanced c1's own run: not new
    assert moves(outs[-1]) == [("c0", "signup", 0, -1, 10, "a"), ("c0", "signup", -1, 0, 12, "b")]


def test_native_merge_drops_at_the_watermark(native: None) -> None:
    """Runs attached after the watermark passed their deadline (moved away meanwhile): the
    replay advances the merged run (c1's trial_start, 5) and drops it at the watermark, as
    ``advance`` would."""
    outs = run_both([
        ("update", C0_OPEN + C1_OPEN), ("detach", "c0"), ("detach", "c1"), ("advance", 60),
        ("attach", "c1"), ("attach", "c0"), ("merge", "c0", "c1"), ("advance", 120)])
    assert moves(outs[-2]) == [("c1", "signup", 1, 2, 5, "a"), ("c1", "signup", 2, -1, 10, "a")]
    # the merged run was dropped, not left open; c1's relaxed run (attached) drops now
    assert moves(outs[-1]) == [("c1", "buy", 1, -1, 31, "b")]


def test_native_detach_attach(native: None) -> None:
    """Detach takes the runs with their share of the cells (a cell emptied goes), attach
    brings them back (with their deadlines); a funnel unknown here, or one the customer has
    a run in, is skipped."""
    outs = run_both([
        ("update", C0_OPEN + C1_OPEN), ("detach", "c1"), ("detach", "c9"), ("attach", "c1"),
        ("detach", "c0"), ("update", [at("c0", "landing_page", 7)]), ("attach", "c0"),
        ("advance", 120)])
    assert sorted(outs[1]) == ["buy", "signup"] and outs[2] == {}
    # c0's new runs (7) keep their place: its detached strict run is not attached again
    assert moves(outs[-1]) == [("c1", "signup", 0, -1, 11, "b"), ("c0", "signup", 0, -1, 17, "a"),
                               ("c1", "buy", 1, -1, 31, "b"), ("c0", "buy", 0, -1, 37, "a")]


def test_native_merge_with_a_value_missing_fails_as_python(native: None) -> None:
    """A time to advance the cells no longer hold (a state changed from outside): both
    engines raise ``list.remove``'s ValueError."""
    errors = []
    for tracker in (FunnelTracker(FUNNELS), NativeFunnelTracker(FUNNELS)):
        tracker.update(C0_OPEN)
        for cell in tracker.state.cells.values():
            cell.advance_ms[0].exact = [7, 7]
        with pytest.raises(ValueError, match="not in list") as error:
            tracker.merge_customer("c0", "c1")
        errors.append(str(error.value))
    assert errors[1] == errors[0]


FUNNEL_TOUCHPOINTS = [tp for tp in TOUCHPOINTS if tp != "cancel"]


def random_batch(rng: random.Random, t: int, n_max: int, gaps_min: list[int],
                 customer: Callable[[], str], touchpoints: list[str]
                 ) -> tuple[list[ResolvedEvent], int]:
    """Up to `n_max` events from `t` on, `gaps_min` apart, segments a and b; and the last time."""
    batch = []
    for _ in range(rng.randrange(0, n_max)):
        t += rng.choice(gaps_min) * MIN_MS
        batch.append(resolved(customer(), rng.choice(touchpoints), t,
                              segment=rng.choice(["a", "b"])))
    return batch, t


class RecordingList(list[int]):
    """A list that records the values taken out of it by ``remove``."""

    def __init__(self, values: list[int]) -> None:
        super().__init__(values)
        self.removed: list[int] = []

    def remove(self, value: int) -> None:
        self.removed.append(value)
        super().remove(value)


def test_native_merge_removes_through_a_list_subclass(native: None) -> None:
    """Times to advance kept in a list subclass (set from outside): its own ``remove`` takes
    them out, natively as in Python."""
    removed = []
    for tracker in (FunnelTracker(FUNNELS), NativeFunnelTracker(FUNNELS)):
        tracker.update(C0_OPEN)
        lists = []
        for cell in tracker.state.cells.values():
            cell.advance_ms[0].exact = RecordingList(cell.advance_ms[0].exact or [])
            lists.append(cell.advance_ms[0].exact)
        tracker.merge_customer("c0", "c1")
        removed.append([lst.removed for lst in lists])
    assert removed[1] == removed[0] == [[2 * MIN_MS], []]


@pytest.mark.parametrize("seed", range(5))
def test_native_merges_equal_python_with_folded_durations(native: None, seed: int) -> None:
    """With a tiny exact bound, the times to advance fold into buckets early: merges retract
    values from the buckets (``Durations.remove``'s bucket path) and from lists with repeated
    values (the first one goes), natively as in Python."""
    saved = funnels.EXACT_DURATIONS_MAX, funnels_native.EXACT_DURATIONS_MAX
    funnels.EXACT_DURATIONS_MAX = funnels_native.EXACT_DURATIONS_MAX = 3  # type: ignore[misc]
    remove = funnels.Durations.remove
    n_bucket_removes = 0

    def counted(d: funnels.Durations, value_ms: int) -> None:  # the Python engine's removes
        nonlocal n_bucket_removes
        n_bucket_removes += d.exact is None
        remove(d, value_ms)

    funnels.Durations.remove = counted  # type: ignore[method-assign]
    try:
        rng = random.Random(seed)
        python, native_tracker = FunnelTracker(FUNNELS), NativeFunnelTracker(FUNNELS)
        t = T0_MS
        for _ in range(25):
            batch, t = random_batch(rng, t, 60, [0, 1, 1, 2, 5, 40],
                                    lambda: f"c{rng.randrange(6)}", FUNNEL_TOUCHPOINTS)
            assert native_tracker.update(batch).transitions == python.update(batch).transitions
            for _ in range(rng.randrange(0, 8)):
                cid, other = f"c{rng.randrange(6)}", f"c{rng.randrange(6)}"
                assert (native_tracker.merge_customer(cid, other)
                        == python.merge_customer(cid, other))
            assert funnel_state(native_tracker) == funnel_state(python)
            if rng.random() < 0.3:
                mark = t - rng.choice([0, 20]) * MIN_MS
                assert native_tracker.advance(mark) == python.advance(mark)
        assert n_bucket_removes > 0
        assert repr(native_tracker.snapshot()) == repr(python.snapshot())
    finally:
        funnels.EXACT_DURATIONS_MAX, funnels_native.EXACT_DURATIONS_MAX = saved  # type: ignore[misc]
        funnels.Durations.remove = remove  # type: ignore[method-assign]


def path_state(paths: PathAccumulator, now_ms: int) -> str:
    return repr((paths.open, dict(paths.done["touchpoint"]), dict(paths.done["channel"]),
                 paths.paths("touchpoint", now_ms), paths.paths("channel", now_ms)))


def drive_paths(paths: PathAccumulator, ops: list[tuple[Any, ...]]) -> list[str]:
    seen = []
    now = T0_MS
    for op in ops:
        if op[0] == "update":
            paths.add(op[1])
            now = max([now, *(e.ts_ms for e in op[1])])
        elif op[0] == "advance":
            now = max(now, op[1])
        elif op[0] == "merge":
            paths.rename(op[1], op[2])
        elif op[0] == "move":  # as the chain's detach and attach
            moved = paths.open.pop(op[1], None)
            if moved is not None:
                paths.open.setdefault(op[1], pickle.loads(pickle.dumps(moved)))
        elif op[0] == "forget":
            paths.open.pop(op[1], None)
        else:
            paths = pickle.loads(pickle.dumps(paths))
        seen.append(type(paths).__name__ + path_state(paths, now))
    return seen


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_native_paths_equal_python(native: None, ops: list[tuple[Any, ...]]) -> None:
    o = config_of().outcomes
    args = (o.conversion, o.churn, o.null_horizon_s)
    python = drive_paths(PathAccumulator(*args), ops)
    native_seen = drive_paths(NativePathAccumulator(*args), ops)
    assert [s.removeprefix("Native") for s in native_seen] == python


def test_native_rename_equals_python(native: None) -> None:
    """``rename`` in the core: the loser's journey goes to a winner without one (last) or with
    an older one (in the winner's place), not over a newer or as recent one; renaming a
    customer to itself moves its journey last; a loser without a journey changes nothing."""
    o = config_of().outcomes
    args = (o.conversion, o.churn, o.null_horizon_s)
    seen = []
    for paths in (PathAccumulator(*args), NativePathAccumulator(*args)):
        paths.add([resolved(c, "blog", T0_MS + m * MIN_MS, channel=ch)
                   for c, m, ch in [("c0", 0, "web"), ("c1", 1, "app"), ("c2", 2, "web"),
                                    ("c3", 2, "email"), ("c0", 3, "app"), ("c4", 4, "web")]])
        steps = []
        for loser, winner in [("c9", "c0"), ("c0", "c1"), ("c3", "c2"), ("c2", "c4"),
                              ("c1", "c1"), ("c4", "c8"), (7, "c1")]:
            paths.rename(loser, winner)  # type: ignore[arg-type]
            steps.append(list(paths.open.items()))
        seen.append(steps)
    assert seen[1] == seen[0]
    assert [[cid for cid, _ in step] for step in seen[0]] == [
        ["c0", "c1", "c2", "c3", "c4"], ["c1", "c2", "c3", "c4"], ["c1", "c2", "c4"],
        ["c1", "c4"], ["c4", "c1"], ["c1", "c8"], ["c1", "c8"]]
    assert seen[0][-1][0][1][1] == ["blog", "blog"]  # c0's journey, renamed c1


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32))
def test_native_open_journeys_keep_the_dicts_order(native: None, seed: int) -> None:
    """Hundreds of customers opened, closed, moved away and back, renamed: the native open
    journeys keep the Python dict's order (the order ``paths`` adds idle journeys in) through
    the removals that make the core compact its table."""
    rng = random.Random(seed)
    o = config_of().outcomes
    args = (o.conversion, o.churn, o.null_horizon_s)
    python, native_paths = PathAccumulator(*args), NativePathAccumulator(*args)
    t = T0_MS
    for _ in range(40):
        batch = []
        for _ in range(rng.randrange(0, 60)):
            t += rng.choice([0, MIN_MS, 70 * MIN_MS])
            batch.append(resolved(f"c{rng.randrange(300)}", rng.choice(TOUCHPOINTS), t,
                                  channel=rng.choice(["web", "app"]), revenue=1.5))
        for paths in (python, native_paths):
            paths.add(batch)
        for _ in range(rng.randrange(0, 40)):
            cid, other = f"c{rng.randrange(300)}", f"c{rng.randrange(300)}"
            step = rng.random()
            for paths in (python, native_paths):
                if step < 0.6:
                    paths.open.pop(cid, None)
                elif step < 0.8:
                    paths.rename(cid, other)
                else:
                    paths.open.setdefault(cid, (t, ["blog"], ["web"]))
        assert path_state(native_paths, t) == path_state(python, t)
        assert list(native_paths.open) == list(python.open)


PREFIXES = ["c", "ç", "\N{MATHEMATICAL SCRIPT SMALL C}"]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32))
def test_native_runs_keep_the_dicts_order(native: None, seed: int) -> None:
    """Hundreds of customers' runs started, advanced, converted, dropped, merged, moved away and
    back, forgotten, set from outside: the native runs keep the Python dicts' order and values
    through the removals that make the core compact its table, pickle as those plain dicts, and
    a plain dict set into the state is taken over by the next update. The deadline heaps (same
    deadlines for many customers, ids in 1-, 2- and 4-byte UTF-8) keep heapq's order."""
    rng = random.Random(seed)
    python, native_tracker = FunnelTracker(FUNNELS), NativeFunnelTracker(FUNNELS)
    t = T0_MS
    for round_ in range(30):
        batch, t = random_batch(rng, t, 80, [0, 1, 2, 40],
                                lambda: f"{rng.choice(PREFIXES)}{rng.randrange(100)}", TOUCHPOINTS)
        moves = [tracker.update(batch).transitions for tracker in (python, native_tracker)]
        assert moves[1] == moves[0]
        if rng.random() < 0.3:
            watermark = t - rng.choice([0, 20]) * MIN_MS
            drops = [tracker.advance(watermark) for tracker in (python, native_tracker)]
            assert drops[1] == drops[0]
        for _ in range(rng.randrange(0, 30)):
            cid, other = (f"{rng.choice(PREFIXES)}{rng.randrange(100)}" for _ in range(2))
            step = rng.random()
            outs = []
            for tracker in (python, native_tracker):
                if step < 0.4:
                    outs.append(tracker.merge_customer(cid, other))
                elif step < 0.6:
                    outs.append([r.pop(cid, None) for r in tracker.state.runs.values()])
                else:
                    runs = tracker.detach(cid)
                    tracker.attach(cid, pickle.loads(pickle.dumps(runs)))
                    outs.append(sorted(runs))
            assert outs[1] == outs[0]
        if round_ == 10:  # a plain dict put in the state (as a caller may): adopted
            native_tracker.state.runs["buy"] = dict(native_tracker.state.runs["buy"])
        assert funnel_state(native_tracker) == funnel_state(python)
        for name in ("signup", "buy"):
            assert list(native_tracker.state.runs[name]) == list(python.state.runs[name])
        plain = pickle.loads(pickle.dumps(native_tracker.state))
        assert all(type(runs) is dict for runs in plain.runs.values())
        assert repr(plain) == repr(python.state) and plain == python.state


def test_native_runs_read_as_copies_and_write_back(native: None) -> None:
    """``state.runs[funnel]`` reads new ``FunnelRun``s; setting one writes it (as the Python
    dict would hold it), deleting one removes it."""
    tracker = NativeFunnelTracker(FUNNELS)
    busy(tracker, NativePathAccumulator(["purchase"], ["cancel"], 3600))
    runs = tracker.state.runs["signup"]
    run = runs["c0"]
    assert (run.stage, run.run_start_ms, list(run.events)) == (
        1, T0_MS, [T0_MS << 6, (T0_MS + MIN_MS) << 6 | 1])
    run.stage = 0  # a copy: the tracker's run is unchanged
    assert runs["c0"].stage == 1 and runs.get("c0") == runs["c0"] and runs.get("nobody") is None
    run.events.append((T0_MS + 2 * MIN_MS) << 6)
    runs["c0"] = run
    assert runs["c0"] == run and "c0" in runs and len(runs) == 1
    del runs["c0"]
    assert "c0" not in runs and runs == {} and runs.pop("c0", None) is None
    with pytest.raises(KeyError):
        runs["c0"]
    with pytest.raises(KeyError):
        del runs["c0"]


def test_the_engine_follows_journey_engine(native: None) -> None:
    assert type(new_funnel_tracker(config_of("python"))) is FunnelTracker
    assert type(new_path_accumulator(config_of("python"))) is PathAccumulator
    for engine in ("auto", "native"):
        assert type(new_funnel_tracker(config_of(engine))) is NativeFunnelTracker
        assert type(new_path_accumulator(config_of(engine))) is NativePathAccumulator
    chain = JourneyChain(config_of())
    assert type(chain.funnels) is NativeFunnelTracker
    assert type(chain.paths) is NativePathAccumulator


def test_native_asked_for_without_the_classes_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(funnels_native, "NativeFunnelStep", None)
    monkeypatch.setattr(attribution_native, "NativePaths", None)
    with pytest.raises(ConfigError, match="build-native"):
        new_funnel_tracker(config_of("native"))
    with pytest.raises(ConfigError, match="build-native"):
        new_path_accumulator(config_of("native"))
    assert type(new_funnel_tracker(config_of("auto"))) is FunnelTracker
    assert type(new_path_accumulator(config_of("auto"))) is PathAccumulator


def busy(tracker: FunnelTracker, paths: PathAccumulator) -> None:
    batch = [resolved("c0", "landing_page", T0_MS), resolved("c0", "signup", T0_MS + MIN_MS),
             resolved("c1", "blog", T0_MS + 2 * MIN_MS, revenue=3.0),
             resolved("c1", "purchase", T0_MS + 3 * MIN_MS, revenue=3.0)]
    tracker.update(batch)
    paths.add(batch)


def test_checkpoints_cross_engines(native: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A native checkpoint reads as native, or as Python without the module (same state); a
    Python checkpoint goes on natively where the module is installed."""
    o = config_of().outcomes
    tracker = NativeFunnelTracker(FUNNELS)
    paths = NativePathAccumulator(o.conversion, o.churn, o.null_horizon_s)
    busy(tracker, paths)
    blob = pickle.dumps((tracker, paths))
    again = pickle.loads(blob)
    assert [type(x) for x in again] == [NativeFunnelTracker, NativePathAccumulator]
    assert funnel_state(again[0]) == funnel_state(tracker)
    assert path_state(again[1], T0_MS) == path_state(paths, T0_MS)

    monkeypatch.setattr(funnels_native, "NativeFunnelStep", None)
    monkeypatch.setattr(attribution_native, "NativePaths", None)
    py_tracker, py_paths = pickle.loads(blob)
    assert [type(py_tracker), type(py_paths)] == [FunnelTracker, PathAccumulator]
    assert funnel_state(py_tracker) == funnel_state(tracker)
    assert path_state(py_paths, T0_MS) == path_state(paths, T0_MS)
    py_blob = pickle.dumps((py_tracker, py_paths))
    monkeypatch.undo()

    config = config_of()
    adopted = adopt_funnels(config, pickle.loads(py_blob)[0])
    assert type(adopted) is NativeFunnelTracker and funnel_state(adopted) == funnel_state(tracker)
    later = [resolved("c0", "trial_start", T0_MS + 4 * MIN_MS)]
    assert adopted.update(later).transitions == tracker.update(later).transitions
    adopted_paths = adopt_paths(config, pickle.loads(py_blob)[1])
    assert type(adopted_paths) is NativePathAccumulator
    assert type(adopt_paths(config_of("python"), py_paths)) is PathAccumulator


def test_a_python_chain_checkpoint_goes_on_natively(native: None) -> None:
    chain = JourneyChain(config_of("python"))
    assert type(chain.funnels) is FunnelTracker and type(chain.paths) is PathAccumulator
    chain.config = config_of("auto")
    restored = pickle.loads(pickle.dumps(chain))
    assert type(restored.funnels) is NativeFunnelTracker
    assert type(restored.paths) is NativePathAccumulator

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
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import attribution_native, funnels_native
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
        batch = []
        for _ in range(rng.randrange(0, 80)):
            t += rng.choice([0, MIN_MS, 2 * MIN_MS, 40 * MIN_MS])
            batch.append(resolved(f"{rng.choice(PREFIXES)}{rng.randrange(100)}",
                                  rng.choice(TOUCHPOINTS), t, segment=rng.choice(["a", "b"])))
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

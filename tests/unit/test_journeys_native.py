"""The native (Rust) journeys stage gives exactly the Python one's outputs and state; choosing the
engine (``journey.engine``); checkpoints across engines.

Random scenarios come from ``bench/bench_journeys_native.py``'s generator (a few customers,
small windows: events out of order within and beyond the lateness, resent duplicates, producer
session ids, revenue, outcomes, merges, expiries, customers detached and attached again, the
processor pickled and restored), one per seed drawn by hypothesis.

Tests that need the extension module (``journeymap_journeys``, ``scripts/build-native.sh``) skip
without it on a developer's machine and FAIL in CI (``CI=true``): CI must test it.
"""

from __future__ import annotations

import pickle
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import journeys_native, transitions_native
from processors.chain import JourneyChain
from processors.config import (
    JourneyConfig,
    OutcomesConfig,
    ProcessingConfig,
    WindowsConfig,
)
from processors.errors import ConfigError
from processors.identity import MergeRecord
from processors.journeys import JourneyOutput, JourneyProcessor, Step
from processors.journeys_native import NativeJourneyProcessor, engine_of, new_journey_stage
from processors.transitions import (
    CellDelta,
    CellRow,
    CellUpdate,
    TransitionCounter,
    TransitionCounts,
)
from processors.transitions_native import NativeTransitionCounter, state_of
from tests.factories import T0_MS, resolved
from tests.native_cores import require_native

_BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(_BENCH))
try:
    import bench_journeys_native as bjn
finally:
    sys.path.remove(str(_BENCH))


@pytest.fixture(scope="module")
def native() -> None:
    """The tests that compare the engines need the module: fail in CI, skip elsewhere."""
    require_native(journeys_native.NATIVE_AVAILABLE, journeys_native.NATIVE_IMPORT_ERROR,
                   "journeys", "scripts/build-native.sh")


def config_of(engine: str = "auto", kept: int = 4, dedup: int = 8, lateness_s: float = 900,
              gap_s: int = 1800) -> ProcessingConfig:
    return ProcessingConfig(
        outcomes=OutcomesConfig(conversion=["purchase"], churn=["cancel"], null_horizon_s=86_400),
        journey=JourneyConfig(session_gap_s=gap_s, allowed_lateness_s=lateness_s,
                              last_touchpoints_kept=kept, dedup_ids_per_customer=dedup,
                              engine=engine),  # type: ignore[arg-type]
        windows=WindowsConfig(sizes_s=[3600, 7200, 4 * 3600], step_s=3600),
    )


configs = st.builds(
    config_of,
    kept=st.integers(1, 6),
    dedup=st.integers(1, 12),
    lateness_s=st.sampled_from([0, 0.25, 900, 3600]),
    gap_s=st.sampled_from([60, 1800]),
)


def run(processor: Any, calls: list[Any]) -> tuple[str, str]:
    """Every output and the final state (bench_journeys_native's fingerprint), and the
    snapshots of every customer the scenarios use."""
    outs: list[JourneyOutput] = []
    processor = bjn.replay(processor, calls, outs)
    snaps = [processor.snapshot(f"c{i}") for i in range(8)]
    return bjn.fingerprint(processor, outs), repr(snaps)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), config=configs)
def test_native_journeys_give_the_python_outputs_and_state(
    native: None, seed: int, config: ProcessingConfig
) -> None:
    calls = bjn.random_calls(random.Random(seed))
    assert run(NativeJourneyProcessor(config), calls) == run(JourneyProcessor(config), calls)


def test_the_random_scenarios_reach_what_they_are_meant_to(native: None) -> None:
    """The generator makes late events, duplicates, retractions and merges (else the
    comparison above would prove little)."""
    config = config_of()
    n_late = n_dup = n_retracted = n_merged = 0
    for seed in range(40):
        outs: list[JourneyOutput] = []
        bjn.replay(NativeJourneyProcessor(config), bjn.random_calls(random.Random(seed)), outs)
        n_late += sum(len(o.late) for o in outs)
        n_dup += sum(len(o.duplicates) for o in outs)
        n_retracted += sum(st.sign < 0 for o in outs for st in o.steps)
        n_merged += sum(bool(o.changed) and not o.late and not o.duplicates for o in outs)
    assert min(n_late, n_dup, n_retracted, n_merged) > 0


def test_membership_and_state_of_read_the_core(native: None) -> None:
    config = config_of()
    calls = bjn.random_calls(random.Random(7))
    nat = bjn.replay(NativeJourneyProcessor(config), calls, None)
    py = bjn.replay(JourneyProcessor(config), calls, None)
    for cid in [f"c{i}" for i in range(9)]:
        assert (cid in nat) == (cid in py) == (cid in py.customers)
        want = py.state_of(cid)
        got = nat.state_of(cid)
        assert (got is None) == (want is None)
        if want is not None:
            assert got.__getstate__() == want.__getstate__()  # type: ignore[union-attr]


def counter_run(counter: TransitionCounter, steps_by_call: list[tuple[list[Any], int]],
                read_windows: int = 0) -> tuple[list[Any], dict[str, Any]]:
    """Feed the steps of each call and advance to its watermark; the rows (their types too: a
    correction is a `CellUpdate` or `CellDelta`) and the state (the archive's pickled bytes
    included). Every `read_windows`-th call reads the windows (bringing them up to date, so
    that later corrections change them too) and the matrices."""
    rows: list[Any] = []
    for i, (steps, watermark_ms) in enumerate(steps_by_call):
        counter.update(steps)
        out = counter.advance(watermark_ms)
        rows.append([(type(r).__name__, *r) for r in out])
        if read_windows and i % read_windows == 1:
            rows.append(counter.snapshot())
            rows.append([counter.matrix(size, order=o) for size in [None, *counter.sizes]
                         for o in (1, 2)])
        if i % 7 == 3:  # a checkpoint: pickled and restored, it goes on the same
            counter = pickle.loads(pickle.dumps(counter))
    return rows, ordered(state_of(counter))


def ordered(state: dict[str, Any]) -> dict[str, Any]:
    """A counter's state with the order of every dict of cells (equal dicts in another order
    would emit their rows in another order): the panes, windows and totals as lists of cells,
    the archive's pickles as the lists of the cells they hold (the bytes are those
    `pickle.dumps` writes for them)."""
    def cells(counts: TransitionCounts) -> list[Any]:
        return list(counts.cells.items())

    out = dict(state)
    out["totals"] = cells(state["totals"])
    for name in ("hot", "panes", "_windows", "_thawed"):
        out[name] = [(p, cells(c)) for p, c in state[name].items()]
    out["deltas"] = [(p, list(d.items())) for p, d in state["deltas"].items()]
    out["archive"] = [(p, list(pickle.loads(b).items())) for p, b in state["archive"].items()]
    for b in state["archive"].values():
        assert b == pickle.dumps(pickle.loads(b), protocol=pickle.HIGHEST_PROTOCOL)
    return out


def counter_steps(seed: int, config: ProcessingConfig, engine: Any = JourneyProcessor
                  ) -> list[tuple[Any, int]]:
    """The steps and watermark of each call of a random scenario (the Python journeys; with
    the native ones, each call's `StepBatch`, not read)."""
    journeys = engine(config)
    steps_by_call = []
    for call in bjn.random_calls(random.Random(seed)):
        outs: list[Any] = []
        journeys = bjn.replay(journeys, [call], outs)
        steps_by_call.extend((getattr(out, "batch", out.steps), journeys.watermark_ms)
                             for out in outs)
    return steps_by_call


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), config=configs,
       corrections=st.sampled_from(["pane", "cells", "delta"]))
def test_the_native_step_counter_counts_as_python(
    native: None, seed: int, config: ProcessingConfig, corrections: Any
) -> None:
    steps_by_call = counter_steps(seed, config)
    lateness_s = config.journey.allowed_lateness_s
    want = counter_run(TransitionCounter(config.windows, lateness_s, corrections), steps_by_call)
    got = counter_run(NativeTransitionCounter(config.windows, lateness_s, corrections),
                      steps_by_call)
    assert got == want


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), config=configs,
       corrections=st.sampled_from(["pane", "cells", "delta"]))
def test_the_native_counter_counts_the_cores_batches_as_python_counts_steps(
    native: None, seed: int, config: ProcessingConfig, corrections: Any
) -> None:
    """Steps handed from the core to the counter as Rust records: the same rows and state as
    the Python counter over the Python processor's `Step`s (the counter pickled mid-stream),
    and the batches, read afterwards, are those `Step`s."""
    want_steps = counter_steps(seed, config)
    batches = counter_steps(seed, config, NativeJourneyProcessor)
    assert all(type(b).__name__ == "StepBatch" for b, _ in batches)
    lateness_s = config.journey.allowed_lateness_s
    want = counter_run(TransitionCounter(config.windows, lateness_s, corrections), want_steps)
    got = counter_run(NativeTransitionCounter(config.windows, lateness_s, corrections), batches)
    assert got[0] == want[0]  # every row
    assert got[1] == want[1]
    assert [(list(b), w) for b, w in batches] == want_steps


def test_one_counter_counts_the_batches_of_several_cores(native: None) -> None:
    """A counter keeps the cell keys it made, by the core's string objects: batches of two
    cores (two sets of strings) in turn count as the Python counter counts both lists."""
    config = config_of(lateness_s=0)
    py = counter_steps(9, config)
    first, second = (counter_steps(9, config, NativeJourneyProcessor) for _ in range(2))
    want = counter_run(TransitionCounter(config.windows, 0, "cells"),
                       [x for pair in zip(py, py, strict=True) for x in pair])
    got = counter_run(NativeTransitionCounter(config.windows, 0, "cells"),
                      [x for pair in zip(first, second, strict=True) for x in pair])
    assert got == want


def test_a_step_batch_reads_as_the_list_of_its_steps(native: None) -> None:
    """Length, items, slices, iteration, comparison, repr and pickling: those of the list of
    `Step`s (made once), and `JourneyOutput.steps` is that list."""
    config = config_of()
    calls = bjn.random_calls(random.Random(4))
    nat_outs: list[Any] = []
    py_outs: list[Any] = []
    bjn.replay(NativeJourneyProcessor(config), calls, nat_outs)
    bjn.replay(JourneyProcessor(config), calls, py_outs)
    assert nat_outs == py_outs and py_outs == nat_outs  # JourneyOutput equality across engines
    out, want = max(zip(nat_outs, py_outs, strict=True), key=lambda o: len(o[1].steps))
    batch = out.batch
    assert len(want.steps) >= 3
    assert len(batch) == len(want.steps) and bool(batch)
    assert batch[0] == want.steps[0] and batch[-1] == want.steps[-1]
    assert batch[1:3] == want.steps[1:3]
    assert [st for st in batch] == want.steps == batch and batch == want.steps
    assert batch != want.steps[:-1] and batch != [] and batch >= want.steps
    assert [batch == [], batch == want.steps[:-1], batch == batch] == [False, False, True]
    assert repr(batch) == repr(want.steps)
    back = pickle.loads(pickle.dumps(batch))
    assert type(back) is list and back == want.steps
    assert type(out.steps) is list and out.steps == want.steps
    assert out.steps is out.steps  # made once
    assert out == want and want == out and out != JourneyOutput()
    again = pickle.loads(pickle.dumps(out))
    assert again.steps == want.steps and again.changed == want.changed
    assert [bool(o.batch) for o in nat_outs] == [bool(o.steps) for o in py_outs]
    with pytest.raises(IndexError):
        batch[len(want.steps)]


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_apply_lists_the_events_it_applied(native: None, seed: int) -> None:
    """The native core's `applied` (what the chain's `applied` is made of): the call's events
    that were neither duplicate nor late, the same objects in their order, or the call's own
    list when it skipped none."""
    journeys = NativeJourneyProcessor(config_of())
    n_skipped = n_clean = 0
    for call in bjn.random_calls(random.Random(seed)):
        if call[0] != "apply":
            bjn.replay(journeys, [call], None)
            continue
        events = list(call[1])
        out = journeys.apply(events)
        skipped = {id(e) for e in out.duplicates} | {id(late.event) for late in out.late}
        assert [id(e) for e in out.applied] == [id(e) for e in events if id(e) not in skipped]
        if skipped:
            n_skipped += 1
        else:
            assert out.applied is events
            n_clean += 1
    assert n_skipped and n_clean


@pytest.mark.parametrize("seed", [21, 22])
def test_chain_outputs_are_the_same_with_steps_left_in_the_core(native: None, seed: int) -> None:
    """The chain with the native stage keeps each call's steps as the core's batches; its
    outputs (steps read at the end, cells, the rest) equal the Python stage's, batch by batch,
    with both chains pickled and restored mid-stream, and pickled outputs too."""
    # (merges of a customer into itself, which the resolver never makes, would loop the
    # chain's renames)
    calls = [c for c in bjn.random_calls(random.Random(seed))
             if c[0] == "apply" or (c[0] == "merge" and c[1] != c[2])]
    chains = [JourneyChain(config_of()), JourneyChain(config_of("python"))]
    n_batches = 0
    for i, call in enumerate(calls):
        if i == len(calls) // 2:
            chains = [pickle.loads(pickle.dumps(c)) for c in chains]
        events, merges = (list(call[1]), []) if call[0] == "apply" else (
            [], [MergeRecord(call[1], call[2], f"e{i}", 0, "shared_identifier")])
        nat, py = (c.process_resolved(list(events), merges) for c in chains)
        n_batches += any(type(p).__name__ == "StepBatch" for p in nat.step_parts)
        assert nat == py
        assert nat.steps == py.steps and nat.cells == py.cells
        assert pickle.loads(pickle.dumps(nat)) == py
    assert n_batches > 0
    assert chains[0].finish() == chains[1].finish()


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), config=configs,
       corrections=st.sampled_from(["pane", "cells", "delta"]), read_windows=st.integers(2, 5))
def test_native_panes_give_the_python_windows_and_corrections(
    native: None, seed: int, config: ProcessingConfig, corrections: Any, read_windows: int
) -> None:
    """`advance`, `_correct` and `_sync` over the native state: the same rows, windows,
    matrices and state (in order; the archive's bytes those of pickle) as Python, with the
    windows read mid-stream so that corrections of final panes also change them."""
    steps_by_call = counter_steps(seed, config)
    lateness_s = config.journey.allowed_lateness_s
    want = counter_run(TransitionCounter(config.windows, lateness_s, corrections), steps_by_call,
                       read_windows)
    got = counter_run(NativeTransitionCounter(config.windows, lateness_s, corrections),
                      steps_by_call, read_windows)
    assert got == want


def test_a_module_built_before_the_native_counter_is_an_error_naming_the_rebuild(
    native: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transitions_native, "NativeCounter", None)
    with pytest.raises(ConfigError, match=r"build-native\.sh"):
        NativeTransitionCounter(config_of().windows, 900, "cells")


def test_bad_corrections_are_the_python_counters_error(native: None) -> None:
    with pytest.raises(ValueError, match="corrections must be 'pane', 'cells' or 'delta'"):
        NativeTransitionCounter(config_of().windows, 900, "all")  # type: ignore[arg-type]


def test_the_state_reads_and_sets_as_the_python_counters(native: None) -> None:
    """Each attribute of the state is a copy made on read; setting it sets the state."""
    config = config_of()
    counter = NativeTransitionCounter(config.windows, 900, "cells")
    py = TransitionCounter(config.windows, 900, "cells")
    for steps, watermark_ms in counter_steps(4, config)[:20]:
        counter.update(steps)
        counter.advance(watermark_ms)
        py.update(steps)
        py.advance(watermark_ms)
    assert ordered(state_of(counter)) == ordered(state_of(py))
    counter.totals.cells.clear()  # a copy
    assert counter.totals == py.totals
    counter.totals = TransitionCounts()
    assert not counter.totals and py.totals
    counter.frontier_pane = None
    assert counter.frontier_pane is None
    with pytest.raises(ValueError, match="no counter state named"):
        counter._core.get("sizes")


def test_the_counter_scenarios_reach_late_and_archived_panes(native: None) -> None:
    """The scenarios correct final panes, archived ones too (thawed, re-emitted, frozen again),
    and cancel cells to nothing (else the comparisons above would prove little)."""
    config = config_of(lateness_s=0)
    n_corrected = n_thawed = n_gone = 0
    for seed in range(30):
        counter = NativeTransitionCounter(config.windows, 0, "cells")
        for steps, watermark_ms in counter_steps(seed, config):
            counter.update(steps)
            n_thawed += len(counter._thawed)
            rows = counter.advance(watermark_ms)
            n_corrected += sum(type(r) is CellUpdate for r in rows)
            n_gone += sum(type(r) is CellUpdate and r.n == 0 for r in rows)
    assert min(n_corrected, n_thawed, n_gone) > 0


def test_a_window_callback_gets_the_python_windows(native: None) -> None:
    """`advance(on_window=...)` (the Python method, the native panes underneath)."""
    config = config_of()
    steps_by_call = counter_steps(5, config)

    def seen(counter: TransitionCounter) -> list[Any]:
        out: list[Any] = []
        for steps, watermark_ms in steps_by_call:
            counter.update(steps)
            out.append(counter.advance(watermark_ms, on_window=lambda start, size, counts:
                                       out.append((start, size, dict(counts.cells)))))
        return out

    want = seen(TransitionCounter(config.windows, 900, "pane"))
    assert seen(NativeTransitionCounter(config.windows, 900, "pane")) == want
    assert len(want) > len(steps_by_call)


cell_keys = st.tuples(st.sampled_from(["*", "all", "loyal"]), st.sampled_from(["*", "web"]),
                      st.sampled_from(["", "a", "b"]), st.sampled_from(["a", "b", "c"]),
                      st.sampled_from(["b", "c", "é"]), st.integers(0, 49))
cell_values = st.tuples(st.integers(-3, 3), st.sampled_from([0, -1, 1, 255, 256, 65535, 65536,
                                                             2**31 - 1, 2**31, -2**31,
                                                             -2**31 - 1, 2**40, -2**62]))
cell_dicts = st.dictionaries(cell_keys, cell_values, max_size=30)


@settings(max_examples=300, deadline=None)
@given(totals=cell_dicts, late=cell_dicts, archived=st.booleans(),
       corrections=st.sampled_from(["pane", "cells", "delta"]))
def test_a_correction_merges_as_python(
    native: None, totals: dict[Any, Any], late: dict[Any, Any], archived: bool, corrections: Any
) -> None:
    """`_correct` of a final pane (kept or archived) into the totals, pane, windows and
    deltas: the same cells in the same order, and the same rows from `advance`."""
    config = config_of()
    counters = [cls(config.windows, 900, corrections)
                for cls in (TransitionCounter, NativeTransitionCounter)]
    p = 100 if archived else 1000 - 2
    for counter in counters:
        counter.totals = TransitionCounts(dict(totals))
        counter.frontier_pane = counter._kept_from = 1000
        counter.panes = {p: TransitionCounts(dict(totals))} if not archived else {}
        counter._synced = dict.fromkeys(counter.sizes, 1000)
        counter._windows = {size: TransitionCounts(dict(totals)) for size in counter.sizes}
        counter.archive = ({p: pickle.dumps(totals, protocol=pickle.HIGHEST_PROTOCOL)}
                           if archived and totals else {})
        counter._correct(p, dict(late))
    assert ordered(state_of(counters[1])) == ordered(state_of(counters[0]))
    rows = [c.advance(1000 * 3_600_000) for c in counters]
    assert [(type(r), *r) for r in rows[1]] == [(type(r), *r) for r in rows[0]]


pickled_strs = st.sampled_from(["", "*", "all", "é", "\ud800", "x" * 255, "y" * 256])
pickled_ints = st.one_of(st.integers(-2**63, 2**63 - 1),  # native counts are 64-bit
                         st.sampled_from([0, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -2**31,
                                          -2**31 - 1, 2**63 - 1, -2**63, -256, -255, -2**15,
                                          -2**15 - 1, -2**39, -2**39 - 1]))
pickled_keys = st.tuples(pickled_strs, pickled_strs, pickled_strs, pickled_strs, pickled_strs,
                         st.integers(0, 49))


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.tuples(pickled_keys, st.tuples(pickled_ints, pickled_ints)),
                      max_size=40),
       copies=st.sampled_from([0, 1, 2, 999, 1000, 1500, 3000]), fresh=st.booleans())
def test_native_archive_pickles_are_the_pickle_modules_bytes(
    native: None, items: list[Any], copies: int, fresh: bool
) -> None:
    """`_freeze`'s bytes: those of `pickle.dumps(cells, HIGHEST_PROTOCOL)` where each text is
    one object (pickle's memo is by identity), for dicts of 1, 999, 1000 (an empty last batch)
    and more items, strings with lone surrogates or over 255 bytes, and pickles past 64 KiB
    (several frames: pickle writes those)."""
    cells = dict(items)
    for i in range(copies):  # many cells sharing the same str objects, or equal copies
        seg = "s" + str(i % 7) if fresh else "all"
        cells[(seg, "web", "", "a", str(i), i % 50)] = (i, -i * 1000)
    one: dict[str, str] = {}  # one object per text, as the native cells keep their strings
    same = {tuple(one.setdefault(x, x) if isinstance(x, str) else x for x in k): v
            for k, v in cells.items()}
    got = NativeTransitionCounter(config_of().windows)._core.dumps(cells)
    assert got == pickle.dumps(same, protocol=pickle.HIGHEST_PROTOCOL)
    assert list(pickle.loads(got).items()) == list(cells.items())


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.tuples(pickled_keys, st.tuples(pickled_ints, pickled_ints)),
                      max_size=40),
       copies=st.sampled_from([0, 1, 1000, 3000]), fresh=st.booleans(),
       protocol=st.integers(2, 5))
def test_archived_panes_read_as_pickle_reads_them(
    native: None, items: list[Any], copies: int, fresh: bool, protocol: int
) -> None:
    """A thawed pane, read from its pickle natively (protocols 4 and 5, as `_pickle` writes
    cell dicts, with strings shared or not, in one frame or several) or by `pickle.loads`
    (anything else): the same cells in the same order."""
    cells = dict(items)
    for i in range(copies):
        seg = "s" + str(i % 7) if fresh else "all"
        cells[(seg, "web", "", "a", str(i), i % 50)] = (i, -i * 1000)
    frozen = pickle.dumps(cells, protocol=protocol)
    got = NativeTransitionCounter(config_of().windows)._core.loads(frozen)
    assert list(got.items()) == list(pickle.loads(frozen).items())
    if protocol >= 4:  # read without pickle.loads
        def refuse(frozen: bytes) -> None:
            raise AssertionError("not read natively")

        core = transitions_native.NativeCounter(
            3600, [(3600, 1)], 0, "cells", [0], TransitionCounts,
            (CellRow, CellUpdate, CellDelta), (pickle.dumps, refuse, pickle.HIGHEST_PROTOCOL))
        assert list(core.loads(frozen).items()) == list(got.items())


def test_an_archived_pane_not_of_cells_is_read_by_pickle(native: None) -> None:
    core = NativeTransitionCounter(config_of().windows)._core
    key = ("*", "*", "", "a", "b", 1)
    assert core.loads(pickle.dumps({key: (1, 2)}) + b"trailing") == {key: (1, 2)}
    odd_ones = [{key: [1, 2]}, {key[:5]: (1, 2)}, {key: (1, 2**64)},
                {("*", 1, "", "a", "b", 1): (1, 2)},
                {("*", "*", "", "a", "b", 2**40): (1, 2)}]  # buckets are -1 to 49
    for odd in odd_ones:
        with pytest.raises((TypeError, OverflowError)):
            core.loads(pickle.dumps(odd))
    with pytest.raises(EOFError):  # what pickle.loads raises for it
        core.loads(b"\x80\x05}\x94(")


def test_native_merge_refuses_counts_beyond_64_bits(native: None) -> None:
    """Python's ints would grow; the native counts raise rather than wrap (2**63 ms of gaps in
    one cell is 292 million years)."""
    step = Step("c", "*", "*", "a", "a", "b", "", 2**62, 0, "s", False, 0, 1, 1, "e")
    counter = NativeTransitionCounter(config_of().windows)
    counter.update([step])
    with pytest.raises(OverflowError):
        counter.update([step])


@pytest.mark.parametrize("engine", ["python", "native"])
def test_a_lateness_of_a_fraction_of_a_second_holds_to_the_millisecond(
    native: None, engine: str
) -> None:
    config = config_of(engine, lateness_s=0.25)
    assert config.journey.allowed_lateness_ms == 250
    journeys, counter = new_journey_stage(config, "cells")
    assert counter.lateness_ms == 250
    #  ms after T0:  0 (a)   1000 (c)   750 (b: 250 behind, in time)   749 (x: 251 behind, late)
    out = journeys.apply([resolved("c1", tp, T0_MS + ms)
                          for tp, ms in (("a", 0), ("c", 1000), ("b", 750), ("x", 749))])
    assert [x.event.event.touchpoint for x in out.late] == ["x"]
    assert out.late[0].frontier_ms == T0_MS + 750 and out.late[0].watermark_ms == T0_MS + 1000
    assert journeys.frontier_ms == T0_MS + 750
    # b was placed where it belongs: a -> c withdrawn, a -> b -> c counted
    assert [(s.src, s.dst, s.sign) for s in out.steps] == [
        ("start", "a", 1), ("a", "c", 1), ("a", "b", 1), ("b", "c", 1), ("a", "c", -1)]


def test_a_lateness_finer_than_a_millisecond_is_refused() -> None:
    with pytest.raises(ValueError, match=r"allowed_lateness_s=0\.0005 is not a whole number of "
                                         "milliseconds"):
        JourneyConfig(allowed_lateness_s=0.0005)


def test_the_engine_is_chosen_by_the_setting(native: None) -> None:
    j, t = new_journey_stage(config_of("auto"), "cells")
    assert type(j) is NativeJourneyProcessor and type(t) is NativeTransitionCounter
    assert engine_of(j) == "native" and t.corrections == "cells"
    j, t = new_journey_stage(config_of("python"))
    assert type(j) is JourneyProcessor and type(t) is TransitionCounter
    assert engine_of(j) == "python"
    chain = JourneyChain(config_of("native"))
    assert engine_of(chain.journeys) == "native"
    assert type(chain.transitions) is NativeTransitionCounter


def test_without_the_module_auto_is_python_and_native_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(journeys_native, "NATIVE_AVAILABLE", False)
    monkeypatch.setattr(journeys_native, "NativeJourneyCore", None)
    monkeypatch.setattr(journeys_native, "NATIVE_IMPORT_ERROR", "No module named 'x'")
    j, t = new_journey_stage(config_of("auto"))
    assert type(j) is JourneyProcessor and type(t) is TransitionCounter
    with pytest.raises(ConfigError, match=r"journey\.engine = 'native'.*build-native\.sh"):
        new_journey_stage(config_of("native"))
    with pytest.raises(ConfigError, match="JOURNEYMAP_JOURNEY__ENGINE"):
        JourneyChain(config_of("native"))


def test_a_pickled_native_stage_restores_as_python_without_the_module(
    native: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkpoint written where the module is installed, read where it is not: the Python
    processor and counter over the same state, going on with the same outputs."""
    config = config_of()
    calls = bjn.random_calls(random.Random(3))
    half = len(calls) // 2
    nat = bjn.replay(NativeJourneyProcessor(config), calls[:half], None)
    py = bjn.replay(JourneyProcessor(config), calls[:half], None)
    counter = NativeTransitionCounter(config.windows, 900, "cells")
    blob = pickle.dumps((nat, counter))
    monkeypatch.setattr(journeys_native, "NativeJourneyCore", None)
    monkeypatch.setattr(transitions_native, "NativeCounter", None)
    back, back_counter = pickle.loads(blob)
    assert type(back) is JourneyProcessor and type(back_counter) is TransitionCounter
    assert back_counter.__dict__ == state_of(counter)
    assert bjn.fingerprint(back, []) == bjn.fingerprint(py, [])
    assert run(back, calls[half:]) == run(py, calls[half:])


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_chain_checkpoint_moves_between_engines(native: None, seed: int) -> None:
    """A chain pickled with the native stage restores native; a checkpoint of the Python stage
    (written before the native one existed: its config asks for `auto`) goes on natively;
    one whose config says `python` stays Python; all give the same outputs from there."""
    calls = bjn.random_calls(random.Random(seed))
    applies = [c for c in calls if c[0] == "apply"]
    half = len(applies) // 2
    old = JourneyChain(config_of("python"))
    chains = [JourneyChain(config_of()), old, JourneyChain(config_of("python"))]
    for chain in chains:
        for call in applies[:half]:
            chain.process_resolved(list(call[1]))
    old.config = config_of("auto")
    restored = [pickle.loads(pickle.dumps(c)) for c in chains]
    assert [engine_of(c.journeys) for c in restored] == ["native", "native", "python"]
    assert [type(c.transitions) for c in restored] == [
        NativeTransitionCounter, NativeTransitionCounter, TransitionCounter]
    for call in applies[half:]:
        outs = [c.process_resolved(list(call[1])) for c in restored]
        assert outs[0].steps == outs[1].steps == outs[2].steps
        assert outs[0].cells == outs[1].cells == outs[2].cells
    ends = [c.finish().cells for c in restored]
    assert ends[0] == ends[1] == ends[2]
    prints = {bjn.fingerprint(c.journeys, []) for c in restored}
    assert len(prints) == 1


@pytest.mark.parametrize("alphabet", ["0123456789abcdef", "éß€𝄞 x-"])
def test_event_digests_are_the_blake2b_ones_at_every_length(native: None, alphabet: str) -> None:
    """The core's one-block BLAKE2b (ids of up to 128 bytes) and the general one beyond give
    `event_digest`'s values (hashlib's), which checkpoints hold, on each side of the block."""
    from journeymap_journeys import NativeJourneyCore

    from processors.journeys import event_digest

    rng = random.Random(7)
    for n in range(0, 300):
        for _ in range(3):
            event_id = "".join(rng.choice(alphabet) for _ in range(n))
            assert bytes(NativeJourneyCore.event_digest(event_id)) == event_digest(event_id)


def test_the_digests_of_several_ids_are_the_blake2b_ones(native: None) -> None:
    """`apply` takes the digests of a chunk of events together (four at once with AVX2): the
    same values as one at a time, for any number of ids of any length in any mix (ids beyond
    one block among them)."""
    from journeymap_journeys import NativeJourneyCore

    from processors.journeys import event_digest

    rng = random.Random(11)
    for _ in range(2000):
        ids = ["".join(rng.choice("0123456789abcdef" if rng.random() < 0.7 else "éß€𝄞 x-")
                       for _ in range(rng.choice([rng.randrange(0, 140), rng.randrange(0, 300)])))
               for _ in range(rng.randrange(0, 21))]
        got = [bytes(d) for d in NativeJourneyCore.event_digests(ids)]
        assert got == [event_digest(event_id) for event_id in ids]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), config=configs)
def test_field_dicts_in_any_order_give_the_python_outputs(
    native: None, seed: int, config: ProcessingConfig
) -> None:
    """The core reads an event's fields at the entries where it found them in the events before
    (`FieldAt`): events whose field dicts hold the fields elsewhere (keys in another order, keys
    added, a key that is not a string: a dict the core must search as Python does) give the
    Python outputs."""
    rng = random.Random(seed)
    calls = bjn.random_calls(random.Random(seed))
    for call in calls:
        if call[0] != "apply":
            continue
        for ev in call[1]:
            fields = dict(ev.event.__dict__)
            r = rng.random()
            if r < 0.3:
                keys = list(fields)
                rng.shuffle(keys)
                fields = {k: fields[k] for k in keys}
            elif r < 0.4:
                fields = {"extra": 1, **fields}
            elif r < 0.45:
                fields[1] = "not a field"  # type: ignore[index]
            object.__setattr__(ev.event, "__dict__", fields)
    assert run(NativeJourneyProcessor(config), calls) == run(JourneyProcessor(config), calls)


def test_long_ids_and_early_times_give_the_python_outputs(native: None) -> None:
    """Event ids on each side of one BLAKE2b block of UTF-8 (dedup and the digest order of ties) and
    sessions the core names itself (`customer/ts`) at times from 0 to 13 digits."""
    from processors.events import TouchpointEvent
    from processors.identity import ResolvedEvent

    rng = random.Random(3)
    calls: list[Any] = []
    sent: list[ResolvedEvent] = []
    for b in range(12):
        batch = []
        for _ in range(20):
            if sent and rng.random() < 0.15:
                batch.append(rng.choice(sent))  # a duplicate
                continue
            at = rng.choice([0, 1, 9, 10, 99, 1_000, 65_536, 10**9, 1_772_323_200_000 + b])
            # (ids are at most 128 characters: beyond 128 bytes only as UTF-8)
            n = rng.choice([1, 16, 63, 64, 65, 120, 127, 128])
            fields = {"event_id": "".join(rng.choice(rng.choice(["ab", "éb"])) for _ in range(n)),
                      "occurred_at": at, "channel": "web",
                      "touchpoint": rng.choice(["landing", "pricing", "purchase"]),
                      "identities": {"anonymous_id": "a"}}
            ev = ResolvedEvent(rng.choice(["c0", "c1", "c2"]),
                               TouchpointEvent.model_validate(fields), "all")
            batch.append(ev)
            sent.append(ev)
        calls.append(("apply", batch, None))
    config = config_of(lateness_s=2_000_000_000)  # nothing late: every time counts
    assert run(NativeJourneyProcessor(config), calls) == run(JourneyProcessor(config), calls)

"""Funnel runs on hand-drawn timelines (one column per minute unless a test says otherwise).

Stages of the test funnel:  0 visit = landing_page | blog_post,  1 signup,  2 trial_start,
3 purchase.  Letters in the timelines: V visit, S signup, T trial_start, P purchase, x other.
"""

from __future__ import annotations

import pickle
from datetime import date

import pytest

from processors.config import FunnelConfig
from processors.funnels import (
    EXACT_DURATIONS_MAX,
    OUTSIDE,
    Durations,
    FunnelTracker,
    apply,
    cohort_week,
)
from tests.factories import DAY_MS, HOUR_MS, MIN_MS, T0_MS, journey, resolved

LETTERS = {"V": "landing_page", "S": "signup", "T": "trial_start", "P": "purchase",
           "x": "pricing_help", "B": "blog_post"}


def funnel(order: str = "relaxed", window_s: int = 3600, name: str = "f") -> FunnelConfig:
    return FunnelConfig.model_validate({
        "name": name, "order": order, "conversion_window_s": window_s,
        "stages": [
            {"name": "visit", "touchpoints": ["landing_page", "blog_post"]},
            {"name": "signup", "touchpoints": ["signup"]},
            {"name": "trial", "touchpoints": ["trial_start"]},
            {"name": "purchase", "touchpoints": ["purchase"]},
        ]})


def timeline(cid: str, drawing: str, *, unit_ms: int = MIN_MS, segment: str = "all",
             start_ms: int = T0_MS):
    """`"V-S--P"`: one event per letter at its column; `-` is a minute with nothing."""
    return [resolved(cid, LETTERS[ch], start_ms + i * unit_ms, segment=segment)
            for i, ch in enumerate(drawing) if ch != "-"]


def moves(transitions) -> list[tuple[int, int]]:
    return [(t.from_stage, t.to_stage) for t in transitions]


def stats(tracker: FunnelTracker, group_by=()) -> list[tuple[str, int, int, int]]:
    return [(r.stage, r.n_entered, r.n_advanced, r.n_dropped)
            for r in tracker.snapshot(group_by)]


def test_relaxed_run_skips_forward_and_converts() -> None:
    #   c1:  V - S - x - P        visit -> signup -> (trial skipped) -> purchase
    tracker = FunnelTracker([funnel()])
    out = tracker.update(timeline("c1", "V-S-x-P"))
    assert moves(out.transitions) == [(OUTSIDE, 0), (0, 1), (1, 3)]
    assert [t.time_in_prev_stage_ms for t in out.transitions] == [None, 2 * MIN_MS, 4 * MIN_MS]
    assert out.transitions[-1].converted
    assert tracker.customer("c1") == []  # converted runs are closed
    assert stats(tracker) == [("visit", 1, 1, 0), ("signup", 1, 1, 0), ("trial", 0, 0, 0),
                              ("purchase", 1, 0, 0)]


def test_strict_run_ignores_skips_until_the_next_stage_comes() -> None:
    #   c1:  V S P T P            strict: P before T is ignored; T then P counts
    tracker = FunnelTracker([funnel("strict")])
    out = tracker.update(timeline("c1", "VSPTP"))
    assert moves(out.transitions) == [(OUTSIDE, 0), (0, 1), (1, 2), (2, 3)]
    assert [t.ts_ms for t in out.transitions] == [T0_MS + i * MIN_MS for i in (0, 1, 3, 4)]


def test_stage_never_moves_backwards_and_repeats_do_not_restart() -> None:
    #   c1:  V S V S B x          later visits and signups change nothing
    tracker = FunnelTracker([funnel()])
    out = tracker.update(timeline("c1", "VSVSBx"))
    assert moves(out.transitions) == [(OUTSIDE, 0), (0, 1)]
    (now,) = tracker.customer("c1")
    assert (now.stage_name, now.stage_entered_ms, now.run_start_ms) == (
        "signup", T0_MS + MIN_MS, T0_MS)
    assert now.time_in_stage_ms(T0_MS + 10 * MIN_MS) == 9 * MIN_MS


def test_events_before_stage_zero_do_not_start_a_run() -> None:
    #   c1:  S T V                only V starts the run
    tracker = FunnelTracker([funnel()])
    assert moves(tracker.update(timeline("c1", "STV")).transitions) == [(OUTSIDE, 0)]


def test_window_counts_from_the_run_start_inclusive() -> None:
    # window 60 min; columns are minutes:
    #   c1:  V ...59 min... S ...          S at +60 min: inside (deadline inclusive)
    #   c2:  V ...60 min...  S             S at +61 min: the run dropped at +60, S ignored
    tracker = FunnelTracker([funnel(window_s=3600)])
    out = tracker.update(timeline("c1", "V" + "-" * 59 + "S")
                         + timeline("c2", "V" + "-" * 60 + "S"))
    by = {c: moves(t for t in out.transitions if t.customer_id == c) for c in ("c1", "c2")}
    assert by["c1"] == [(OUTSIDE, 0), (0, 1)]
    assert by["c2"] == [(OUTSIDE, 0), (0, OUTSIDE)]
    drop = out.transitions[-1]
    assert (drop.ts_ms, drop.time_in_prev_stage_ms) == (T0_MS + HOUR_MS, HOUR_MS)


def test_window_is_not_reset_by_advancing() -> None:
    # window 60 min, measured from V, not from S:
    #   c1:  V ---- S (+40) ---- T (+70)      T is too late although only 30 min after S
    tracker = FunnelTracker([funnel(window_s=3600)])
    events = [resolved("c1", "landing_page", T0_MS), resolved("c1", "signup", T0_MS + 40 * MIN_MS),
              resolved("c1", "trial_start", T0_MS + 70 * MIN_MS)]
    out = tracker.update(events)
    assert moves(out.transitions) == [(OUTSIDE, 0), (0, 1), (1, OUTSIDE)]
    assert stats(tracker)[:2] == [("visit", 1, 1, 0), ("signup", 1, 0, 1)]


def test_advance_drops_expired_runs_only_after_the_deadline_passed() -> None:
    #   c1:  V S                  deadline T0+60min
    #   c2:          V            deadline T0+70min
    tracker = FunnelTracker([funnel(window_s=3600)])
    tracker.update(timeline("c1", "VS") + timeline("c2", "----------V"))
    assert tracker.advance(T0_MS + HOUR_MS) == []  # an event at the deadline may still come
    dropped = tracker.advance(T0_MS + HOUR_MS + 1)
    assert [(t.customer_id, t.from_stage_name, t.to_stage) for t in dropped] == [
        ("c1", "signup", OUTSIDE)]
    assert [t.customer_id for t in tracker.advance(T0_MS + 2 * HOUR_MS)] == ["c2"]
    assert stats(tracker)[:2] == [("visit", 2, 1, 1), ("signup", 1, 0, 1)]


def test_a_new_run_starts_after_a_drop_and_after_a_conversion() -> None:
    # window 60 min, columns are 10 minutes:
    #   c1:  V S - - - - - - V P V          run 1 drops at +60; run 2 converts; run 3 starts
    tracker = FunnelTracker([funnel(window_s=3600)])
    out = tracker.update(timeline("c1", "VS------VPV", unit_ms=10 * MIN_MS))
    assert moves(out.transitions) == [(OUTSIDE, 0), (0, 1), (1, OUTSIDE), (OUTSIDE, 0), (0, 3),
                                      (OUTSIDE, 0)]
    assert stats(tracker) == [("visit", 3, 2, 0), ("signup", 1, 0, 1), ("trial", 0, 0, 0),
                              ("purchase", 1, 0, 0)]


def test_out_of_order_and_behind_watermark_events_are_late_not_applied() -> None:
    tracker = FunnelTracker([funnel()])
    tracker.update(timeline("c1", "V-S"))
    behind = resolved("c1", "trial_start", T0_MS + MIN_MS)  # before the signup entry
    out = tracker.update([behind])
    assert out.late == [behind] and out.transitions == []
    tracker.advance(T0_MS + 5 * MIN_MS)
    old = resolved("c2", "landing_page", T0_MS + 4 * MIN_MS)
    assert tracker.update([old]).late == [old]
    assert tracker.customer("c2") == []


def test_aggregates_by_segment_and_cohort_week_and_rollups() -> None:
    week2 = T0_MS + 7 * DAY_MS
    tracker = FunnelTracker([funnel(window_s=DAY_S_3)])
    tracker.update(timeline("a1", "VS", segment="a") + timeline("a2", "V-S", segment="a")
                   + timeline("b1", "V---S", segment="b")
                   + timeline("a3", "VSTP", segment="a", start_ms=week2))
    rows = {(r.segment, r.cohort_week, r.stage): r for r in tracker.snapshot()}
    feb23, mar2 = date(2026, 2, 23), date(2026, 3, 2)
    assert rows[("a", feb23, "visit")].n_advanced == 2
    assert rows[("a", feb23, "visit")].median_advance_ms == 1.5 * MIN_MS
    assert rows[("b", feb23, "visit")].median_advance_ms == 4 * MIN_MS
    assert rows[("a", mar2, "purchase")].n_entered == 1
    by_seg = {(r.segment, r.stage): r for r in tracker.snapshot(("segment",))}
    assert by_seg[("a", "visit")].n_entered == 3 and by_seg[("a", "visit")].cohort_week is None
    total = {r.stage: r for r in tracker.snapshot(())}
    assert total["visit"].segment == "*"
    assert (total["visit"].n_entered, total["visit"].n_advanced) == (4, 4)
    # visit -> signup took 1, 2, 4 and 1 minutes: median 1.5, p90 by interpolation 3.4
    assert total["visit"].median_advance_ms == 1.5 * MIN_MS
    assert total["visit"].p90_advance_ms == pytest.approx(3.4 * MIN_MS)
    with pytest.raises(ValueError, match="group_by"):
        tracker.snapshot(("channel",))


DAY_S_3 = 3 * 86_400


def test_several_funnels_share_touchpoints_independently() -> None:
    short = FunnelConfig.model_validate({
        "name": "g", "order": "strict", "stages": [
            {"name": "signup", "touchpoints": ["signup"]},
            {"name": "purchase", "touchpoints": ["purchase"]}]})
    tracker = FunnelTracker([funnel(), short])
    out = tracker.update(timeline("c1", "SVP"))
    assert [(t.funnel, t.from_stage, t.to_stage) for t in out.transitions] == [
        ("g", OUTSIDE, 0), ("f", OUTSIDE, 0), ("f", 0, 3), ("g", 0, 1)]  # config order per event


def test_state_pickles_and_resumes_and_aggregates_merge() -> None:
    cfg = funnel()
    left = FunnelTracker([cfg])
    left.update(timeline("c1", "VS"))
    resumed = FunnelTracker([cfg], pickle.loads(pickle.dumps(left.state)))
    out = resumed.update(timeline("c1", "--T"))
    assert moves(out.transitions) == [(1, 2)]
    right = FunnelTracker([cfg])
    right.update(timeline("c2", "VP"))
    resumed.merge(right.state)
    assert stats(resumed) == [("visit", 2, 2, 0), ("signup", 1, 1, 0), ("trial", 1, 0, 0),
                              ("purchase", 1, 0, 0)]


def test_functional_apply_advances_to_the_watermark() -> None:
    state, result = apply(FunnelTracker([funnel()]).state, journey("c1", "landing_page"),
                          [funnel()], watermark_ms=T0_MS + 2 * HOUR_MS)
    assert moves(result.transitions) == [(OUTSIDE, 0), (0, OUTSIDE)]
    assert state.runs["f"] == {}


def test_rows_for_the_sink() -> None:
    tracker = FunnelTracker([funnel()])
    first = tracker.update(timeline("c1", "V")).transitions[0]
    assert first.as_row() == {
        "customer_id": "c1", "funnel": "f", "from_stage": "", "to_stage": "visit", "ts": T0_MS,
        "time_in_prev_stage_ms": None, "segment": "all", "cohort_week": date(2026, 2, 23)}
    row = tracker.snapshot()[0].as_row(as_of_ms=T0_MS)
    assert (row["stage"], row["stage_index"], row["entered"], row["as_of"]) == (
        "visit", 0, 1, T0_MS)


def test_cohort_week_is_the_iso_monday() -> None:
    assert cohort_week(T0_MS) == date(2026, 2, 23)  # Sunday 2026-03-01
    assert cohort_week(T0_MS + DAY_MS) == date(2026, 3, 2)  # Monday
    assert cohort_week(0) == date(1969, 12, 29)


def test_durations_exact_then_bounded_within_one_percent() -> None:
    import random

    rng = random.Random(3)
    values = [rng.randrange(0, 10**8) for _ in range(3 * EXACT_DURATIONS_MAX)]
    d, parts = Durations(), [Durations(), Durations()]
    for i, v in enumerate(values):
        d.add(v)
        parts[i % 2].add(v)
    assert d.exact is None and len(d.buckets) < 1300
    parts[0].merge(parts[1])
    ordered = sorted(values)
    for q in (0.5, 0.9):
        exact = ordered[round(q * (len(ordered) - 1))]
        assert d.quantile(q) == pytest.approx(exact, rel=0.011)
        assert parts[0].quantile(q) == pytest.approx(exact, rel=0.011)
    small = Durations()
    for v in (5, 1, 3):
        small.add(v)
    assert (small.quantile(0.5), small.quantile(0.9), Durations().quantile(0.5)) == (3, 4.6, None)


# -- identity merges: two customers' open runs become one ----------------------------------


def test_merge_folds_the_later_run_into_the_earlier_one_in_event_time_order() -> None:
    # window 60 min, relaxed:
    #   w:   V - - - - T            run from 0, at trial (skipped signup)
    #   l:   - - V S - - - P        run from 2, at signup; its V is inside w's run
    #   merged (from scratch):  V(0) . V S(3) . T(5) . P(7)  -> 0 -> 1 -> 2 -> 3, converted
    tracker = FunnelTracker([funnel()])
    tracker.update(sorted(timeline("w", "V----T") + timeline("l", "--VS"),
                          key=lambda e: e.ts_ms))
    out = tracker.merge_customer("l", "w")
    assert tracker.customer("l") == []
    (now,) = tracker.customer("w")
    assert (now.stage_name, now.stage_entered_ms, now.run_start_ms) == (
        "trial", T0_MS + 5 * MIN_MS, T0_MS)
    # Only the move neither made before comes out: trial at 5 is now reached from signup (l's
    # visit -> signup at 3 was emitted under l, which the identity merge maps to w).
    assert [(t.customer_id, t.from_stage, t.to_stage, t.ts_ms) for t in out] == [
        ("w", 1, 2, T0_MS + 5 * MIN_MS)]
    assert tracker.update(timeline("w", "-------P")).transitions[0].converted
    # Counted as one customer: one entry, visit -> signup -> trial -> purchase.
    assert stats(tracker) == [("visit", 1, 1, 0), ("signup", 1, 1, 0), ("trial", 1, 1, 0),
                              ("purchase", 1, 0, 0)]
    scratch = FunnelTracker([funnel()])
    scratch.update(sorted(timeline("w", "V----T-P") + timeline("w", "--VS"),
                          key=lambda e: e.ts_ms))
    assert tracker.snapshot() == scratch.snapshot()


def test_merge_never_moves_a_stage_backwards() -> None:
    # strict, window 60 min:
    #   w:   V S T                 at trial since 2
    #   l:   - - - V               a later run at visit
    #   merged: l's V is a stage-0 repeat inside w's run: w stays at trial, l's entry is retracted
    tracker = FunnelTracker([funnel("strict")])
    tracker.update(timeline("w", "VST") + timeline("l", "---V"))
    assert tracker.merge_customer("l", "w") == []
    (now,) = tracker.customer("w")
    assert (now.stage_name, now.stage_entered_ms) == ("trial", T0_MS + 2 * MIN_MS)
    assert stats(tracker) == [("visit", 1, 1, 0), ("signup", 1, 1, 0), ("trial", 1, 0, 0),
                              ("purchase", 0, 0, 0)]


def test_merge_where_the_earlier_run_ran_out_of_window_starts_a_new_one() -> None:
    # window 60 min, columns are 10 minutes, relaxed:
    #   l:   V - - - S - - - -      run from 0 (signup at 40); still open at the watermark (50)?
    #   w:   - - - - - V            run from 50
    # Watermark 50: l's deadline 60 is ahead, so l is open; the merge keeps l's run (from 0),
    # w's V at 50 is a repeat inside it. An event at 70 then drops it (deadline 60) and a V at 80
    # starts a new run, exactly as from scratch.
    tracker = FunnelTracker([funnel()])
    tracker.update(timeline("l", "V---S", unit_ms=10 * MIN_MS)
                   + timeline("w", "-----V", unit_ms=10 * MIN_MS))
    tracker.advance(T0_MS + 50 * MIN_MS)
    tracker.merge_customer("l", "w")
    (now,) = tracker.customer("w")
    assert (now.stage_name, now.run_start_ms) == ("signup", T0_MS)
    out = tracker.update(timeline("w", "-------xV", unit_ms=10 * MIN_MS))
    assert moves(out.transitions) == [(1, OUTSIDE), (OUTSIDE, 0)]
    assert stats(tracker)[:2] == [("visit", 2, 1, 0), ("signup", 1, 0, 1)]


def test_merge_with_an_idle_winner_moves_the_run_and_emits_nothing() -> None:
    tracker = FunnelTracker([funnel()])
    tracker.update(timeline("l", "VS"))
    before = stats(tracker)
    assert tracker.merge_customer("l", "w") == []
    assert [c.stage_name for c in tracker.customer("w")] == ["signup"]
    assert stats(tracker) == before
    assert tracker.merge_customer("x", "w") == [] and tracker.merge_customer("w", "w") == []


def test_merge_retracts_durations_and_the_state_still_pickles() -> None:
    # relaxed: w V(0) P(9) would convert later; l V(1) S(2) -> merged: V(0) S(2) (visit 2 min)
    tracker = FunnelTracker([funnel()])
    tracker.update(sorted(timeline("w", "V") + timeline("l", "-VS"), key=lambda e: e.ts_ms))
    tracker.merge_customer("l", "w")
    total = {r.stage: r for r in tracker.snapshot(())}
    assert (total["visit"].n_entered, total["visit"].n_advanced) == (1, 1)
    assert total["visit"].median_advance_ms == 2 * MIN_MS
    resumed = FunnelTracker([funnel()], pickle.loads(pickle.dumps(tracker.state)))
    assert moves(resumed.update(timeline("w", "--------P")).transitions) == [(1, 3)]


def test_a_run_moved_to_another_partition_takes_its_counts_and_merges_there() -> None:
    #   partition A:  l: V S          partition B:  w: - - - V        then l merges into w on B
    left, right = FunnelTracker([funnel()]), FunnelTracker([funnel()])
    left.update(timeline("l", "VS"))
    right.update(timeline("w", "---V"))
    runs = pickle.loads(pickle.dumps(left.detach("l")))
    assert left.customer("l") == [] and left.state.cells == {}
    right.attach("l", runs)
    assert stats(right)[:2] == [("visit", 2, 1, 0), ("signup", 1, 0, 0)]
    right.merge_customer("l", "w")
    # As one customer: V(0) S(1), w's V(3) a repeat inside the run.
    assert [(c.stage_name, c.run_start_ms) for c in right.customer("w")] == [("signup", T0_MS)]
    assert stats(right)[:2] == [("visit", 1, 1, 0), ("signup", 1, 0, 0)]


def test_a_run_pickled_before_runs_kept_events_still_merges() -> None:
    from processors.funnels import FunnelRun

    run = FunnelRun(1, T0_MS + MIN_MS, T0_MS, ("f", "all", cohort_week(T0_MS)))
    old = FunnelRun.__new__(FunnelRun)  # what an older checkpoint unpickles into
    old.__setstate__((None, {"stage": run.stage, "stage_entered_ms": run.stage_entered_ms,
                             "run_start_ms": run.run_start_ms, "cell": run.cell}))
    assert list(old.events) == [T0_MS << 6, (T0_MS + MIN_MS) << 6 | 1]

"""Funnel properties: a run never moves backwards, and the aggregates equal a from-scratch count.

The reference below does not share code with the tracker: it cuts each customer's sorted events
into runs (a run starts at a stage-0 event, ends at the last stage or at the first event past its
deadline) and counts what those runs did.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.config import FunnelConfig
from processors.events import ResolvedEvent
from processors.funnels import OUTSIDE, FunnelTracker, cohort_week
from tests.factories import DAY_MS, MIN_MS, T0_MS, resolved

TOUCHPOINTS = ["landing_page", "signup", "trial_start", "purchase", "pricing_help"]
STAGES = [["landing_page"], ["signup"], ["trial_start"], ["purchase"]]
FAR_FUTURE = T0_MS + 10_000 * DAY_MS


def config(order: str, window_min: int) -> FunnelConfig:
    return FunnelConfig.model_validate({
        "name": "f", "order": order, "conversion_window_s": window_min * 60,
        "stages": [{"name": f"s{i}", "touchpoints": tps} for i, tps in enumerate(STAGES)]})


@st.composite
def streams(draw: st.DrawFn) -> tuple[FunnelConfig, list[ResolvedEvent], list[int]]:
    """Customers' event sequences in event-time order: gaps of minutes (often landing exactly
    on a window's end) and of days (crossing cohort weeks)."""
    cfg = config(draw(st.sampled_from(["strict", "relaxed"])), draw(st.sampled_from([5, 10])))
    events = []
    for c in range(draw(st.integers(1, 6))):
        t = T0_MS + draw(st.integers(0, 14 * DAY_MS // MIN_MS)) * MIN_MS
        for _ in range(draw(st.integers(0, 14))):
            t += draw(st.sampled_from([0, 1, 2, 5, 5, 10, 1440, 3 * 1440])) * MIN_MS
            events.append(resolved(f"c{c}", draw(st.sampled_from(TOUCHPOINTS)), t,
                                   segment=draw(st.sampled_from(["a", "b"]))))
    events.sort(key=lambda e: e.ts_ms)  # stable: per customer order kept
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=5)))
    return cfg, events, cuts


def run_tracker(cfg: FunnelConfig, events: list[ResolvedEvent], cuts: list[int]):
    tracker = FunnelTracker([cfg])
    transitions = []
    start = 0
    for cut in [*cuts, len(events)]:
        transitions += tracker.update(events[start:cut]).transitions
        if cut < len(events):  # no later event is older than the watermark
            transitions += tracker.advance(events[cut].ts_ms)
        start = cut
    transitions += tracker.advance(FAR_FUTURE)
    return tracker, transitions


def reference(cfg: FunnelConfig, events: list[ResolvedEvent]) -> dict:
    stage_of = {tp: i for i, s in enumerate(cfg.stages) for tp in s.touchpoints}
    last, window = len(cfg.stages) - 1, cfg.conversion_window_s * 1000
    per_customer: dict[str, list[ResolvedEvent]] = defaultdict(list)
    for e in events:
        per_customer[e.customer_id].append(e)
    agg: dict = defaultdict(lambda: {"entered": [0] * 4, "advanced": [0] * 4,
                                     "dropped": [0] * 4, "times": [[] for _ in range(4)]})
    for seq in per_customer.values():
        i = 0
        while True:
            starts = [k for k in range(i, len(seq)) if stage_of.get(seq[k].event.touchpoint) == 0]
            if not starts:
                break
            k0 = starts[0]
            run_start = seq[k0].ts_ms
            path = [(0, run_start)]
            end, converted = len(seq), False
            for k in range(k0 + 1, len(seq)):
                if seq[k].ts_ms > run_start + window:
                    end = k  # this event may start the next run
                    break
                s = stage_of.get(seq[k].event.touchpoint)
                cur = path[-1][0]
                if s is not None and s > cur and (cfg.order == "relaxed" or s == cur + 1):
                    path.append((s, seq[k].ts_ms))
                    if s == last:
                        end, converted = k + 1, True
                        break
            cell = agg[(seq[k0].segment, cohort_week(run_start))]
            for (s, t), (_, t2) in itertools.pairwise(path):
                cell["advanced"][s] += 1
                cell["times"][s].append(t2 - t)
            for s, _ in path:
                cell["entered"][s] += 1
            if not converted:  # the final watermark is far past every deadline
                cell["dropped"][path[-1][0]] += 1
            i = end
    return agg


def quantile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=10, method="inclusive")[int(q * 10) - 1]


@settings(max_examples=150, deadline=None)
@given(streams())
def test_aggregates_equal_a_recount_from_scratch(case) -> None:
    cfg, events, cuts = case
    tracker, _ = run_tracker(cfg, events, cuts)
    expected = reference(cfg, events)
    got = {(r.segment, r.cohort_week, r.stage_index): r for r in tracker.snapshot()}
    assert {(seg, week) for seg, week, _ in got} == set(expected)
    for (seg, week), cell in expected.items():
        for s in range(4):
            row = got[(seg, week, s)]
            assert (row.n_entered, row.n_advanced, row.n_dropped) == (
                cell["entered"][s], cell["advanced"][s], cell["dropped"][s])
            times = cell["times"][s]
            assert row.median_advance_ms == (statistics.median(times) if times else None)
            assert row.p90_advance_ms == quantile(times, 0.9)
    assert all(not runs for runs in tracker.state.runs.values())


@settings(max_examples=150, deadline=None)
@given(streams())
def test_a_run_never_moves_backwards(case) -> None:
    cfg, events, cuts = case
    _, transitions = run_tracker(cfg, events, cuts)
    current: dict[str, int] = {}
    for t in transitions:
        at = current.get(t.customer_id, OUTSIDE)
        assert t.from_stage == at
        if t.from_stage == OUTSIDE:
            assert t.to_stage == 0
        elif t.to_stage != OUTSIDE:
            assert t.to_stage > t.from_stage
            if cfg.order == "strict":
                assert t.to_stage == t.from_stage + 1
        ended = t.to_stage == OUTSIDE or t.converted
        current[t.customer_id] = OUTSIDE if ended else t.to_stage


def _stage_order(cfg: FunnelConfig):
    stage_of = {tp: i for i, s in enumerate(cfg.stages) for tp in s.touchpoints}
    return lambda e: (e.ts_ms, stage_of.get(e.event.touchpoint, -1))


@st.composite
def merge_cases(draw: st.DrawFn):
    """Two customers, each with at most one run open at the merge and none closed since the
    other's run began (events inside the run's window, no last stage), one of them with older
    closed runs; then the merged customer's later events. Segments are per customer, as the
    chain stamps them."""
    cfg = config(draw(st.sampled_from(["strict", "relaxed"])), draw(st.sampled_from([5, 10])))
    window = cfg.conversion_window_s * 1000
    t0 = T0_MS + 3 * DAY_MS
    pre: list[ResolvedEvent] = []
    for cid, seg in (("w", "a"), ("l", "b")):
        if not draw(st.booleans()) and cid == "l":
            continue
        start = t0 + draw(st.integers(0, 12)) * MIN_MS
        pre.append(resolved(cid, "landing_page", start, segment=seg))
        for _ in range(draw(st.integers(0, 6))):
            at = start + draw(st.integers(0, window // MIN_MS - 1)) * MIN_MS
            tp = draw(st.sampled_from(["landing_page", "signup", "trial_start", "pricing_help"]))
            pre.append(resolved(cid, tp, at, segment=seg))
    old_owner = draw(st.sampled_from(["w", "l"]))
    old = [resolved(old_owner, draw(st.sampled_from(TOUCHPOINTS)),
                    T0_MS + draw(st.integers(0, 2 * DAY_MS // MIN_MS)) * MIN_MS,
                    segment="a" if old_owner == "w" else "b")
           for _ in range(draw(st.integers(0, 6)))]
    # The watermark may move up to the earliest run's deadline: no run closes before the merge
    # (runs closed before a merge are not re-walked; see FunnelTracker.merge_customer).
    first_deadline = min(e.ts_ms for e in pre) + window
    last = max(first_deadline, *(e.ts_ms for e in pre))
    post = []
    t = last
    for _ in range(draw(st.integers(0, 10))):
        t += draw(st.sampled_from([0, 1, 2, 5, 11, 1440])) * MIN_MS
        post.append(resolved("w", draw(st.sampled_from(TOUCHPOINTS)), t, segment="a"))
    return cfg, old, pre, post, draw(st.booleans())


@settings(max_examples=200, deadline=None)
@given(merge_cases())
def test_merging_two_customers_equals_a_recount_of_the_merged_events(case) -> None:
    """merge_customer(l, w) then the later events == one tracker fed every event as w's."""
    cfg, old, pre, post, advance_first = case
    order = _stage_order(cfg)
    t_min = min(e.ts_ms for e in pre)

    def drive(tracker: FunnelTracker, as_winner: bool, merge: bool):
        rename = (lambda e: ResolvedEvent("w", e.event, e.segment)) if as_winner else (
            lambda e: e)
        tracker.update([rename(e) for e in sorted(old, key=order)])
        tracker.advance(t_min)
        tracker.update([rename(e) for e in sorted(pre, key=order)])
        if advance_first:  # the watermark moves up to the earliest deadline
            tracker.advance(t_min + cfg.conversion_window_s * 1000)
        if merge:
            tracker.merge_customer("l", "w")
        at_merge = tracker.customer("w")
        tracker.update(post)
        tracker.advance(FAR_FUTURE)
        return at_merge

    merged, scratch = FunnelTracker([cfg]), FunnelTracker([cfg])
    assert drive(merged, False, True) == drive(scratch, True, False)
    assert merged.snapshot() == scratch.snapshot()
    assert merged.customer("l") == [] and all(not r for r in merged.state.runs.values())

"""Every windowed count equals a from-scratch recount, for any arrival order within the lateness.

The recount below is written independently of :mod:`processors.journeys`: sort each customer's
distinct events by event time, walk them once, and count the transitions falling in each window.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.config import JourneyConfig, OutcomesConfig, ProcessingConfig, WindowsConfig
from processors.events import ResolvedEvent
from processors.journeys import CONVERSION, NULL, START, JourneyProcessor, Step, event_digest
from processors.transitions import ALL, TransitionCounter, TransitionCounts, gap_bucket
from tests.factories import MIN_MS, T0_MS, event

LATENESS_S = 30 * 60
HORIZON_S = 6 * 3600
STEP_MS = 3_600_000
CONFIG = ProcessingConfig(
    outcomes=OutcomesConfig(conversion=["purchase"], churn=["cancel"], null_horizon_s=HORIZON_S),
    journey=JourneyConfig(session_gap_s=30 * 60, allowed_lateness_s=LATENESS_S,
                          last_touchpoints_kept=2, dedup_ids_per_customer=64),
    windows=WindowsConfig(sizes_s=[3600, 3 * 3600], step_s=3600),
)
TOUCHPOINTS = ["home", "pricing", "signup", "purchase", "cancel"]

Key1 = tuple[str, str, str, str]
Key2 = tuple[str, str, str, str, str]


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[ResolvedEvent], list[int]]:
    """Events of a few customers and an arrival order with delays of at most the lateness."""
    events: list[ResolvedEvent] = []
    for c in range(draw(st.integers(1, 4))):
        t = T0_MS + draw(st.integers(0, 120)) * MIN_MS
        for _ in range(draw(st.integers(1, 12))):
            t += draw(st.sampled_from([0, 1, 5, 20, 31, 50, 90, 400])) * MIN_MS
            events.append(ResolvedEvent(
                f"c{c}",
                event(draw(st.sampled_from(TOUCHPOINTS)), at_ms=t,
                      channel=draw(st.sampled_from(["web", "email"]))),
                draw(st.sampled_from(["s1", "s2"])),
            ))
    dups = draw(st.lists(st.sampled_from(events), max_size=3))
    arrivals = events + dups
    delays = [draw(st.integers(0, LATENESS_S * 1000)) for _ in arrivals]
    order = sorted(range(len(arrivals)), key=lambda i: arrivals[i].ts_ms + delays[i])
    cuts = draw(st.lists(st.integers(1, len(arrivals)), max_size=4))
    return [arrivals[i] for i in order], sorted(set(cuts))


def recount(events: list[ResolvedEvent]) -> list[tuple[str, str, str, str, str, int, int]]:
    """(segment, channel, prev2, src, dst, gap_ms, ts_ms) of every transition, in-order truth."""
    horizon = HORIZON_S * 1000
    by_customer: dict[str, dict[str, ResolvedEvent]] = defaultdict(dict)
    for e in events:
        by_customer[e.customer_id].setdefault(e.event.event_id, e)
    out = []
    for evs in by_customer.values():
        seq = sorted(evs.values(), key=lambda e: (e.ts_ms, event_digest(e.event.event_id)))
        open_, src, prev2, last = False, START, "", None
        for e in seq:
            if open_ and last is not None and e.ts_ms - last.ts_ms >= horizon:
                out.append((last.segment, last.event.channel, prev2, src, NULL, horizon,
                            last.ts_ms + horizon))
                open_ = False
            if not open_:
                src, prev2, open_ = START, "", True
            tp = e.event.touchpoint
            dst = CONVERSION if tp == "purchase" else NULL if tp == "cancel" else tp
            gap = 0 if src == START else e.ts_ms - last.ts_ms  # type: ignore[union-attr]
            out.append((e.segment, e.event.channel, prev2, src, dst, gap, e.ts_ms))
            prev2, src, last = src, dst, e
            open_ = dst not in (CONVERSION, NULL)
        if open_ and last is not None:
            out.append((last.segment, last.event.channel, prev2, src, NULL, horizon,
                        last.ts_ms + horizon))
    return out


def expected(steps: list[tuple[str, str, str, str, str, int, int]]
             ) -> tuple[Counter[Key1], Counter[Key2], Counter[Key1]]:
    first: Counter[Key1] = Counter()
    second: Counter[Key2] = Counter()
    gaps: Counter[Key1] = Counter()
    for seg, ch, prev2, src, dst, gap, _ in steps:
        for scope in ((ALL, ALL), (seg, ALL), (ALL, ch)):
            first[(*scope, src, dst)] += 1
            gaps[(*scope, src, dst)] += gap
            if prev2:
                second[(*scope, prev2, src, dst)] += 1
    return first, second, gaps


def observed(counts: TransitionCounts) -> tuple[Counter[Key1], Counter[Key2], Counter[Key1]]:
    rolled = counts.first_order()
    first = Counter({k: v[0] for k, v in rolled.items()})
    gaps = Counter({k: v[1] for k, v in rolled.items()})
    return +first, +Counter(counts.second_order()), +gaps


@settings(max_examples=150, deadline=None)
@given(streams())
def test_windowed_counts_equal_a_recount(stream: tuple[list[ResolvedEvent], list[int]]) -> None:
    arrivals, cuts = stream
    journeys = JourneyProcessor(CONFIG)
    counter = TransitionCounter(CONFIG.windows, LATENESS_S)
    windows: dict[tuple[int, int], tuple[Counter, Counter, Counter]] = {}

    def keep(start_ms: int, size_s: int, counts: TransitionCounts) -> None:
        windows[(start_ms, size_s)] = observed(counts)

    def drive(watermark_ms: int) -> None:
        counter.update(journeys.expire(watermark_ms).steps)
        f = counter.frontier_pane
        lateness_ms = counter.lateness_ms
        w = watermark_ms if f is None else min(watermark_ms, (f + 1) * STEP_MS + lateness_ms)
        while True:  # one step at a time, so every window is observed
            counter.advance(w, on_window=keep)
            if w >= watermark_ms:
                break
            w = min(w + STEP_MS, watermark_ms)

    n_late = 0
    for lo, hi in zip([0, *cuts], [*cuts, len(arrivals)], strict=True):
        out = journeys.apply(arrivals[lo:hi])
        n_late += len(out.late)
        counter.update(out.steps)
        drive(journeys.watermark_ms)
    assert n_late == 0  # every delay is within the lateness
    end = max(e.ts_ms for e in arrivals) + HORIZON_S * 1000 + LATENESS_S * 1000 + 4 * STEP_MS
    drive(end)

    truth = recount(arrivals)
    assert observed(counter.totals) == tuple(+c for c in expected(truth))
    assert windows, "no window was closed"
    for (start, size_s), got in windows.items():
        inside = [s for s in truth if start <= s[6] < start + size_s * 1000]
        assert got == tuple(+c for c in expected(inside)), (start, size_s)
    # Every pane with a transition was closed, and at least one window held each transition.
    assert all(any(start <= s[6] < start + size * 1000 for start, size in windows)
               for s in truth)


MERGE_CONFIG = CONFIG.model_copy(update={"journey": JourneyConfig(
    session_gap_s=30 * 60, allowed_lateness_s=LATENESS_S, last_touchpoints_kept=100,
    dedup_ids_per_customer=64)})


@settings(max_examples=150, deadline=None)
@given(streams(), st.integers(0, 10_000), st.booleans())
def test_merge_corrections_equal_a_recount_as_one_customer(
        stream: tuple[list[ResolvedEvent], list[int]], at: int, loser_first: bool) -> None:
    """After merge(loser, winner) the totals equal a recount in which both are one customer.

    Every event stays in the kept history here (100 kept), so "within the kept history" is all
    of them; events of the loser arriving after the merge come resolved to the winner.
    """
    arrivals, _ = stream
    loser, winner = ("c1", "c0") if loser_first else ("c0", "c1")
    m = at % (len(arrivals) + 1)

    def as_winner(e: ResolvedEvent) -> ResolvedEvent:
        return ResolvedEvent(winner, e.event, e.segment) if e.customer_id == loser else e

    journeys = JourneyProcessor(MERGE_CONFIG)
    counter = TransitionCounter(MERGE_CONFIG.windows, LATENESS_S)
    # What a summing sink holds with delta corrections: every emitted row added per pane cell.
    by_delta = TransitionCounter(MERGE_CONFIG.windows, LATENESS_S, corrections="delta")
    sink: Counter[tuple[object, ...]] = Counter()
    # What a sink keeping the latest emission of each pane holds with pane corrections: every
    # pane re-emitted whole, however old (panes past the largest window come from the archive).
    latest: dict[int, Counter[tuple[object, ...]]] = {}
    # What a sink keeping the latest row of each cell holds with cell corrections.
    by_cells = TransitionCounter(MERGE_CONFIG.windows, LATENESS_S, corrections="cells")
    latest_cell: dict[tuple[object, ...], int] = {}

    def count(steps: list[Step], watermark_ms: int) -> None:
        for c in (counter, by_delta, by_cells):
            c.update(steps)
        emitted: dict[int, Counter[tuple[object, ...]]] = {}
        for row in counter.advance(watermark_ms):
            pane = emitted.setdefault(row.pane_start_ms, Counter())
            pane[(row.pane_start_ms, *row[2:8], "n")] += row.n
            pane[(row.pane_start_ms, *row[2:8], "gap")] += row.gap_sum_ms
        latest.update(emitted)
        for row in by_delta.advance(watermark_ms):
            sink[(row.pane_start_ms, *row[2:8], "n")] += row.n
            sink[(row.pane_start_ms, *row[2:8], "gap")] += row.gap_sum_ms
        for row in by_cells.advance(watermark_ms):
            latest_cell[(row.pane_start_ms, *row[2:8], "n")] = row.n
            latest_cell[(row.pane_start_ms, *row[2:8], "gap")] = row.gap_sum_ms

    for batch in (arrivals[:m], [], [as_winner(e) for e in arrivals[m:]]):
        steps = journeys.merge(loser, winner).steps if not batch else journeys.apply(batch).steps
        count(steps + journeys.expire(journeys.watermark_ms).steps, journeys.watermark_ms)
    end = max(e.ts_ms for e in arrivals) + HORIZON_S * 1000 + LATENESS_S * 1000 + 4 * STEP_MS
    count(journeys.expire(end).steps, end)

    as_one = [as_winner(e) for e in arrivals]
    truth = recount(as_one)
    assert observed(counter.totals) == tuple(+c for c in expected(truth))
    want: Counter[tuple[object, ...]] = Counter()
    for seg, ch, prev2, src, dst, gap, ts in truth:
        cell = (ts // STEP_MS * STEP_MS, seg, ch, prev2, src, dst, gap_bucket(gap))
        want[(*cell, "n")] += 1
        want[(*cell, "gap")] += gap
    assert {k: v for k, v in sink.items() if v} == {k: v for k, v in want.items() if v}
    by_pane = Counter()
    for pane in latest.values():
        by_pane.update(pane)
    assert {k: v for k, v in by_pane.items() if v} == {k: v for k, v in want.items() if v}
    assert {k: v for k, v in latest_cell.items() if v} == {k: v for k, v in want.items() if v}
    # The merged customer's state equals one fed the same arrivals as one customer throughout.
    fresh = JourneyProcessor(MERGE_CONFIG)
    fresh.apply(as_one)
    fresh.expire(end)
    assert loser not in journeys.customers
    got, want = journeys.snapshot(winner), fresh.snapshot(winner)
    if want is None:
        assert got is None or got.n_events == 0
    else:
        assert got is not None
        assert (got.n_events, got.n_conversions, got.n_churns, got.n_expired, got.by_channel,
                got.journey_no, got.markov_state, got.last_touchpoints, got.first_seen_ms) == (
            want.n_events, want.n_conversions, want.n_churns, want.n_expired, want.by_channel,
            want.journey_no, want.markov_state, want.last_touchpoints, want.first_seen_ms)


@settings(max_examples=150, deadline=None)
@given(streams(), st.lists(st.tuples(st.sampled_from([0, 1, 1, 1, 2, 3, 5, 9, 40]),
                                     st.booleans()), min_size=1, max_size=16))
def test_windows_read_now_and_then_equal_a_recount(
        stream: tuple[list[ResolvedEvent], list[int]], reads: list[tuple[int, bool]]) -> None:
    """Windows brought up to date only when read (after any number of steps) are exact."""
    arrivals, _ = stream
    journeys = JourneyProcessor(CONFIG)
    out = journeys.apply(arrivals)
    assert not out.late
    end = max(e.ts_ms for e in arrivals) + HORIZON_S * 1000 + LATENESS_S * 1000
    steps = out.steps + journeys.expire(end).steps
    truth = recount(arrivals)
    # An 8-step window catches up by adding and retracting panes when read within 4 steps.
    counter = TransitionCounter(WindowsConfig(sizes_s=[3600, 3 * 3600, 8 * 3600], step_s=3600),
                                LATENESS_S)
    counter.update(steps)
    wm = min(e.ts_ms for e in arrivals)
    for hours, read_all in reads:
        wm += hours * STEP_MS
        counter.advance(wm)
        sizes = list(counter.sizes) if read_all else [max(counter.sizes)]
        for size_s in sizes:
            start, counts = counter.window(size_s)
            inside = [s for s in truth if start <= s[6] < start + size_s * 1000]
            assert observed(counts) == tuple(+c for c in expected(inside)), (start, size_s)

"""Transition counts: hand-drawn window timelines, retraction, gap statistics, sink rows."""

from __future__ import annotations

import pytest

from processors.config import WindowsConfig
from processors.journeys import NULL, START, Step
from processors.transitions import (
    ALL,
    GAP_BUCKETS,
    CellDelta,
    TransitionCounter,
    TransitionCounts,
    bucket_bounds_ms,
    gap_bucket,
    gap_quantile,
)

HOUR = 3_600_000
T0 = 1_000 * HOUR  # pane-aligned origin


def step(src: str, dst: str, hour: float, *, prev2: str = "", seg: str = "s1",
         ch: str = "web", gap_ms: int = 60_000, sign: int = 1) -> Step:
    ts = T0 + int(hour * HOUR)
    return Step("c", seg, ch, dst, src, dst, prev2, gap_ms, ts, "sess", False, 0.0, 1, sign)


def collect(counter: TransitionCounter, watermark_ms: int) -> dict[tuple[int, int], dict]:
    """Every window closed by `advance`, as {(start_hour, size_h): {(src, dst): n}}."""
    seen: dict[tuple[int, int], dict] = {}

    def keep(start_ms: int, size_s: int, counts: TransitionCounts) -> None:
        seen[((start_ms - T0) // HOUR, size_s // 3600)] = counts.pairs()

    counter.advance(watermark_ms, on_window=keep)
    return seen


def test_hopping_windows_add_and_retract() -> None:
    #  hour:      0     1     2     3     4
    #  steps:     a>b   b>c         c>d
    #  2h windows (step 1h), each [start, start+2h):
    #   [-1,1): a>b        [0,2): a>b b>c    [1,3): b>c
    #   [2,4): c>d         [3,5): c>d        (watermark 5h: [4,6) is not final yet)
    counter = TransitionCounter(WindowsConfig(sizes_s=[7200], step_s=3600))
    counter.update([step("a", "b", 0.5), step("b", "c", 1.2), step("c", "d", 3.9)])
    windows = collect(counter, T0 + 5 * HOUR)
    assert windows == {
        (-1, 2): {("a", "b"): 1},
        (0, 2): {("a", "b"): 1, ("b", "c"): 1},
        (1, 2): {("b", "c"): 1},
        (2, 2): {("c", "d"): 1},
        (3, 2): {("c", "d"): 1},
    }
    start, latest = counter.window(7200)  # the latest final window is [3, 5)
    assert (start, latest.pairs()) == (T0 + 3 * HOUR, {("c", "d"): 1})
    assert counter.totals.pairs() == {("a", "b"): 1, ("b", "c"): 1, ("c", "d"): 1}


def test_lateness_keeps_panes_open_and_retractions_cancel() -> None:
    #  hour:       0          1           | watermark 2.5, lateness 1h -> frontier 1.5
    #  steps:      a>b(+1)    a>b(+1) a>b(-1, a correction)
    #  pane 0 final, pane 1 still open: a retraction there costs nothing downstream
    counter = TransitionCounter(WindowsConfig(sizes_s=[3600], step_s=3600), 3600)
    counter.update([step("a", "b", 0.1), step("a", "b", 1.1)])
    rows = counter.advance(T0 + int(2.5 * HOUR))
    assert [(r.pane_start_ms, r.n) for r in rows] == [(T0, 1)]
    counter.update([step("a", "b", 1.1, sign=-1)])
    assert counter.advance(T0 + 10 * HOUR) == []  # pane 1 netted to nothing
    assert counter.totals.pairs() == {("a", "b"): 1}
    # A retraction that empties one gap bucket of a key that stays: pane 11 keeps the 1 h gap.
    counter.update([step("a", "b", 11.1, gap_ms=1_000), step("a", "b", 11.2, gap_ms=HOUR),
                    step("a", "b", 11.1, gap_ms=1_000, sign=-1)])
    counter.advance(T0 + 13 * HOUR)
    assert counter.totals.gap_stats("a", "b").n == 2
    assert counter.totals.first_order()[(ALL, ALL, "a", "b")][2] == {gap_bucket(60_000): 1,
                                                                    gap_bucket(HOUR): 1}


def test_correction_to_a_final_pane_updates_windows_and_is_emitted_again() -> None:
    #  hour:    0           | frontier 3: pane 0 final; then a merge retracts a>b at hour 0
    counter = TransitionCounter(WindowsConfig(sizes_s=[4 * 3600], step_s=3600))
    counter.update([step("a", "b", 0.2), step("a", "c", 0.3)])
    counter.advance(T0 + 3 * HOUR)
    assert counter.window(4 * 3600)[1].pairs() == {("a", "b"): 1, ("a", "c"): 1}
    counter.update([step("a", "b", 0.2, sign=-1), step("a", "d", 0.2)])
    assert counter.window(4 * 3600)[1].pairs() == {("a", "c"): 1, ("a", "d"): 1}
    rows = counter.advance(T0 + 3 * HOUR)
    assert {(r.pane_start_ms, r.src, r.dst): r.n for r in rows} == {
        (T0, "a", "c"): 1, (T0, "a", "d"): 1}  # the whole pane, again
    assert counter.totals.pairs() == {("a", "c"): 1, ("a", "d"): 1}


def test_delta_corrections_emit_only_the_changed_cells() -> None:
    #  hour:    0           | frontier 3: pane 0 final; a merge moves a>b to a>d, a>c unchanged
    counter = TransitionCounter(WindowsConfig(sizes_s=[4 * 3600], step_s=3600),
                                corrections="delta")
    counter.update([step("a", "b", 0.2), step("a", "c", 0.3)])
    first = counter.advance(T0 + 3 * HOUR)
    assert not any(isinstance(r, CellDelta) for r in first)
    counter.update([step("a", "b", 0.2, sign=-1), step("a", "d", 0.2),
                    step("a", "c", 0.3, sign=-1), step("a", "c", 0.3)])  # a>c nets to nothing
    rows = counter.advance(T0 + 3 * HOUR)
    assert {(r.pane_start_ms, r.src, r.dst, isinstance(r, CellDelta)): r.n for r in rows} == {
        (T0, "a", "b", True): -1, (T0, "a", "d", True): 1}
    assert counter.window(4 * 3600)[1].pairs() == {("a", "c"): 1, ("a", "d"): 1}
    assert counter.advance(T0 + 3 * HOUR) == []
    with pytest.raises(ValueError, match="corrections"):
        TransitionCounter(WindowsConfig(), corrections="rows")  # type: ignore[arg-type]


def test_scopes_second_order_and_matrix() -> None:
    counts = TransitionCounts()
    counts.update(START, "a", segment="s1", channel="web")
    counts.update("a", "b", prev2=START, segment="s1", channel="web")
    counts.update("a", "b", prev2=START, segment="s2", channel="email")
    counts.update("a", NULL, prev2=START, segment="s2", channel="email")
    assert counts.n("a", "b") == 2
    assert counts.n("a", "b", segment="s1") == 1
    assert counts.n("a", "b", channel="email") == 1
    assert counts.n("a", "b", prev2=START) == 2
    assert counts.matrix() == {START: {"a": 1.0}, "a": {"b": 2 / 3, NULL: 1 / 3}}
    assert counts.matrix(segment="s2") == {"a": {"b": 0.5, NULL: 0.5}}
    assert counts.matrix(order=2) == {(START, "a"): {"b": 2 / 3, NULL: 1 / 3}}
    counts.revert("a", NULL, prev2=START, segment="s2", channel="email")
    assert counts.matrix(segment="s2") == {"a": {"b": 1.0}}
    assert counts.triples(segment="s2") == {(START, "a", "b"): 1}


def test_revert_restores_exactly_and_leaves_no_empty_keys() -> None:
    counts = TransitionCounts()
    counts.update("a", "b", prev2="x", gap_ms=5_000, segment="s", channel="web")
    counts.revert("a", "b", prev2="x", gap_ms=5_000, segment="s", channel="web")
    assert not counts and counts.cells == {}


def test_gap_statistics() -> None:
    counts = TransitionCounts()
    for gap_s in [10, 10, 10, 10, 10, 10, 10, 10, 10, 1000]:
        counts.update("a", "b", gap_ms=gap_s * 1000)
    stats = counts.gap_stats("a", "b")
    assert stats.n == 10 and stats.mean_ms == pytest.approx(109_000)
    low, high = bucket_bounds_ms(gap_bucket(10_000))
    assert low <= stats.p50_ms < high
    low, high = bucket_bounds_ms(gap_bucket(1_000_000))
    assert low <= stats.p99_ms < high
    assert gap_quantile({}, 0.5) == 0.0


@pytest.mark.parametrize("gap_ms", [0, 999, 1000, 2999, 3000, 5999, 86_400_000, 10**12])
def test_gap_buckets_contain_their_gaps(gap_ms: int) -> None:
    b = gap_bucket(gap_ms)
    low, high = bucket_bounds_ms(b)
    assert 0 <= b < GAP_BUCKETS and low <= gap_ms < high


def test_the_counter_buckets_gaps_like_gap_bucket() -> None:
    """The hot path buckets by bisecting the lower bounds: the same bucket for every gap."""
    gaps = [*range(0, 200_000, 7), *(bucket_bounds_ms(b)[0] + d for b in range(GAP_BUCKETS)
                                    for d in (-1, 0, 1)), 10**13]
    counter = TransitionCounter(WindowsConfig(sizes_s=[3600], step_s=3600))
    counter.update([step("a", "b", 0.5, gap_ms=g) for g in gaps if g >= 0])
    counter.advance(T0 + HOUR)
    got = {b: n for (*_, b), (n, _) in counter.totals.cells.items()}
    want: dict[int, int] = {}
    for g in gaps:
        if g >= 0:
            want[gap_bucket(g)] = want.get(gap_bucket(g), 0) + 1
    assert got == want


def test_rows_and_snapshot() -> None:
    counter = TransitionCounter(WindowsConfig(sizes_s=[3600, 7200], step_s=3600))
    counter.update([step("a", "b", 0.5, prev2=START, gap_ms=2_000)])
    rows = counter.advance(T0 + HOUR)
    assert rows == [(T0, 3600, "s1", "web", START, "a", "b", gap_bucket(2_000), 1, 2_000)]
    snap = counter.snapshot()
    by_scope = {(r.segment, r.channel, r.order) for r in snap if r.window_size_s == 3600}
    assert by_scope == {(ALL, ALL, 1), ("s1", ALL, 1), (ALL, "web", 1),
                        (ALL, ALL, 2), ("s1", ALL, 2), (ALL, "web", 2)}
    first = next(r for r in snap if r.order == 1 and r.segment == ALL and r.channel == ALL)
    assert (first.n, first.gap_sum_ms, sum(first.gap_hist)) == (1, 2_000, 1)
    assert {(r.window_start_ms, r.window_size_s) for r in snap} == {(T0, 3600), (T0 - HOUR, 7200)}
    assert counter.matrix(7200) == {"a": {"b": 1.0}}

"""How many cell rows `TransitionCounter.advance` emits per batch: panes touched, not panes alive.

Steady in-order traffic over many batches (every pane of a 28-day window alive), with and
without one merge correction per batch to an old pane::

    batch k:   pane k+1 ... pane k+h (hot)         one correction to pane k - 20 (final)
    advance:   emits the cells of panes that became final, plus pane k - 20 once
               never the other ~670 panes alive in the windows
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import pytest

from processors.config import WindowsConfig
from processors.journeys import Step
from processors.transitions import TransitionCounter, TransitionCounts

HOUR = 3_600_000
T0 = 1_000 * HOUR
CELLS_PER_PANE = 5


def recount(steps: list[Step]) -> TransitionCounts:
    counts = TransitionCounts()
    for s in steps:
        counts.update(s.src, s.dst, gap_ms=s.gap_ms, segment=s.segment, channel=s.channel,
                      n=s.sign)
    return counts


def pane_steps(p: int, sign: int = 1, customer: str = "c") -> list[Step]:
    """`CELLS_PER_PANE` distinct transitions in pane `p` (hours after T0)."""
    ts = T0 + p * HOUR + 60_000
    return [Step(customer, "s1", "web", f"t{i + 1}", f"t{i}", f"t{i + 1}", "", 60_000, ts,
                 "sess", False, 0.0, 1, sign) for i in range(CELLS_PER_PANE)]


def moved(p: int) -> list[Step]:
    """A merge moves pane `p`'s first step to another customer, who went elsewhere."""
    first = pane_steps(p)[0]
    return [first._replace(sign=-1), first._replace(customer_id="w", dst="t9", touchpoint="t9")]


def run_batches(n_batches: int, *, back: int | None, panes_per_batch: int = 3,
                corrections: Literal["pane", "cells", "delta"] = "pane", rows: list | None = None
                ) -> tuple[TransitionCounter, list[Counter[int]]]:
    """Feed `n_batches` of in-order traffic, each with one correction to the pane `back` hours
    before its first (none when None); return the rows of each batch counted per pane."""
    counter = TransitionCounter(WindowsConfig(), allowed_lateness_s=3600,
                                corrections=corrections)
    emitted: list[Counter[int]] = []
    for k in range(n_batches):
        first = k * panes_per_batch
        steps = [s for p in range(first, first + panes_per_batch) for s in pane_steps(p)]
        if back is not None and first >= back:
            steps += moved(first - back)
        counter.update(steps)
        out = counter.advance(T0 + (first + panes_per_batch) * HOUR)
        emitted.append(Counter((r.pane_start_ms - T0) // HOUR for r in out))
        if rows is not None:
            rows.extend(out)
    return counter, emitted


def test_in_order_batches_emit_each_final_pane_once() -> None:
    counter, emitted = run_batches(400, back=None)
    assert len(counter.panes) == 672  # the longest window (28 days) is full: 672 panes alive
    seen: Counter[int] = Counter()
    for per_pane in emitted[1:]:
        # 3 panes become final per batch (the lateness holds one back); 5 cells each
        assert sum(per_pane.values()) == 3 * CELLS_PER_PANE
        seen.update(per_pane.keys())
    assert max(seen.values()) == 1  # no pane emitted twice


@pytest.mark.parametrize("back", [40, 800])  # in the windows; archived (older than 28 days)
def test_corrections_re_emit_only_the_corrected_pane_once_per_batch(back: int) -> None:
    n_batches = 400
    counter, emitted = run_batches(n_batches, back=back)
    corrected = [3 * k - back for k in range(n_batches) if 3 * k >= back]
    for k, per_pane in enumerate(emitted):
        if 3 * k < back:
            continue
        old = 3 * k - back
        again = {p: n for p, n in per_pane.items() if p <= old}
        # the corrected pane, whole (4 cells kept, 1 new), nothing else already published
        assert again == {old: CELLS_PER_PANE}, k
        assert sum(per_pane.values()) == 4 * CELLS_PER_PANE
    # rows over the run: proportional to panes touched, not to the 672 panes alive
    assert sum(sum(c.values()) for c in emitted) == (
        CELLS_PER_PANE * (3 * n_batches - 1) + CELLS_PER_PANE * len(corrected))
    # and the counts are still a recount of everything applied to final panes
    final = range(counter.frontier_pane - T0 // HOUR)  # type: ignore[operator]
    applied = [s for p in final for s in pane_steps(p)] + [s for p in corrected for s in moved(p)]
    assert counter.totals.cells == recount(applied).cells


@pytest.mark.parametrize("back", [40, 800])
def test_cell_corrections_emit_only_the_changed_cells_with_their_values(back: int) -> None:
    """``corrections="cells"``: a correction costs the cells it changed (here one emptied, one
    new), and a sink keeping the latest row of each cell holds exactly the recount."""
    n_batches = 400
    rows: list = []
    counter, emitted = run_batches(n_batches, back=back, corrections="cells", rows=rows)
    corrected = [3 * k - back for k in range(n_batches) if 3 * k >= back]
    for k, per_pane in enumerate(emitted):
        if 3 * k >= back:
            old = 3 * k - back
            assert {p: n for p, n in per_pane.items() if p <= old} == {old: 2}, k
    assert len(rows) == CELLS_PER_PANE * (3 * n_batches - 1) + 2 * len(corrected)
    latest = {(r.pane_start_ms, *r[2:8]): (r.n, r.gap_sum_ms) for r in rows}
    final = range(counter.frontier_pane - T0 // HOUR)  # type: ignore[operator]
    want: dict[tuple[object, ...], tuple[int, int]] = {}
    for p in final:
        steps = pane_steps(p) + (moved(p) if p in corrected else [])
        for key, v in recount(steps).cells.items():
            want[(T0 + p * HOUR, *key)] = v
    assert {k: v for k, v in latest.items() if v != (0, 0)} == want
    assert counter.totals.cells == recount(
        [s for p in final for s in pane_steps(p) + (moved(p) if p in corrected else [])]).cells

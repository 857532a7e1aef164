"""Markov transition counts in sliding event-time windows, with time-gap distributions.

:class:`TransitionCounts` holds first-order ``(src, dst)`` and second-order
``((prev2, src), dst)`` counts, readable globally, per segment and per channel (``"*"`` stands
for all), with the gap between the two touchpoints as a count, a sum and a log-spaced histogram
(half-octave buckets of seconds: quantiles come out within one bucket, about ±20 %). It stores
only *cells* ``(segment, channel, prev2, src, dst, gap bucket) -> [n, gap_sum_ms]``; every scope
and order is a sum of cells, so counts add (`update`, `merge`) and retract (`revert`,
`merge(sign=-1)`) exactly, the way River's ``utils/rolling.py`` pairs ``update`` with ``revert``.

:class:`TransitionCounter` keeps hopping windows of every size in ``WindowsConfig.sizes_s`` that
advance by ``step_s``. Steps are first added to their *pane* (one step of event time); a pane is
final once the frontier (watermark minus allowed lateness) has passed its end. Finalizing a pane
adds it to the running window of each size and retracts the pane that left it: per event the cost
is one dict update, whatever the number of overlapping windows. Probabilities are derived from the
counts on demand (:meth:`TransitionCounts.matrix`), never stored.

Outputs for the sink: :class:`CellRow` per cell of each pane as it becomes final (sum panes for
any window, GROUP BY for any scope or order), and rolled-up :class:`TransitionRow` snapshots of the
latest final window of each size. A correction to a published pane (a late event, an identity
merge) is emitted in one of three ways:

* ``corrections="cells"`` (what :class:`~processors.chain.JourneyChain` uses): only the changed
  cells, as :class:`CellUpdate` rows with their full new value (``n = 0, gap_sum_ms = 0`` for a
  cell that is gone). The current value of a cell is its latest row, unless the pane was emitted
  whole after it. The sink's views read exactly that (sinks/migrations/0011).
* ``corrections="pane"`` (the default here, the chain's mode before 0011): the whole pane again;
  a cell missing from it is gone. 21-63x more correction rows on simulator data, growing with
  the history (bench/RESULTS.md).
* ``corrections="delta"``: only the changed cells, as :class:`CellDelta` rows to add (a summing
  sink, which the ClickHouse sink is not).

Either way a batch emits each pane it changed once, whatever the number of panes alive. Panes
that left every window are kept pickled (``archive``: bytes per cell, bounded by the event-time
span, not by the number of events or customers) so that a correction to one, however old, still
re-emits the whole pane (or its changed cells' values) and every stored count equals a recount.
"""

from __future__ import annotations

import math
import pickle
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

from processors.config import WindowsConfig, lateness_ms
from processors.journeys import Step

ALL: Final = "*"
GAP_BUCKETS: Final = 50

FirstKey = tuple[str, str, str, str]  # (segment, channel, src, dst)
SecondKey = tuple[str, str, str, str, str]  # (segment, channel, prev2, src, dst)
CellKey = tuple[str, str, str, str, str, int]  # (segment, channel, prev2, src, dst, gap bucket)


def gap_bucket(gap_ms: int) -> int:
    """Half-octave bucket of a gap: 0 below one second, then two buckets per doubling."""
    s = gap_ms // 1000
    if s <= 0:
        return 0
    bl = s.bit_length()
    half = (s >> (bl - 2)) & 1 if bl >= 2 else 0
    return min(2 * bl - 1 + half, GAP_BUCKETS - 1)


def bucket_bounds_ms(bucket: int) -> tuple[int, int]:
    """The gaps `[low, high)` in milliseconds that :func:`gap_bucket` puts into `bucket`."""
    if bucket <= 0:
        return 0, 1000
    bl, half = (bucket + 1) // 2, (bucket + 1) % 2
    base = 1 << (bl - 1)
    low = math.ceil(base * (1 + half / 2)) * 1000
    high = math.ceil(base * (1.5 + half / 2)) * 1000
    return low, (high if bucket < GAP_BUCKETS - 1 else 2**62)


# The lower bound of every bucket: `bisect_right(_BUCKET_LOWS_MS, gap_ms) - 1` is
# `gap_bucket(gap_ms)` for any gap >= 0, as one C call on the hot path.
_BUCKET_LOWS_MS: Final = tuple(bucket_bounds_ms(b)[0] for b in range(GAP_BUCKETS))


def gap_quantile(hist: dict[int, int], q: float) -> float:
    """The `q` quantile of a gap histogram in ms: the geometric middle of its bucket."""
    total = sum(hist.values())
    if total <= 0:
        return 0.0
    rank = q * total
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            low, high = bucket_bounds_ms(bucket)
            return 0.0 if bucket == 0 else float((low * high) ** 0.5)
    return float(bucket_bounds_ms(max(hist))[0])  # pragma: no cover - rank <= total


class GapStats(NamedTuple):
    n: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float


class TransitionRow(NamedTuple):
    """One rolled-up row of a window snapshot: one scope, one order, one transition."""

    window_start_ms: int
    window_size_s: int
    segment: str  # "*" = all segments
    channel: str  # "*" = all channels
    order: int  # 1 or 2
    prev2: str  # "" for first order
    src: str
    dst: str
    n: int
    gap_sum_ms: int  # first order only (0 for second order)
    gap_hist: tuple[int, ...]  # GAP_BUCKETS counts, first order only (empty for second order)


class CellRow(NamedTuple):
    """One cell of a final pane, what the sink stores: every scope and order is a GROUP BY.

    First order: sum over `prev2`; global: sum over segment and channel; a window of any size:
    sum the panes it covers; the gap histogram: group by `gap_bucket` (bounds from
    :func:`bucket_bounds_ms`). ``prev2 == ""`` marks a first step of a journey.
    """

    pane_start_ms: int
    pane_size_s: int
    segment: str
    channel: str
    prev2: str
    src: str
    dst: str
    gap_bucket: int
    n: int
    gap_sum_ms: int


class CellUpdate(CellRow):
    """A cell of a pane already published, with its full new value (``corrections="cells"``).

    The other cells of the pane keep the values of their own latest rows; `n = 0` (with
    `gap_sum_ms = 0`) marks a cell that is gone. A sink tells these rows from a whole pane's
    (:class:`CellRow`), whose cells replace all the pane's earlier ones.
    """

    __slots__ = ()


class CellDelta(CellRow):
    """A change to add to a cell of a pane already published (``corrections="delta"`` only).

    Not the cell's full value: `n` and `gap_sum_ms` may be negative, and a sink sums them.
    """

    __slots__ = ()


Cells = dict[CellKey, tuple[int, int]]
_new = tuple.__new__  # records without the Python-level NamedTuple.__new__ frame


def _add_cell(cells: Cells, key: CellKey, n: int, gap_sum: int) -> None:
    v = cells.get(key)
    if v is None:
        if n or gap_sum:
            cells[key] = (n, gap_sum)
        return
    n += v[0]
    gap_sum += v[1]
    if n or gap_sum:
        cells[key] = (n, gap_sum)
    else:
        del cells[key]


def _dense(hist: dict[int, int]) -> tuple[int, ...]:
    dense = [0] * GAP_BUCKETS
    for b, c in hist.items():
        dense[b] = c
    return tuple(dense)


@dataclass(slots=True)
class TransitionCounts:
    """Transition counts with gap distributions, as plain mergeable cells.

    A cell is one ``(segment, channel, prev2, src, dst, gap bucket)`` with ``(n, gap_sum_ms)``
    (plain tuples of ints: the garbage collector stops tracking them, which matters with
    millions of cells);
    first-order counts, the global/segment/channel scopes and the gap histograms are sums of
    cells, computed when read. Keeping only cells makes adding and retracting a pane one dict
    update per cell, whatever the number of scopes.
    """

    cells: Cells = field(default_factory=dict)

    def update(self, src: str, dst: str, *, prev2: str = "", gap_ms: int = 0,
               segment: str = ALL, channel: str = ALL, n: int = 1) -> None:
        """Count `n` transitions `src -> dst` (after `prev2`, "" for none) with this gap."""
        _add_cell(self.cells, (segment, channel, prev2, src, dst, gap_bucket(gap_ms)), n,
                  n * gap_ms)

    def revert(self, src: str, dst: str, *, prev2: str = "", gap_ms: int = 0,
               segment: str = ALL, channel: str = ALL, n: int = 1) -> None:
        """Retract what :meth:`update` with the same arguments added."""
        self.update(src, dst, prev2=prev2, gap_ms=gap_ms, segment=segment, channel=channel,
                    n=-n)

    def merge(self, other: TransitionCounts, sign: int = 1) -> None:
        """Add (`sign=1`) or retract (`sign=-1`) all of `other`."""
        cells = self.cells
        get = cells.get
        if sign == 1:
            for key, (n, gap_sum) in other.cells.items():
                v = get(key)
                if v is None:
                    cells[key] = (n, gap_sum)
                elif v[0] + n or v[1] + gap_sum:
                    cells[key] = (v[0] + n, v[1] + gap_sum)
                else:
                    del cells[key]
            return
        for key, (n, gap_sum) in other.cells.items():
            _add_cell(cells, key, sign * n, sign * gap_sum)

    def __bool__(self) -> bool:
        return bool(self.cells)

    def _scoped(self, segment: str, channel: str) -> Iterable[tuple[CellKey, tuple[int, int]]]:
        for key, v in self.cells.items():
            if (segment == ALL or key[0] == segment) and (channel == ALL or key[1] == channel):
                yield key, v

    def first_order(self) -> dict[FirstKey, list]:
        """`{(segment, channel, src, dst): [n, gap_sum_ms, {bucket: n}]}` for the three scopes:
        global ``("*", "*")``, per segment ``(seg, "*")`` and per channel ``("*", ch)``."""
        out: dict[FirstKey, list] = {}
        for (seg, ch, _, src, dst, b), (n, gap_sum) in self.cells.items():
            for scope in _scopes(seg, ch):
                key = (*scope, src, dst)
                v = out.get(key)
                if v is None:
                    v = out[key] = [0, 0, {}]
                v[0] += n
                v[1] += gap_sum
                v[2][b] = v[2].get(b, 0) + n
        return out

    def second_order(self) -> dict[SecondKey, int]:
        """`{(segment, channel, prev2, src, dst): n}` for the three scopes."""
        out: dict[SecondKey, int] = {}
        for (seg, ch, prev2, src, dst, _), (n, _g) in self.cells.items():
            if prev2:
                for scope in _scopes(seg, ch):
                    key = (*scope, prev2, src, dst)
                    out[key] = out.get(key, 0) + n
        return out

    def n(self, src: str, dst: str, *, segment: str = ALL, channel: str = ALL,
          prev2: str = "") -> int:
        """The count of one transition (second order when `prev2` is given)."""
        return sum(v[0] for k, v in self._scoped(segment, channel)
                   if k[3] == src and k[4] == dst and (not prev2 or k[2] == prev2))

    def pairs(self, *, segment: str = ALL, channel: str = ALL) -> dict[tuple[str, str], int]:
        """First-order counts `{(src, dst): n}` of one scope: what attribution consumes."""
        out: dict[tuple[str, str], int] = {}
        for k, v in self._scoped(segment, channel):
            out[(k[3], k[4])] = out.get((k[3], k[4]), 0) + v[0]
        return out

    def triples(self, *, segment: str = ALL, channel: str = ALL
                ) -> dict[tuple[str, str, str], int]:
        """Second-order counts `{(prev2, src, dst): n}` of one scope."""
        out: dict[tuple[str, str, str], int] = {}
        for k, v in self._scoped(segment, channel):
            if k[2]:
                out[(k[2], k[3], k[4])] = out.get((k[2], k[3], k[4]), 0) + v[0]
        return out

    def matrix(self, *, segment: str = ALL, channel: str = ALL, order: int = 1
               ) -> dict[object, dict[str, float]]:
        """Transition probabilities `{src: {dst: p}}` (order 2: `{(prev2, src): {dst: p}}`)."""
        rows: dict[object, dict[str, float]] = {}
        if order == 1:
            for (src, dst), n in self.pairs(segment=segment, channel=channel).items():
                rows.setdefault(src, {})[dst] = float(n)
        else:
            for (prev2, src, dst), n in self.triples(segment=segment, channel=channel).items():
                rows.setdefault((prev2, src), {})[dst] = float(n)
        for dsts in rows.values():
            total = sum(dsts.values())
            for dst in dsts:
                dsts[dst] /= total
        return rows

    def gap_stats(self, src: str, dst: str, *, segment: str = ALL, channel: str = ALL
                  ) -> GapStats:
        """Count, exact mean and bucketed quantiles of the gap of one first-order transition."""
        n = gap_sum = 0
        hist: dict[int, int] = {}
        for k, v in self._scoped(segment, channel):
            if k[3] == src and k[4] == dst:
                n += v[0]
                gap_sum += v[1]
                hist[k[5]] = hist.get(k[5], 0) + v[0]
        if not n:
            return GapStats(0, 0.0, 0.0, 0.0, 0.0)
        return GapStats(n, gap_sum / n, gap_quantile(hist, 0.5), gap_quantile(hist, 0.9),
                        gap_quantile(hist, 0.99))

    def rows(self, window_start_ms: int, window_size_s: int) -> list[TransitionRow]:
        """Rolled-up rows: every scope, first and second order."""
        out = [
            TransitionRow(window_start_ms, window_size_s, seg, ch, 1, "", src, dst, n, gap_sum,
                          _dense(hist))
            for (seg, ch, src, dst), (n, gap_sum, hist) in self.first_order().items()
        ]
        out.extend(
            TransitionRow(window_start_ms, window_size_s, seg, ch, 2, prev2, src, dst, n, 0, ())
            for (seg, ch, prev2, src, dst), n in self.second_order().items()
        )
        return out

    def cell_rows(self, pane_start_ms: int, pane_size_s: int) -> list[CellRow]:
        """One row per cell."""
        prefix = (pane_start_ms, pane_size_s)
        return [_new(CellRow, prefix + key + v) for key, v in self.cells.items()]


def _scopes(segment: str, channel: str) -> list[tuple[str, str]]:
    scopes = [(ALL, ALL)]
    if segment != ALL:
        scopes.append((segment, ALL))
    if channel != ALL:
        scopes.append((ALL, channel))
    return scopes


def empty_pane_row(pane_start_ms: int, pane_size_s: int) -> CellRow:
    """The row that stands for a pane with no transitions left (n = 0, all keys empty)."""
    return CellRow(pane_start_ms, pane_size_s, "", "", "", "", "", 0, 0, 0)


WindowCallback = Callable[[int, int, TransitionCounts], None]


class TransitionCounter:
    """Hopping-window transition counts over :class:`~processors.journeys.Step` records.

    `update(steps)` adds (or, for ``sign=-1``, retracts) steps; `advance(watermark_ms)`
    finalizes the panes behind the frontier, adds them to `totals` and returns the cell rows of
    the newly final panes (and of earlier panes corrected since). A step for a pane that is
    already final (a merge correction) is netted per cell first, then applied to that pane, to
    the windows holding it and to the totals, and the pane is emitted again (its rows replace
    the earlier ones); panes older than the largest window are thawed from `archive` for it.

    The hopping windows are brought up to date when read (:meth:`window`, :meth:`matrix`,
    :meth:`snapshot`, `windows`, or every step when `advance` is given `on_window`): adding
    the panes that entered and retracting those that left, or summing the panes afresh when
    that is cheaper. Per step the hot path is one dict update of the step's pane cell.
    """

    def __init__(self, windows: WindowsConfig, allowed_lateness_s: float = 0,
                 corrections: Literal["pane", "cells", "delta"] = "pane") -> None:
        if corrections not in ("pane", "cells", "delta"):
            raise ValueError(
                f"corrections must be 'pane', 'cells' or 'delta', got {corrections!r}")
        # "pane": a corrected final pane is emitted again in full (its rows replace the earlier
        # ones). "cells": only its changed cells, each with its full new value (n = 0 for a
        # cell now empty): rows replace the earlier row of the same cell. "delta": only its
        # changed cells, as `CellDelta` rows to add. The last two are far fewer rows when merges
        # touch many old panes: a whole-pane re-emission costs every cell of a busy hour.
        self.corrections = corrections
        self.deltas: dict[int, Cells] = {}
        self.changed: dict[int, set[CellKey]] = {}  # corrections="cells": keys to re-emit
        self.step_s = windows.step_s
        self.step_ms = windows.step_s * 1000
        self.lateness_ms = lateness_ms(allowed_lateness_s)
        self.sizes: dict[int, int] = {size: size // windows.step_s for size in windows.sizes_s}
        self.max_panes = max(self.sizes.values())
        self.frontier_pane: int | None = None  # panes before this one are final
        self.hot: dict[int, TransitionCounts] = {}
        self.panes: dict[int, TransitionCounts] = {}
        self._windows: dict[int, TransitionCounts] = {size: TransitionCounts()
                                                      for size in self.sizes}
        # The frontier each window was last brought to (it holds panes [at - n, at)).
        self._synced: dict[int, int | None] = {size: None for size in self.sizes}
        # Every non-empty final pane at or after this index is still in `panes`.
        self._kept_from: int | None = None
        self.totals = TransitionCounts()
        self.dirty: set[int] = set()
        # corrections="pane"/"cells": the final panes that left every window, pickled (about 20
        # bytes a cell), so a merge correction to one of them can still re-publish its values.
        self.archive: dict[int, bytes] = {}
        self._thawed: dict[int, TransitionCounts] = {}  # archived panes corrected, to re-emit

    @property
    def windows(self) -> dict[int, TransitionCounts]:
        """The latest final window of each size (brought up to date on access)."""
        for size in self.sizes:
            self._sync(size)
        return self._windows

    def update(self, steps: Iterable[Step]) -> None:
        """Add each step (retract it when ``step.sign == -1``) to its pane."""
        step_ms = self.step_ms
        frontier = self.frontier_pane
        hot = self.hot
        lows = _BUCKET_LOWS_MS
        late: dict[int, Cells] | None = None
        last_p = None
        cells: Cells = {}
        for st in steps:
            _, seg, ch, _, src, dst, prev2, gap, ts, _, _, _, _, sign, _ = st
            p = ts // step_ms
            key = (seg, ch, prev2, src, dst, bisect_right(lows, gap) - 1)
            if p != last_p:  # a batch's steps mostly fall in one or two panes
                last_p = p
                if frontier is not None and p < frontier:
                    if late is None:
                        late = {}
                    cells = late.setdefault(p, {})
                else:
                    pane = hot.get(p)
                    if pane is None:
                        pane = hot[p] = TransitionCounts()
                    cells = pane.cells
            v = cells.get(key)
            if v is None:
                cells[key] = (sign, sign * gap)
            else:
                n = v[0] + sign
                gap_sum = v[1] + sign * gap
                if n or gap_sum:
                    cells[key] = (n, gap_sum)
                else:
                    del cells[key]
        if late:
            for p, cells in late.items():
                self._correct(p, cells)

    def advance(self, watermark_ms: int, on_window: WindowCallback | None = None
                ) -> list[CellRow]:
        """Finalize panes before ``watermark_ms - allowed_lateness``; return their cell rows.

        `on_window(window_start_ms, size_s, counts)` is called for every window that becomes
        final (once per size and pane), with the live counts: copy them to keep them.
        """
        new_frontier = (watermark_ms - self.lateness_ms) // self.step_ms
        rows: list[CellRow] = []
        if self.frontier_pane is None:
            self.frontier_pane = min([new_frontier, *self.hot])
            self._kept_from = self.frontier_pane
            for size in self.sizes:
                self._synced[size] = self.frontier_pane
        for p in sorted(self.dirty):
            pane = self.panes[p] if p in self.panes else self._thawed.pop(p, None)
            if pane is not None:
                if p < self.frontier_pane - self.max_panes:  # archived: keep the new value
                    self._freeze(p, pane)
                if self.corrections == "cells":
                    prefix = (p * self.step_ms, self.step_s)
                    get = pane.cells.get
                    rows.extend(_new(CellUpdate, prefix + key + get(key, (0, 0)))
                                for key in sorted(self.changed.pop(p, ())))
                    continue
                cells = pane.cell_rows(p * self.step_ms, self.step_s)
                # A correction can empty a pane; one zero row still carries its new version,
                # so a sink keeping the latest emission of each pane drops the old cells.
                rows.extend(cells or [empty_pane_row(p * self.step_ms, self.step_s)])
        self.dirty.clear()
        if self.deltas:
            for p in sorted(self.deltas):
                prefix = (p * self.step_ms, self.step_s)
                rows.extend(_new(CellDelta, prefix + key + v) for key, v in self.deltas[p].items())
            self.deltas.clear()
        hot, panes = self.hot, self.panes
        while self.frontier_pane < new_frontier:
            f = self.frontier_pane
            if not panes:  # every window is empty: jump to the next pane with data
                nxt = min(min(hot, default=new_frontier), new_frontier)
                if nxt > f:
                    self.frontier_pane = self._kept_from = nxt
                    continue
            pane = hot.pop(f, None)
            if pane:
                panes[f] = pane
                self.totals.merge(pane)
                rows.extend(pane.cell_rows(f * self.step_ms, self.step_s))
            self.frontier_pane = f + 1
            if on_window is not None:
                for size, n in self.sizes.items():
                    self._sync(size)
                    on_window((f + 1 - n) * self.step_ms, size, self._windows[size])
            gone = panes.pop(f - self.max_panes, None)
            if gone and self.corrections != "delta":
                self._freeze(f - self.max_panes, gone)
            self._kept_from = max(self._kept_from, f - self.max_panes + 1)  # type: ignore[type-var]
        return rows

    def window(self, size_s: int) -> tuple[int, TransitionCounts]:
        """The latest final window of one size: (window_start_ms, counts)."""
        f = self.frontier_pane if self.frontier_pane is not None else 0
        self._sync(size_s)
        return (f - self.sizes[size_s]) * self.step_ms, self._windows[size_s]

    def snapshot(self, size_s: int | None = None) -> list[TransitionRow]:
        """Rolled-up rows of the latest final window of each size (or of one size)."""
        rows: list[TransitionRow] = []
        for size in [size_s] if size_s is not None else list(self.sizes):
            start, counts = self.window(size)
            rows.extend(counts.rows(start, size))
        return rows

    def matrix(self, size_s: int | None = None, *, segment: str = ALL, channel: str = ALL,
               order: int = 1) -> dict[object, dict[str, float]]:
        """Transition probabilities of the latest final window (all-time when `size_s` None)."""
        counts = self.totals if size_s is None else self.window(size_s)[1]
        return counts.matrix(segment=segment, channel=channel, order=order)

    def _sync(self, size: int) -> None:
        """Bring one window from the frontier it was last brought to up to the current one."""
        f = self.frontier_pane
        at = self._synced[size]
        if f is None or at == f:
            return
        n = self.sizes[size]
        window = self._windows[size]
        panes = self.panes
        k = f - at if at is not None else n
        if at is None or 2 * k >= n or at - n < self._kept_from:  # type: ignore[operator]
            window.cells.clear()  # cheaper (or only possible) to sum the panes afresh
            for p, pane in panes.items():
                if f - n <= p < f:
                    window.merge(pane)
        else:
            for p in range(at, f):
                entering = panes.get(p)
                if entering:
                    window.merge(entering)
                leaving = panes.get(p - n)
                if leaving:
                    window.merge(leaving, -1)
        self._synced[size] = f

    def _freeze(self, p: int, pane: TransitionCounts) -> None:
        if pane.cells:
            self.archive[p] = pickle.dumps(pane.cells, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            self.archive.pop(p, None)

    def _correct(self, p: int, cells: Cells) -> None:
        """Apply the net change of one final pane to it, the windows holding it and the totals."""
        assert self.frontier_pane is not None
        delta = TransitionCounts({k: v for k, v in cells.items() if v[0] or v[1]})
        if not delta:
            return  # e.g. a merge moved steps between customers: the cells are unchanged
        self.totals.merge(delta)
        if self.corrections == "delta":  # emitted for any pane, kept or not
            pending = self.deltas.get(p)
            if pending is None:
                self.deltas[p] = dict(delta.cells)
            else:
                for key, (n, gap_sum) in delta.cells.items():
                    _add_cell(pending, key, n, gap_sum)
        if self.corrections == "cells":
            keys = self.changed.get(p)
            if keys is None:
                keys = self.changed[p] = set()
            keys.update(delta.cells)
        if p < self.frontier_pane - self.max_panes:
            if self.corrections != "delta":  # re-publish the archived pane (or its cells)
                pane = self._thawed.get(p)
                if pane is None:
                    frozen = self.archive.pop(p, None)
                    pane = self._thawed[p] = TransitionCounts(
                        pickle.loads(frozen) if frozen is not None else {})
                pane.merge(delta)
                self.dirty.add(p)
            return
        pane = self.panes.get(p)
        if pane is None:
            pane = self.panes[p] = TransitionCounts()
        pane.merge(delta)
        if self.corrections != "delta":
            self.dirty.add(p)
        for size, n in self.sizes.items():
            at = self._synced[size]
            if at is not None and at - n <= p < at:
                self._windows[size].merge(delta)

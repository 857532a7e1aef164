"""Markov transition counts in sliding event-time windows, with time-gap distributions.

:class:`TransitionCounts` is a mergeable bag of first-order ``(src, dst)`` and second-order
``((prev2, src), dst)`` counts, each kept globally, per segment and per channel (``"*"`` stands
for all), with the gap between the two touchpoints as a count, a sum and a log-spaced histogram
(half-octave buckets of seconds: quantiles come out within one bucket, about ±20 %). Every part is
a sum, so counts add (`update`, `merge`) and retract (`revert`, `merge(sign=-1)`) exactly, the
way River's ``utils/rolling.py`` pairs ``update`` with ``revert``.

:class:`TransitionCounter` keeps hopping windows of every size in ``WindowsConfig.sizes_s`` that
advance by ``step_s``. Steps are first added to their *pane* (one step of event time); a pane is
final once the frontier (watermark minus allowed lateness) has passed its end. Finalizing a pane
adds it to the running window of each size and retracts the pane that left it: per event the cost
is one dict update, whatever the number of overlapping windows. Probabilities are derived from the
counts on demand (:meth:`TransitionCounts.matrix`), never stored.

Outputs for the sink are rows (:class:`TransitionRow`): one per key of each pane as it becomes
final (``window_size_s == step_s``; sum panes for any window), and per-window snapshots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from processors.config import WindowsConfig
from processors.journeys import Step

ALL: Final = "*"
GAP_BUCKETS: Final = 50

FirstKey = tuple[str, str, str, str]  # (segment, channel, src, dst)
SecondKey = tuple[str, str, str, str, str]  # (segment, channel, prev2, src, dst)
FineKey = tuple[str, str, str, str, str]  # a step's own (segment, channel, prev2, src, dst)


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
    """One row for the ClickHouse sink: the counts of one key in one window."""

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


def _add_first(first: dict[FirstKey, list], key: FirstKey, n: int, gap_sum: int,
               hist: dict[int, int], sign: int) -> None:
    v = first.get(key)
    if v is None:
        if sign * n == 0:
            return
        v = first[key] = [0, 0, {}]
    v[0] += sign * n
    v[1] += sign * gap_sum
    h = v[2]
    for b, c in hist.items():
        if not c:
            continue  # a bucket that a retraction emptied within a pane
        m = h.get(b, 0) + sign * c
        if m:
            h[b] = m
        else:
            del h[b]
    if v[0] == 0:
        del first[key]


def _add_second(second: dict[SecondKey, int], key: SecondKey, n: int) -> None:
    m = second.get(key, 0) + n
    if m:
        second[key] = m
    else:
        del second[key]


@dataclass(slots=True)
class TransitionCounts:
    """First- and second-order transition counts with gap distributions: plain, mergeable."""

    # (segment, channel, src, dst) -> [n, gap_sum_ms, {gap bucket: n}]
    first: dict[FirstKey, list] = field(default_factory=dict)
    # (segment, channel, prev2, src, dst) -> n
    second: dict[SecondKey, int] = field(default_factory=dict)

    def update(self, src: str, dst: str, *, prev2: str = "", gap_ms: int = 0,
               segment: str = ALL, channel: str = ALL, n: int = 1) -> None:
        """Count `n` transitions `src -> dst` (and `(prev2, src) -> dst` if `prev2`)."""
        hist = {gap_bucket(gap_ms): 1}
        scopes = [(ALL, ALL)]
        if segment != ALL:
            scopes.append((segment, ALL))
        if channel != ALL:
            scopes.append((ALL, channel))
        for seg, ch in scopes:
            _add_first(self.first, (seg, ch, src, dst), 1, gap_ms, hist, n)
            if prev2:
                _add_second(self.second, (seg, ch, prev2, src, dst), n)

    def revert(self, src: str, dst: str, *, prev2: str = "", gap_ms: int = 0,
               segment: str = ALL, channel: str = ALL, n: int = 1) -> None:
        """Retract what :meth:`update` with the same arguments added."""
        self.update(src, dst, prev2=prev2, gap_ms=gap_ms, segment=segment, channel=channel,
                    n=-n)

    def merge(self, other: TransitionCounts, sign: int = 1) -> None:
        """Add (`sign=1`) or retract (`sign=-1`) all of `other`."""
        for key, (n, gap_sum, hist) in other.first.items():
            _add_first(self.first, key, n, gap_sum, hist, sign)
        for key2, n2 in other.second.items():
            _add_second(self.second, key2, sign * n2)

    def __bool__(self) -> bool:
        return bool(self.first or self.second)

    def n(self, src: str, dst: str, *, segment: str = ALL, channel: str = ALL,
          prev2: str = "") -> int:
        """The count of one transition (second order when `prev2` is given)."""
        if prev2:
            return self.second.get((segment, channel, prev2, src, dst), 0)
        v = self.first.get((segment, channel, src, dst))
        return v[0] if v else 0

    def pairs(self, *, segment: str = ALL, channel: str = ALL) -> dict[tuple[str, str], int]:
        """First-order counts `{(src, dst): n}` of one scope: what attribution consumes."""
        return {(k[2], k[3]): v[0] for k, v in self.first.items()
                if k[0] == segment and k[1] == channel}

    def triples(self, *, segment: str = ALL, channel: str = ALL
                ) -> dict[tuple[str, str, str], int]:
        """Second-order counts `{(prev2, src, dst): n}` of one scope."""
        return {(k[2], k[3], k[4]): n for k, n in self.second.items()
                if k[0] == segment and k[1] == channel}

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
        v = self.first.get((segment, channel, src, dst))
        if not v:
            return GapStats(0, 0.0, 0.0, 0.0, 0.0)
        n, gap_sum, hist = v
        return GapStats(n, gap_sum / n, gap_quantile(hist, 0.5), gap_quantile(hist, 0.9),
                        gap_quantile(hist, 0.99))

    def rows(self, window_start_ms: int, window_size_s: int) -> list[TransitionRow]:
        """Every key as a sink row."""
        out = []
        for (seg, ch, src, dst), (n, gap_sum, hist) in self.first.items():
            dense = [0] * GAP_BUCKETS
            for b, c in hist.items():
                dense[b] = c
            out.append(TransitionRow(window_start_ms, window_size_s, seg, ch, 1, "", src, dst,
                                     n, gap_sum, tuple(dense)))
        for (seg, ch, prev2, src, dst), n2 in self.second.items():
            out.append(TransitionRow(window_start_ms, window_size_s, seg, ch, 2, prev2, src, dst,
                                     n2, 0, ()))
        return out


def _rollup(fine: dict[FineKey, list]) -> TransitionCounts:
    """A pane's per-step keys, counted globally, per segment and per channel."""
    counts = TransitionCounts()
    first, second = counts.first, counts.second
    for (seg, ch, prev2, src, dst), (n, gap_sum, hist) in fine.items():
        if not n:
            continue
        for scope in ((ALL, ALL), (seg, ALL), (ALL, ch)):
            _add_first(first, (*scope, src, dst), n, gap_sum, hist, 1)
            if prev2:
                _add_second(second, (*scope, prev2, src, dst), n)
    return counts


WindowCallback = Callable[[int, int, TransitionCounts], None]


class TransitionCounter:
    """Hopping-window transition counts over :class:`~processors.journeys.Step` records.

    `update(steps)` adds (or, for ``sign=-1``, retracts) steps; `advance(watermark_ms)`
    finalizes the panes behind the frontier, moves every window and returns the rows of the
    newly final panes (and of earlier panes corrected since). A step for a pane that is already
    final (a merge correction) is applied to that pane, to the windows holding it and to the
    totals, and the pane is emitted again; panes older than the largest window only reach
    `totals`.
    """

    def __init__(self, windows: WindowsConfig, allowed_lateness_s: int = 0) -> None:
        self.step_s = windows.step_s
        self.step_ms = windows.step_s * 1000
        self.lateness_ms = allowed_lateness_s * 1000
        self.sizes: dict[int, int] = {size: size // windows.step_s for size in windows.sizes_s}
        self.max_panes = max(self.sizes.values())
        self.frontier_pane: int | None = None  # panes before this one are final
        self.hot: dict[int, dict[FineKey, list]] = {}
        self.panes: dict[int, TransitionCounts] = {}
        self.windows: dict[int, TransitionCounts] = {size: TransitionCounts()
                                                     for size in self.sizes}
        self.totals = TransitionCounts()
        self.dirty: set[int] = set()

    def update(self, steps: Iterable[Step]) -> None:
        """Add each step (retract it when ``step.sign == -1``) to its pane."""
        step_ms = self.step_ms
        frontier = self.frontier_pane
        hot = self.hot
        for st in steps:
            p = st.ts_ms // step_ms
            if frontier is not None and p < frontier:
                self._correct(p, st)
                continue
            fine = hot.get(p)
            if fine is None:
                fine = hot[p] = {}
            key = (st.segment, st.channel, st.prev2, st.src, st.dst)
            sign = st.sign
            v = fine.get(key)
            if v is None:
                v = fine[key] = [0, 0, {}]
            v[0] += sign
            v[1] += sign * st.gap_ms
            h = v[2]
            b = gap_bucket(st.gap_ms)
            m = h.get(b, 0) + sign
            if m:
                h[b] = m
            else:
                del h[b]

    def advance(self, watermark_ms: int, on_window: WindowCallback | None = None
                ) -> list[TransitionRow]:
        """Finalize panes before ``watermark_ms - allowed_lateness``; return their rows.

        `on_window(window_start_ms, size_s, counts)` is called for every window that becomes
        final (once per size and pane), with the live counts: copy them to keep them.
        """
        new_frontier = (watermark_ms - self.lateness_ms) // self.step_ms
        rows: list[TransitionRow] = []
        if self.frontier_pane is None:
            self.frontier_pane = min([new_frontier, *self.hot])
        for p in sorted(self.dirty):
            if p in self.panes:
                rows.extend(self.panes[p].rows(p * self.step_ms, self.step_s))
        self.dirty.clear()
        while self.frontier_pane < new_frontier:
            f = self.frontier_pane
            if not self.panes and not any(p < new_frontier for p in self.hot):
                self.frontier_pane = new_frontier  # nothing in any window: jump
                break
            fine = self.hot.pop(f, None)
            pane = _rollup(fine) if fine else None
            if pane:
                self.panes[f] = pane
                self.totals.merge(pane)
                rows.extend(pane.rows(f * self.step_ms, self.step_s))
            for size, n in self.sizes.items():
                window = self.windows[size]
                if pane:
                    window.merge(pane)
                leaving = self.panes.get(f - n)
                if leaving:
                    window.merge(leaving, -1)
                if on_window is not None:
                    on_window((f + 1 - n) * self.step_ms, size, window)
            self.panes.pop(f - self.max_panes, None)
            self.frontier_pane = f + 1
        return rows

    def window(self, size_s: int) -> tuple[int, TransitionCounts]:
        """The latest final window of one size: (window_start_ms, counts)."""
        f = self.frontier_pane if self.frontier_pane is not None else 0
        return (f - self.sizes[size_s]) * self.step_ms, self.windows[size_s]

    def snapshot(self, size_s: int | None = None) -> list[TransitionRow]:
        """Rows of the latest final window of each size (or of one size)."""
        rows: list[TransitionRow] = []
        for size in [size_s] if size_s is not None else list(self.sizes):
            start, counts = self.window(size)
            rows.extend(counts.rows(start, size))
        return rows

    def matrix(self, size_s: int | None = None, *, segment: str = ALL, channel: str = ALL,
               order: int = 1) -> dict[object, dict[str, float]]:
        """Transition probabilities of the latest final window (all-time when `size_s` None)."""
        counts = self.totals if size_s is None else self.windows[size_s]
        return counts.matrix(segment=segment, channel=channel, order=order)

    def _correct(self, p: int, st: Step) -> None:
        """Apply one step to an already final pane, the windows holding it and the totals."""
        assert self.frontier_pane is not None
        kw = {"prev2": st.prev2, "gap_ms": st.gap_ms, "segment": st.segment,
              "channel": st.channel, "n": st.sign}
        self.totals.update(st.src, st.dst, **kw)  # type: ignore[arg-type]
        if p < self.frontier_pane - self.max_panes:
            return
        pane = self.panes.get(p)
        if pane is None:
            pane = self.panes[p] = TransitionCounts()
        pane.update(st.src, st.dst, **kw)  # type: ignore[arg-type]
        self.dirty.add(p)
        for size, n in self.sizes.items():
            if p >= self.frontier_pane - n:
                self.windows[size].update(st.src, st.dst, **kw)  # type: ignore[arg-type]

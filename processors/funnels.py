"""Funnels: where each customer stands in every configured funnel, and how many get through.

A *run* of a funnel starts when a customer reaches stage 0. It moves forward only: in ``strict``
order the next stage counts only if it is the immediate next one (events of later stages are
ignored), in ``relaxed`` order any later stage counts and the stages in between are skipped. A run
ends *converted* when it reaches the last stage, or *dropped* at its current stage when the
conversion window expires. The window is measured from the **run start** (as Amplitude does: "
converted within X of the first step"): a stage reached at ``ts <= run_start + window`` counts.
After either end, the next stage-0 event starts a new run. Stage-0 events inside a running run
are ignored: a stage never moves backwards.

Per stage and cell (funnel, segment, cohort week) the aggregates are exact, mergeable counts:
``entered`` (reached this stage), ``advanced`` (left it for a later stage), ``dropped`` (the
window expired here), and the times to advance (entry of this stage to entry of the next one
reached). Skipped stages count as neither entered nor advanced, so for every stage but the last
``entered = advanced + dropped + still in it``. The segment and cohort of a run are those of its
start: the segment of the stage-0 event and the ISO week (its Monday, UTC) of its time.

Dropping needs time to pass: :meth:`FunnelTracker.advance` closes the runs whose window ended
before the watermark. Events must come in event-time order per customer (the journey step
guarantees it within the allowed lateness); one older than the customer's current stage entry, or
older than the last watermark, is returned as *late*, not applied.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import Counter
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final, NamedTuple

from processors.config import FunnelConfig
from processors.events import ResolvedEvent

OUTSIDE: Final = -1
"""Stage index meaning "not in the funnel": the `from_stage` of an entry, `to_stage` of a drop."""

EXACT_DURATIONS_MAX: Final = 4096
"""Times to advance kept exactly per stage and cell; beyond, a log histogram (≤1 % error)."""

_GAMMA: Final = 1.02
_LOG_GAMMA: Final = math.log(_GAMMA)
_DAY_MS: Final = 86_400_000
_EPOCH: Final = date(1970, 1, 1)
_ALL: Final = "*"


def cohort_week(ts_ms: int) -> date:
    """The Monday (UTC) of the ISO week that contains `ts_ms`."""
    day = ts_ms // _DAY_MS
    return _EPOCH + timedelta(days=day - (day + 3) % 7)  # 1970-01-01 was a Thursday


@dataclass(slots=True)
class Durations:
    """A mergeable sample of durations in ms: exact up to a bound, then a log histogram.

    Up to :data:`EXACT_DURATIONS_MAX` values the quantiles are exact (linear interpolation, as
    ``numpy.quantile``); past it the values fold into buckets of ratio 1.02, so a quantile is
    within 1 % of the exact one and memory stays bounded (about 1,200 buckets at most).
    """

    exact: list[int] | None = field(default_factory=list)
    buckets: dict[int, int] = field(default_factory=dict)
    n_zero: int = 0
    n: int = 0

    def add(self, value_ms: int) -> None:
        self.n += 1
        if self.exact is not None:
            self.exact.append(value_ms)
            if len(self.exact) > EXACT_DURATIONS_MAX:
                self._fold()
        else:
            self._bucket(value_ms, 1)

    def merge(self, other: Durations) -> None:
        """Add every value of `other` (which is left unchanged)."""
        self.n += other.n
        if self.exact is not None and other.exact is not None:
            self.exact.extend(other.exact)
            if len(self.exact) > EXACT_DURATIONS_MAX:
                self._fold()
            return
        if self.exact is not None:
            self._fold()
        if other.exact is not None:
            for v in other.exact:
                self._bucket(v, 1)
        else:
            self.n_zero += other.n_zero
            for k, c in other.buckets.items():
                self.buckets[k] = self.buckets.get(k, 0) + c

    def remove(self, value_ms: int) -> None:
        """Take back one value added before (a merge of two customers retracts their runs)."""
        self.n -= 1
        if self.exact is not None:
            self.exact.remove(value_ms)
        elif value_ms <= 0:
            self.n_zero -= 1
        else:
            k = math.ceil(math.log(value_ms) / _LOG_GAMMA)
            left = self.buckets[k] - 1
            if left:
                self.buckets[k] = left
            else:
                del self.buckets[k]

    def quantile(self, q: float) -> float | None:
        """The `q`-quantile (0..1), or None when empty."""
        if self.n == 0:
            return None
        if self.exact is not None:
            values = sorted(self.exact)
            # In thousandths with integer steps (as `statistics.quantiles`): no float residue.
            j, delta = divmod(round(q * 1000) * (len(values) - 1), 1000)
            hi = min(j + 1, len(values) - 1)
            return (values[j] * (1000 - delta) + values[hi] * delta) / 1000
        rank = q * (self.n - 1)
        seen = self.n_zero
        if rank < seen:
            return 0.0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if rank < seen:
                return 2.0 * _GAMMA**k / (_GAMMA + 1.0)
        return 2.0 * _GAMMA ** max(self.buckets) / (_GAMMA + 1.0)

    def _fold(self) -> None:
        values, self.exact = self.exact or [], None
        for v in values:
            self._bucket(v, 1)

    def _bucket(self, value_ms: int, count: int) -> None:
        if value_ms <= 0:
            self.n_zero += count
        else:
            k = math.ceil(math.log(value_ms) / _LOG_GAMMA)
            self.buckets[k] = self.buckets.get(k, 0) + count


@dataclass(slots=True)
class StageCounts:
    """The aggregates of one cell (funnel, segment, cohort week), one list slot per stage."""

    n_entered: list[int]
    n_advanced: list[int]
    n_dropped: list[int]
    advance_ms: list[Durations]

    @classmethod
    def empty(cls, n_stages: int) -> StageCounts:
        return cls([0] * n_stages, [0] * n_stages, [0] * n_stages,
                   [Durations() for _ in range(n_stages)])

    def merge(self, other: StageCounts) -> None:
        for i in range(len(self.n_entered)):
            self.n_entered[i] += other.n_entered[i]
            self.n_advanced[i] += other.n_advanced[i]
            self.n_dropped[i] += other.n_dropped[i]
            self.advance_ms[i].merge(other.advance_ms[i])


CellKey = tuple[str, str, date]  # (funnel, segment, cohort week)


# Records built with tuple.__new__ skip the Python-level NamedTuple.__new__ frame (every field
# given, defaults too): the hot paths make one per funnel move.
_new = tuple.__new__

_STAGE_BITS: Final = 6  # a run's event codes: ts_ms << 6 | stage (funnels have < 64 stages)
_STAGE_MASK: Final = (1 << _STAGE_BITS) - 1


@dataclass(slots=True)
class FunnelRun:
    """One customer's open run of one funnel; `cell` is its aggregates' key in the state.

    `events` holds every funnel event applied since the run started (stage-0 repeats and
    skipped stages too), one int each (``ts_ms << 6 | stage``, 8 bytes in an ``array``): what
    :meth:`FunnelTracker.merge_customer` replays when two customers become one.
    """

    stage: int
    stage_entered_ms: int
    run_start_ms: int
    cell: CellKey
    events: array = field(default_factory=lambda: array("q"))

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        slots = state[1]
        for name, value in slots.items():
            object.__setattr__(self, name, value)
        if "events" not in slots:  # pickled before runs kept their events: start and stage
            codes = [self.run_start_ms << _STAGE_BITS]
            if self.stage:
                codes.append(self.stage_entered_ms << _STAGE_BITS | self.stage)
            self.events = array("q", codes)

    @property
    def segment(self) -> str:
        return self.cell[1]

    @property
    def cohort_week(self) -> date:
        return self.cell[2]


@dataclass(slots=True)
class FunnelState:
    """Everything a :class:`FunnelTracker` keeps: plain data that pickles.

    `runs` holds open runs only (converted and dropped runs are forgotten), per funnel a dict
    of customer -> run (the native tracker's is a mapping over native memory that pickles as
    that dict), `deadlines` is a heap per funnel of ``(run_start + window, customer,
    run_start)`` (stale entries are skipped).
    """

    runs: dict[str, MutableMapping[str, FunnelRun]] = field(default_factory=dict)
    cells: dict[CellKey, StageCounts] = field(default_factory=dict)
    deadlines: dict[str, list[tuple[int, str, int]]] = field(default_factory=dict)
    watermark_ms: int = -(2**62)


class FunnelTransition(NamedTuple):
    """A customer moved in a funnel: entered it, advanced, or dropped out (to ``OUTSIDE``).

    `time_in_prev_stage_ms` is None on entry; a drop happens at the deadline (run start plus
    window) and `converted` is true when `to_stage` is the last stage. A NamedTuple: millions
    of these are made, and a tuple is the cheapest record Python builds.
    """

    customer_id: str
    funnel: str
    from_stage: int
    to_stage: int
    from_stage_name: str
    to_stage_name: str
    ts_ms: int
    time_in_prev_stage_ms: int | None
    segment: str
    cohort_week: date
    converted: bool = False

    def as_row(self) -> dict[str, Any]:
        """The ``funnel_progress`` row: stage names, ``""`` standing for outside the funnel."""
        return {
            "customer_id": self.customer_id,
            "funnel": self.funnel,
            "from_stage": self.from_stage_name,
            "to_stage": self.to_stage_name,
            "ts": self.ts_ms,
            "time_in_prev_stage_ms": self.time_in_prev_stage_ms,
            "segment": self.segment,
            "cohort_week": self.cohort_week,
        }


@dataclass(frozen=True, slots=True)
class FunnelStageStats:
    """One ``funnel_dropoff`` row: a stage's aggregates in one cell (or a roll-up, ``"*"``)."""

    funnel: str
    stage_index: int
    stage: str
    segment: str
    cohort_week: date | None
    n_entered: int
    n_advanced: int
    n_dropped: int
    median_advance_ms: float | None
    p90_advance_ms: float | None

    def as_row(self, as_of_ms: int) -> dict[str, Any]:
        return {
            "funnel": self.funnel,
            "stage": self.stage,
            "stage_index": self.stage_index,
            "segment": self.segment,
            "cohort_week": self.cohort_week,
            "entered": self.n_entered,
            "advanced": self.n_advanced,
            "dropped": self.n_dropped,
            "median_time_to_advance_ms": self.median_advance_ms,
            "p90_time_to_advance_ms": self.p90_advance_ms,
            "as_of": as_of_ms,
        }


@dataclass(slots=True)
class FunnelResult:
    """What one batch produced: the transitions, and the events that came too late to apply."""

    transitions: list[FunnelTransition] = field(default_factory=list)
    late: list[ResolvedEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CustomerFunnel:
    """Where one customer stands in one funnel right now."""

    funnel: str
    stage: int
    stage_name: str
    stage_entered_ms: int
    run_start_ms: int
    segment: str
    cohort_week: date

    def time_in_stage_ms(self, now_ms: int) -> int:
        return max(0, now_ms - self.stage_entered_ms)


class _Compiled:
    """A funnel config as lookup tables (built once)."""

    __slots__ = ("last", "n_stages", "name", "names", "stage_of", "strict", "window_ms")

    def __init__(self, cfg: FunnelConfig) -> None:
        self.name = cfg.name
        self.names = [s.name for s in cfg.stages]
        self.n_stages = len(cfg.stages)
        self.last = self.n_stages - 1
        self.window_ms = cfg.conversion_window_s * 1000
        self.strict = cfg.order == "strict"
        self.stage_of = {tp: i for i, s in enumerate(cfg.stages) for tp in s.touchpoints}


class FunnelTracker:
    """Tracks every configured funnel over batches of resolved events.

    ``update(events)`` applies a batch and returns its transitions; ``advance(watermark_ms)``
    drops the runs whose window ended before the watermark; ``snapshot()`` gives the aggregates.
    The whole state is :attr:`state` (pass it back in to resume, e.g. after unpickling).
    """

    def __init__(self, funnels: Sequence[FunnelConfig], state: FunnelState | None = None) -> None:
        self._funnels = [_Compiled(f) for f in funnels]
        self._by_name = {f.name: f for f in self._funnels}
        self.state = state if state is not None else FunnelState()
        for f in self._funnels:
            self.state.runs.setdefault(f.name, {})
            self.state.deadlines.setdefault(f.name, [])
        # touchpoint -> [(funnel, stage)]: one lookup skips events no funnel cares about.
        self._routes: dict[str, list[tuple[_Compiled, int]]] = {}
        for f in self._funnels:
            for tp, i in f.stage_of.items():
                self._routes.setdefault(tp, []).append((f, i))
        self._weeks: dict[int, date] = {}

    def update(self, events: Iterable[ResolvedEvent]) -> FunnelResult:
        """Apply events (event-time order per customer) and return the transitions they cause."""
        out = FunnelResult()
        transitions = out.transitions
        late = out.late
        routes = self._routes
        runs_of = self.state.runs
        cells = self.state.cells
        watermark = self.state.watermark_ms
        for ev in events:
            route = routes.get(ev.event.touchpoint)
            if route is None:
                continue
            ts = ev.ts_ms
            if ts < watermark:
                late.append(ev)
                continue
            cid = ev.customer_id
            for f, s in route:
                run = runs_of[f.name].get(cid)
                if run is not None:
                    if ts < run.stage_entered_ms:
                        if not late or late[-1] is not ev:
                            late.append(ev)
                        continue
                    if ts > run.run_start_ms + f.window_ms:
                        self._drop(f, cid, run, transitions)
                        run = None
                if run is None:
                    if s == 0:
                        self._start(f, cid, ev, ts, transitions)
                    continue
                run.events.append(ts << _STAGE_BITS | s)
                c = run.stage
                if s <= c or (f.strict and s != c + 1):
                    continue
                # Advance (inlined: the hot path).
                spent = ts - run.stage_entered_ms
                key = run.cell
                cell = cells[key]
                cell.n_advanced[c] += 1
                cell.advance_ms[c].add(spent)
                cell.n_entered[s] += 1
                names = f.names
                transitions.append(_new(FunnelTransition, (
                    cid, f.name, c, s, names[c], names[s], ts, spent, key[1], key[2],
                    s == f.last)))
                if s == f.last:
                    del runs_of[f.name][cid]
                else:
                    run.stage = s
                    run.stage_entered_ms = ts
        return out

    def advance(self, watermark_ms: int) -> list[FunnelTransition]:
        """Drop every run whose window ended before `watermark_ms` (no earlier events will come).

        A run started at ``t`` can still advance at ``t + window``, so it drops once the
        watermark is past that instant. Returns the drop transitions, in deadline order.
        """
        out: list[FunnelTransition] = []
        if watermark_ms <= self.state.watermark_ms:
            return out
        self.state.watermark_ms = watermark_ms
        for f in self._funnels:
            heap = self.state.deadlines[f.name]
            runs = self.state.runs[f.name]
            while heap and heap[0][0] < watermark_ms:
                _, cid, start = heapq.heappop(heap)
                run = runs.get(cid)
                if run is not None and run.run_start_ms == start:
                    self._drop(f, cid, run, out)
        return out

    def customer(self, customer_id: str) -> list[CustomerFunnel]:
        """The customer's open runs, one per funnel they are in."""
        out = []
        for f in self._funnels:
            run = self.state.runs[f.name].get(customer_id)
            if run is not None:
                out.append(CustomerFunnel(f.name, run.stage, f.names[run.stage],
                                          run.stage_entered_ms, run.run_start_ms, run.segment,
                                          run.cohort_week))
        return out

    def snapshot(self, group_by: Sequence[str] = ("segment", "cohort_week")
                 ) -> list[FunnelStageStats]:
        """The aggregates per funnel and stage, grouped by any of ``segment`` and ``cohort_week``.

        A dimension left out of `group_by` is rolled up: segment ``"*"``, cohort week None.
        """
        unknown = set(group_by) - {"segment", "cohort_week"}
        if unknown:
            raise ValueError(f"group_by takes 'segment' and 'cohort_week', not {sorted(unknown)}")
        by_seg, by_week = "segment" in group_by, "cohort_week" in group_by
        groups: dict[tuple[str, str, date | None], StageCounts] = {}
        for (funnel, seg, week), cell in self.state.cells.items():
            f = self._by_name.get(funnel)
            if f is None:
                continue
            key = (funnel, seg if by_seg else _ALL, week if by_week else None)
            acc = groups.get(key)
            if acc is None:
                acc = groups[key] = StageCounts.empty(f.n_stages)
            acc.merge(cell)
        rows = []
        for (funnel, seg, group_week), acc in sorted(groups.items(), key=_group_order):
            f = self._by_name[funnel]
            for i in range(f.n_stages):
                d = acc.advance_ms[i]
                rows.append(FunnelStageStats(funnel, i, f.names[i], seg, group_week,
                                             acc.n_entered[i], acc.n_advanced[i],
                                             acc.n_dropped[i], d.quantile(0.5), d.quantile(0.9)))
        return rows

    def merge(self, other: FunnelState) -> None:
        """Add another tracker's aggregates (e.g. another partition's) to these."""
        for key, cell in other.cells.items():
            mine = self.state.cells.get(key)
            if mine is None:
                mine = self.state.cells[key] = StageCounts.empty(len(cell.n_entered))
            mine.merge(cell)

    def merge_customer(self, loser: str, winner: str) -> list[FunnelTransition]:
        """Fold `loser`'s open runs into `winner`'s, in event-time order (an identity merge).

        Per funnel, the events of both customers' open runs are replayed as one customer's,
        from the earlier run start: the combined run is the one a tracker fed the merged
        events from there would have (stage-0 events inside it ignored, a stage never moving
        backwards, a drop once the window ended before the watermark, a new run after a
        conversion or a drop). The aggregates of the two old runs are retracted and those of
        the replay added, so the counts equal that computation; the moves the replay made
        that neither customer made before are returned (under `winner`). Runs closed before
        the merge, and a customer's funnel events outside any open run, are not kept: they
        stay counted as they were. The segment of a replayed run is that of the old run its
        first event came from; events at the same millisecond are taken in stage order.
        """
        out: list[FunnelTransition] = []
        if loser == winner:
            return out
        touched: set[CellKey] = set()
        for f in self._funnels:
            runs = self.state.runs[f.name]
            lost = runs.pop(loser, None)
            if lost is None:
                continue
            kept = runs.pop(winner, None)
            old = [lost] if kept is None else [kept, lost]
            items = sorted((code, run.cell[1]) for run in old for code in run.events)
            before: Counter[tuple[int, int, int]] = Counter()
            for run in old:
                touched.add(run.cell)
                for move in self._walk(f, [(code, run.cell[1]) for code in run.events]):
                    self._count(f, move, -1)
                    before[move[:3]] += 1
            for move in self._walk(f, items, winner):
                self._count(f, move, 1)
                if before[move[:3]] > 0:
                    before[move[:3]] -= 1
                    continue
                frm, to, ts, spent, key = move
                out.append(FunnelTransition(
                    winner, f.name, frm, to, f.names[frm] if frm != OUTSIDE else "",
                    f.names[to] if to != OUTSIDE else "", ts, spent, key[1], key[2],
                    to == f.last))
        for key in touched:  # a cell the merge emptied is as if never made
            self._drop_if_empty(key)
        return out

    def detach(self, customer_id: str) -> dict[str, FunnelRun]:
        """Remove and return a customer's open runs (it moves to another partition).

        The runs' share of the aggregates leaves with them (:meth:`attach` adds it there), so
        each partition's counts stay those of the runs it holds and a merge can retract them.
        """
        out = {}
        for f in self._funnels:
            run = self.state.runs[f.name].pop(customer_id, None)
            if run is not None:
                for move in self._walk(f, [(code, run.cell[1]) for code in run.events]):
                    self._count(f, move, -1)
                self._drop_if_empty(run.cell)
                out[f.name] = run
        return out

    def attach(self, customer_id: str, runs: dict[str, FunnelRun]) -> None:
        """Adopt runs detached elsewhere, with their aggregates (then :meth:`merge_customer`)."""
        for name, run in runs.items():
            f = self._by_name.get(name)
            if f is None or customer_id in self.state.runs[name]:
                continue
            self.state.runs[name][customer_id] = run
            for move in self._walk(f, [(code, run.cell[1]) for code in run.events]):
                self._count(f, move, 1)
            heapq.heappush(self.state.deadlines[name],
                           (run.run_start_ms + f.window_ms, customer_id, run.run_start_ms))

    def _drop_if_empty(self, key: CellKey) -> None:
        cell = self.state.cells.get(key)
        if cell is not None and not any(cell.n_entered) and not any(cell.n_dropped):
            del self.state.cells[key]

    # -- the walk that merges replay ------------------------------------------------------------

    def _walk(self, f: _Compiled, items: list[tuple[int, str]], owner: str | None = None
              ) -> list[tuple[int, int, int, int | None, CellKey]]:
        """The moves ``(from, to, ts, time in stage, cell)`` of one customer's funnel events
        (``(ts << 6 | stage, segment)`` in event-time order) from no open run, as
        :meth:`update` and :meth:`advance` (to the current watermark) make them.

        With `owner`, the run left open at the end becomes `owner`'s, events and deadline.
        """
        moves: list[tuple[int, int, int, int | None, CellKey]] = []
        run: FunnelRun | None = None
        first = 0
        window = f.window_ms
        for i, (code, seg) in enumerate(items):
            ts, s = code >> _STAGE_BITS, code & _STAGE_MASK
            if run is not None and ts > run.run_start_ms + window:
                deadline = run.run_start_ms + window
                moves.append((run.stage, OUTSIDE, deadline, deadline - run.stage_entered_ms,
                              run.cell))
                run = None
            if run is None:
                if s == 0:
                    run = FunnelRun(0, ts, ts, (f.name, seg, self._week(ts)))
                    first = i
                    moves.append((OUTSIDE, 0, ts, None, run.cell))
                continue
            c = run.stage
            if s <= c or (f.strict and s != c + 1):
                continue
            moves.append((c, s, ts, ts - run.stage_entered_ms, run.cell))
            if s == f.last:
                run = None
            else:
                run.stage, run.stage_entered_ms = s, ts
        if run is not None and run.run_start_ms + window < self.state.watermark_ms:
            deadline = run.run_start_ms + window
            moves.append((run.stage, OUTSIDE, deadline, deadline - run.stage_entered_ms,
                          run.cell))
            run = None
        if owner is not None and run is not None:
            run.events = array("q", (code for code, _ in items[first:]))
            self.state.runs[f.name][owner] = run
            heapq.heappush(self.state.deadlines[f.name],
                           (run.run_start_ms + window, owner, run.run_start_ms))
        return moves

    def _count(self, f: _Compiled, move: tuple[int, int, int, int | None, CellKey], sign: int
               ) -> None:
        """Add (`sign` 1) or retract (-1) one move's share of the aggregates."""
        frm, to, _, spent, key = move
        cell = self.state.cells.get(key)
        if cell is None:
            cell = self.state.cells[key] = StageCounts.empty(f.n_stages)
        if to == OUTSIDE:
            cell.n_dropped[frm] += sign
            return
        cell.n_entered[to] += sign
        if frm != OUTSIDE:
            cell.n_advanced[frm] += sign
            if sign > 0:
                cell.advance_ms[frm].add(spent)  # type: ignore[arg-type]
            else:
                cell.advance_ms[frm].remove(spent)  # type: ignore[arg-type]

    def _week(self, ts: int) -> date:
        day = ts // _DAY_MS
        week = self._weeks.get(day)
        if week is None:
            week = self._weeks[day] = cohort_week(ts)
        return week

    # -- transitions -------------------------------------------------------------------------

    def _start(self, f: _Compiled, cid: str, ev: ResolvedEvent, ts: int,
               out: list[FunnelTransition]) -> None:
        week = self._week(ts)
        key = (f.name, ev.segment, week)
        cell = self.state.cells.get(key)
        if cell is None:
            cell = self.state.cells[key] = StageCounts.empty(f.n_stages)
        cell.n_entered[0] += 1
        self.state.runs[f.name][cid] = FunnelRun(0, ts, ts, key, array("q", (ts << _STAGE_BITS,)))
        heapq.heappush(self.state.deadlines[f.name], (ts + f.window_ms, cid, ts))
        out.append(_new(FunnelTransition, (cid, f.name, OUTSIDE, 0, "", f.names[0], ts, None,
                                           ev.segment, week, False)))

    def _drop(self, f: _Compiled, cid: str, run: FunnelRun, out: list[FunnelTransition]
              ) -> None:
        deadline = run.run_start_ms + f.window_ms
        key = run.cell
        self.state.cells[key].n_dropped[run.stage] += 1
        del self.state.runs[f.name][cid]
        out.append(_new(FunnelTransition, (
            cid, f.name, run.stage, OUTSIDE, f.names[run.stage], "", deadline,
            deadline - run.stage_entered_ms, key[1], key[2], False)))


def _group_order(item: tuple[tuple[str, str, date | None], StageCounts]) -> tuple[str, str, date]:
    funnel, seg, week = item[0]
    return funnel, seg, week or _EPOCH


def apply(state: FunnelState, events: Iterable[ResolvedEvent], funnels: Sequence[FunnelConfig],
          watermark_ms: int | None = None) -> tuple[FunnelState, FunnelResult]:
    """The functional form: apply a batch (then advance to `watermark_ms`, if given)."""
    tracker = FunnelTracker(funnels, state)
    result = tracker.update(events)
    if watermark_ms is not None:
        result.transitions.extend(tracker.advance(watermark_ms))
    return tracker.state, result

""":class:`~processors.funnels.FunnelTracker` with its open runs in native memory, its per-event
loop (`update`), its deadline loop (`advance`) and its merges of customers (`merge_customer`,
`detach`, `attach`) in Rust (issue 4).

:class:`NativeFunnelTracker` is a ``FunnelTracker`` whose open runs live in one ``NativeRuns`` per
funnel (``native/journeys/src/funnels.rs``, package ``journeymap_journeys``): per customer the
stage, its entry time, the run start, the cell key and the run's events, in the insertion order
of the Python dict they stand for. ``update`` and ``advance`` run in ``NativeFunnelStep`` over
them and over the tracker's other Python state (cells, deadline heaps, cohort-week cache),
changed by the same operations in the same order, so the transitions and the state are the
Python tracker's. ``state.runs[funnel]`` is a :class:`FunnelRuns` mapping over the core with
the Python tracker's values (``FunnelRun`` objects, *copies* made on each read: change a run by
setting it again), so the Python tracker's snapshots and the chain's ``forget_customer`` work on
it unchanged. Merges of customers, detach and attach replay the runs' events in Rust too (the
Python tracker's ``_walk`` and ``_count``), over the same state. It pickles as the Python
tracker's state (``state.runs`` plain dicts of ``FunnelRun``) and unpickles as a native one, or
as the Python one where the module is not installed. :func:`new_funnel_tracker` picks the engine
(``journey.engine``, with the rest of the journeys stage).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from processors.config import FunnelConfig, ProcessingConfig
from processors.errors import ConfigError
from processors.events import ResolvedEvent
from processors.funnels import (
    EXACT_DURATIONS_MAX,
    FunnelResult,
    FunnelRun,
    FunnelState,
    FunnelTracker,
    FunnelTransition,
    StageCounts,
    cohort_week,
)
from processors.native import NativeMap, journeys_class, journeys_not_built, with_state

# (optional: the Python tracker does the same)
NativeFunnelStep, _IMPORT_ERROR = journeys_class("NativeFunnelStep")
NativeRuns, _RUNS_ERROR = journeys_class("NativeRuns")
if NativeRuns is None:  # a module built before the runs moved to native memory
    NativeFunnelStep, _IMPORT_ERROR = None, _IMPORT_ERROR or _RUNS_ERROR


def _not_built() -> ConfigError:
    return journeys_not_built(_IMPORT_ERROR)


class FunnelRuns(NativeMap[FunnelRun]):
    """The open runs of one funnel of a :class:`NativeFunnelTracker` as the dict the Python
    tracker keeps (same keys, order and values); values are copies made on each read."""

    __slots__ = ()


class NativeFunnelTracker(FunnelTracker):
    """:class:`FunnelTracker` with ``update``, ``advance`` and the merges in Rust (see the
    module doc)."""

    def __init__(self, funnels: Sequence[FunnelConfig], state: FunnelState | None = None) -> None:
        if NativeFunnelStep is None:
            raise _not_built()
        super().__init__(funnels, state)
        _native_runs(self)
        self._native = _step_of(self)

    def update(self, events: Iterable[ResolvedEvent]) -> FunnelResult:
        """:meth:`FunnelTracker.update`. `events` may also be the ``NativeReleased`` records of
        the chain's native reorder buffer (:mod:`processors.pending_native`), read instead of
        the events."""
        out = FunnelResult()
        state = self.state
        names = [f.name for f in self._funnels]
        self._native.update(events, _cores(state, names),
                            [state.deadlines[n] for n in names], state.cells, self._weeks,
                            state.watermark_ms, out.transitions, out.late)
        return out

    def advance(self, watermark_ms: int) -> list[FunnelTransition]:
        """:meth:`FunnelTracker.advance`."""
        out: list[FunnelTransition] = []
        state = self.state
        if watermark_ms <= state.watermark_ms:
            return out
        state.watermark_ms = watermark_ms
        names = [f.name for f in self._funnels]
        self._native.advance(watermark_ms, _cores(state, names),
                             [state.deadlines[n] for n in names], state.cells, out)
        return out

    def merge_customer(self, loser: str, winner: str) -> list[FunnelTransition]:
        """:meth:`FunnelTracker.merge_customer`, its replay over the native runs: nothing to
        do, and nothing handed to them, when `loser` has no open run (most merges)."""
        out: list[FunnelTransition] = []
        runs = self.state.runs
        for f in self._funnels:
            if loser in runs[f.name]:
                break
        else:
            return out
        self._native.merge_customer(loser, winner, self._tracked(), out)
        return out

    def detach(self, customer_id: str) -> dict[str, FunnelRun]:
        """:meth:`FunnelTracker.detach`."""
        return self._native.detach(customer_id, self._tracked())  # type: ignore[no-any-return]

    def attach(self, customer_id: str, runs: dict[str, FunnelRun]) -> None:
        """:meth:`FunnelTracker.attach`."""
        self._native.attach(customer_id, runs, self._tracked())

    def _tracked(self) -> tuple[Any, ...]:
        """What the native merges work on: the native runs and the deadline heap of each
        funnel, the cells, the cohort-week cache and the watermark."""
        state = self.state
        names = [f.name for f in self._funnels]
        return (_cores(state, names), [state.deadlines[n] for n in names], state.cells,
                self._weeks, state.watermark_ms)

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        del state["_native"]
        return (_restore, (state,))


def _native_runs(tracker: FunnelTracker) -> None:
    """Move the tracker's open runs (plain dicts) into native memory, in their order."""
    runs = tracker.state.runs
    for f in tracker._funnels:
        runs[f.name] = _runs_of(runs[f.name])


def _runs_of(runs: Any) -> FunnelRuns:
    """`runs` (a funnel's open runs) as a :class:`FunnelRuns`: itself if it is one."""
    if isinstance(runs, FunnelRuns):
        return runs
    view = FunnelRuns(NativeRuns(FunnelRun, array))
    view.update(runs)
    return view


def _cores(state: FunnelState, names: list[str]) -> list[Any]:
    """The native runs of the funnels `names` (a plain dict set into the state since moved)."""
    runs = state.runs
    out = []
    for n in names:
        view = runs[n]
        if not isinstance(view, FunnelRuns):
            view = runs[n] = _runs_of(view)
        out.append(view._core)
    return out


def _step_of(tracker: FunnelTracker) -> Any:
    """The native loops for `tracker`'s compiled funnels and routes."""
    index = {id(f): i for i, f in enumerate(tracker._funnels)}
    routes = {tp: [(index[id(f)], s) for f, s in route]
              for tp, route in tracker._routes.items()}
    return NativeFunnelStep(
        [(f.name, list(f.names), f.window_ms, f.strict) for f in tracker._funnels],
        routes, FunnelTransition, StageCounts.empty, cohort_week, EXACT_DURATIONS_MAX)


def _restore(state: dict[str, Any]) -> FunnelTracker:
    """Unpickle a native tracker: native again, or Python without the module."""
    if NativeFunnelStep is None:
        return with_state(FunnelTracker, state)
    native = with_state(NativeFunnelTracker, state)
    _native_runs(native)
    native._native = _step_of(native)
    return native


def new_funnel_tracker(config: ProcessingConfig) -> FunnelTracker:
    """The funnel tracker for `config.journey.engine`: native when the module has the loops
    (`auto`) or asked for (`native`: a :class:`ConfigError` if it has not), else Python. Same
    transitions and state either way."""
    engine = getattr(config.journey, "engine", "auto")  # configs pickled before the setting
    if engine == "native" and NativeFunnelStep is None:
        raise _not_built()
    if engine == "python" or NativeFunnelStep is None:
        return FunnelTracker(config.funnels)
    return NativeFunnelTracker(config.funnels)


def adopt_funnels(config: ProcessingConfig, funnels: FunnelTracker) -> FunnelTracker:
    """A tracker restored from a checkpoint, on the engine `config` asks for where the module is
    installed: a Python one goes on natively over the very same state (so the same
    transitions). Anything else is returned as it is."""
    engine = getattr(config.journey, "engine", "auto")
    if engine == "python" or NativeFunnelStep is None or type(funnels) is not FunnelTracker:
        return funnels
    return _restore(dict(funnels.__dict__))


__all__ = ["FunnelRuns", "NativeFunnelTracker", "adopt_funnels", "new_funnel_tracker"]

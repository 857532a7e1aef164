""":class:`~processors.funnels.FunnelTracker` with its per-event loop (`update`) and its deadline
loop (`advance`) in Rust (issue 4).

:class:`NativeFunnelTracker` is a ``FunnelTracker`` whose ``update`` and ``advance`` run in
``NativeFunnelStep`` (``native/journeys/src/funnels.rs``, package ``journeymap_journeys``) over
the same Python state: the runs, cells, deadline heaps and cohort-week cache are the tracker's own
objects, changed by the same operations in the same order, so the transitions, the state and its
pickles are the Python tracker's. Everything else (merges of customers, detach and attach,
snapshots) is the Python tracker's code on that state. It pickles as the Python tracker's state
and unpickles as a native one, or as the Python one where the module is not installed.
:func:`new_funnel_tracker` picks the engine (``journey.engine``, with the rest of the journeys
stage).
"""

from __future__ import annotations

import heapq
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
from processors.native import journeys_class, journeys_not_built, with_state

# (optional: the Python tracker does the same)
NativeFunnelStep, _IMPORT_ERROR = journeys_class("NativeFunnelStep")


def _not_built() -> ConfigError:
    return journeys_not_built(_IMPORT_ERROR)


class NativeFunnelTracker(FunnelTracker):
    """:class:`FunnelTracker` with ``update`` and ``advance`` in Rust (see the module doc)."""

    def __init__(self, funnels: Sequence[FunnelConfig], state: FunnelState | None = None) -> None:
        if NativeFunnelStep is None:
            raise _not_built()
        super().__init__(funnels, state)
        self._native = _step_of(self)

    def update(self, events: Iterable[ResolvedEvent]) -> FunnelResult:
        """:meth:`FunnelTracker.update`. `events` may also be the ``NativeReleased`` records of
        the chain's native reorder buffer (:mod:`processors.pending_native`), read instead of
        the events."""
        out = FunnelResult()
        state = self.state
        names = [f.name for f in self._funnels]
        self._native.update(events, [state.runs[n] for n in names],
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
        self._native.advance(watermark_ms, [state.runs[n] for n in names],
                             [state.deadlines[n] for n in names], state.cells, out)
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        del state["_native"]
        return (_restore, (state,))


def _step_of(tracker: FunnelTracker) -> Any:
    """The native loops for `tracker`'s compiled funnels and routes."""
    index = {id(f): i for i, f in enumerate(tracker._funnels)}
    routes = {tp: [(index[id(f)], s) for f, s in route]
              for tp, route in tracker._routes.items()}
    return NativeFunnelStep(
        [(f.name, list(f.names), f.window_ms, f.strict) for f in tracker._funnels],
        routes, FunnelTransition, FunnelRun, StageCounts.empty, array, heapq.heappush,
        heapq.heappop, cohort_week, EXACT_DURATIONS_MAX)


def _restore(state: dict[str, Any]) -> FunnelTracker:
    """Unpickle a native tracker: native again, or Python without the module."""
    if NativeFunnelStep is None:
        return with_state(FunnelTracker, state)
    native = with_state(NativeFunnelTracker, state)
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


__all__ = ["NativeFunnelTracker", "adopt_funnels", "new_funnel_tracker"]

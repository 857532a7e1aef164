""":class:`~processors.transitions.TransitionCounter` with its per-step loop and its pane
finalization in Rust (issue 4).

:class:`NativeTransitionCounter` is a ``TransitionCounter`` whose ``update`` counts each step
into its pane's cells from ``NativeStepCounter`` (``native/journeys/src/lib.rs``, package
``journeymap_journeys``; the native journeys core's steps straight from its ``StepBatch`` of
Rust records, without making ``Step`` records: ``steps.rs``), and whose ``advance``,
corrections of final panes (``_correct``) and window syncing (``_sync``) run in
``NativePanes`` (``native/journeys/src/panes.rs``): the same Python panes and dicts, changed by
the same operations in the same order, so every output and the state are the same
(``advance(on_window=...)`` stays the Python method, as do the three with a module built before
``NativePanes``). It pickles as the Python counter's state and unpickles as a native counter, or
as the Python one where the module is not installed.
:func:`processors.journeys_native.new_journey_stage` picks it.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

from processors.journeys import Step
from processors.native import import_core, not_built, with_state
from processors.transitions import (
    _BUCKET_LOWS_MS,
    CellDelta,
    CellRow,
    CellUpdate,
    TransitionCounter,
    TransitionCounts,
    WindowCallback,
)

# (optional: the Python counter does the same)
_module, _IMPORT_ERROR = import_core("journeymap_journeys")
NativeStepCounter: Any = getattr(_module, "NativeStepCounter", None)
NativePanes: Any = getattr(_module, "NativePanes", None)
# Stateless (the types it makes and the pickle functions it calls): one for every counter. None
# with a module built before it: the Python methods then (same outputs).
_PANES: Any = None if NativePanes is None else NativePanes(
    TransitionCounts, CellRow, CellUpdate, CellDelta, pickle.dumps, pickle.loads,
    pickle.HIGHEST_PROTOCOL)


class NativeTransitionCounter(TransitionCounter):
    """:class:`TransitionCounter` counting steps in Rust (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if NativeStepCounter is None:
            raise not_built("journey", "journeys", "journeymap_journeys", _IMPORT_ERROR,
                            "scripts/build-native.sh")
        super().__init__(*args, **kwargs)
        self._native = NativeStepCounter(self.step_ms, list(_BUCKET_LOWS_MS), TransitionCounts)

    def update(self, steps: Iterable[Step]) -> None:
        """:meth:`TransitionCounter.update`."""
        late = self._native.update(steps, self.hot, self.frontier_pane)
        if late:
            if _PANES is None:
                for p, cells in late.items():
                    super()._correct(p, cells)
            else:
                _PANES.correct(self, late)

    def advance(self, watermark_ms: int, on_window: WindowCallback | None = None
                ) -> list[CellRow]:
        """:meth:`TransitionCounter.advance`."""
        if on_window is not None or _PANES is None:
            return super().advance(watermark_ms, on_window)
        rows: list[CellRow] = _PANES.advance(self, watermark_ms)
        return rows

    def _sync(self, size: int) -> None:
        if _PANES is None:
            super()._sync(size)
        else:
            _PANES.sync(self, size)

    def _correct(self, p: int, cells: dict[Any, tuple[int, int]]) -> None:
        if _PANES is None:
            super()._correct(p, cells)
        else:
            _PANES.correct(self, {p: cells})

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        del state["_native"]
        return (_restore, (state,))


def _restore(state: dict[str, Any]) -> TransitionCounter:
    """Unpickle a native counter: native again, or Python without the module."""
    if NativeStepCounter is None:
        return with_state(TransitionCounter, state)
    native = with_state(NativeTransitionCounter, state)
    native._native = NativeStepCounter(native.step_ms, list(_BUCKET_LOWS_MS), TransitionCounts)
    return native


__all__ = ["NativeTransitionCounter"]

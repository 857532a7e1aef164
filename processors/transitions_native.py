""":class:`~processors.transitions.TransitionCounter` over native state (issue 4).

:class:`NativeTransitionCounter` is a ``TransitionCounter`` whose state lives in a
``NativeCounter`` (``native/journeys/src/counter.rs``, package ``journeymap_journeys``): every
pane, window and the totals as native cells (their strings interned, two ``i64`` per cell) in
the insertion order of the Python dicts they stand for, changed by the same operations in the
same order, so every output is the same. ``update`` counts a journeys core's ``StepBatch``
straight from its Rust records (``steps.rs``) or ``Step`` records; ``advance``, the corrections
of final panes and the window syncing run there too, and Python objects are made only where they
leave: the cell rows, the archive's pickles (the same bytes as ``pickle.dumps`` of the Python
pane) and the state's attributes (``hot``, ``panes``, ``totals``, ...), made on each read (a
copy: set one to change it). ``advance(on_window=...)`` runs the Python method on a Python twin
of the state (the callback sees live windows there). The counter pickles as the Python
counter's state and unpickles as a native counter, or as the Python one where the module is not
installed. :func:`processors.journeys_native.new_journey_stage` picks it.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any, Literal

from processors.config import WindowsConfig, lateness_ms
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
NativeCounter: Any = getattr(_module, "NativeCounter", None)
if NativeCounter is None and _module is not None:
    _IMPORT_ERROR = "the installed journeymap_journeys has no NativeCounter (built before it)"

# The counter's attributes kept in the native state (the others are its configuration).
STATE: tuple[str, ...] = ("frontier_pane", "hot", "panes", "_windows", "_synced", "_kept_from",
                          "totals", "dirty", "archive", "_thawed", "deltas", "changed")


def _core(step_s: int, sizes: dict[int, int], lateness_ms: int, corrections: str) -> Any:
    """An empty native state (`sizes`: window size -> panes, as `TransitionCounter.sizes`)."""
    return NativeCounter(
        step_s, list(sizes.items()), lateness_ms, corrections, list(_BUCKET_LOWS_MS),
        TransitionCounts, (CellRow, CellUpdate, CellDelta),
        (pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL))


class NativeTransitionCounter(TransitionCounter):
    """:class:`TransitionCounter` over native state (see the module doc)."""

    _core: Any

    def __init__(self, windows: WindowsConfig, allowed_lateness_s: float = 0,
                 corrections: Literal["pane", "cells", "delta"] = "pane") -> None:
        if NativeCounter is None:
            raise not_built("journey", "journeys", "journeymap_journeys", _IMPORT_ERROR,
                            "scripts/build-native.sh")
        # (its ValueError for bad `corrections` is TransitionCounter's)
        self._core = _core(windows.step_s, {s: s // windows.step_s for s in windows.sizes_s},
                           lateness_ms(allowed_lateness_s), corrections)
        # The state's attributes `__init__` sets go to the core (the properties below)
        super().__init__(windows, allowed_lateness_s, corrections)

    def update(self, steps: Iterable[Step]) -> None:
        """:meth:`TransitionCounter.update`."""
        self._core.update(steps)

    def advance(self, watermark_ms: int, on_window: WindowCallback | None = None
                ) -> list[CellRow]:
        """:meth:`TransitionCounter.advance`."""
        if on_window is None:
            rows: list[CellRow] = self._core.advance(watermark_ms)
            return rows
        twin = with_state(TransitionCounter, state_of(self))
        rows = twin.advance(watermark_ms, on_window)
        for name in STATE:
            self._core.set(name, twin.__dict__[name])
        return rows

    def _sync(self, size: int) -> None:
        self._core.sync(size)

    def _correct(self, p: int, cells: dict[Any, tuple[int, int]]) -> None:
        self._core.correct_cells(p, cells)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (state_of(self),))


def _state_attribute(name: str) -> property:
    def get(self: NativeTransitionCounter) -> Any:
        return self._core.get(name)

    def set_(self: NativeTransitionCounter, value: Any) -> None:
        self._core.set(name, value)

    return property(get, set_, doc=f"`TransitionCounter.{name}` (made on each read)")


for _name in STATE:
    setattr(NativeTransitionCounter, _name, _state_attribute(_name))


def state_of(counter: TransitionCounter) -> dict[str, Any]:
    """The attributes of the Python counter holding the same state as `counter` (of either
    class): what both pickle as."""
    state = {k: v for k, v in counter.__dict__.items() if k != "_core"}
    if isinstance(counter, NativeTransitionCounter):
        state.update((name, getattr(counter, name)) for name in STATE)
    return state


def _restore(state: dict[str, Any]) -> TransitionCounter:
    """Unpickle a native counter: native again, or Python without the module."""
    if NativeCounter is None:
        return with_state(TransitionCounter, state)
    native = with_state(NativeTransitionCounter,
                        {k: v for k, v in state.items() if k not in STATE})
    native._core = _core(native.step_s, native.sizes, native.lateness_ms, native.corrections)
    for name in STATE:
        native._core.set(name, state[name])
    return native


__all__ = ["NativeTransitionCounter", "state_of"]

""":class:`~processors.transitions.TransitionCounter` with its per-step loop (`update`) in Rust
(issue 4).

:class:`NativeTransitionCounter` is a ``TransitionCounter`` whose ``update`` counts each step
into its pane's cells from ``NativeStepCounter`` (``native/journeys/src/lib.rs``, package
``journeymap_journeys``): the same Python panes and dicts, changed by the same operations in
the same order, so every output and the state are the same. Late panes go through the Python
``_correct`` as before; finalizing panes (``advance``) stays Python. It pickles as the Python
counter's state and unpickles as a native counter, or as the Python one where the module is
not installed. :func:`processors.journeys_native.new_journey_stage` picks it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from processors.journeys import Step
from processors.native import import_core, not_built
from processors.transitions import _BUCKET_LOWS_MS, TransitionCounter, TransitionCounts

# (optional: the Python counter does the same)
_module, _IMPORT_ERROR = import_core("journeymap_journeys")
NativeStepCounter: Any = getattr(_module, "NativeStepCounter", None)


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
            for p, cells in late.items():
                self._correct(p, cells)

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        del state["_native"]
        return (_restore, (state,))


def _restore(state: dict[str, Any]) -> TransitionCounter:
    """Unpickle a native counter: native again, or Python without the module."""
    if NativeStepCounter is None:
        counter = TransitionCounter.__new__(TransitionCounter)
        counter.__dict__.update(state)
        return counter
    native = NativeTransitionCounter.__new__(NativeTransitionCounter)
    native.__dict__.update(state)
    native._native = NativeStepCounter(native.step_ms, list(_BUCKET_LOWS_MS), TransitionCounts)
    return native


__all__ = ["NativeTransitionCounter"]

""":class:`~processors.attribution.PathAccumulator` with its open journeys in native memory and
its per-event loop (`add`) in Rust (issue 4).

:class:`NativePathAccumulator` is a ``PathAccumulator`` whose open journeys live in
``NativePaths`` (``native/journeys/src/paths.rs``, package ``journeymap_journeys``): per customer
the last event time and the touchpoints and channels so far, as interned codes, in the insertion
order of the Python dict they stand for. ``add`` runs there; the finished paths (``done``) stay
the same Python dicts, changed by the same operations in the same order. ``open`` is an
:class:`OpenPaths` mapping over the core with the Python accumulator's values (tuples
``(last ts, [touchpoints], [channels])``, *copies*: change a journey by setting it again), so
the chain's detach, attach and forget work on it unchanged; ``rename`` (a merge) and ``paths``
run in the core. It pickles as the Python accumulator's state (``open`` a plain dict) and
unpickles as a native one, or as the Python one where the module is not installed.
:func:`new_path_accumulator` picks the engine (``journey.engine``, with the rest of the journeys
stage).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Literal

from processors.attribution import Path, PathAccumulator
from processors.config import ProcessingConfig
from processors.errors import ConfigError
from processors.events import ResolvedEvent
from processors.native import NativeMap, journeys_class, journeys_not_built, with_state

# (optional: the Python accumulator does the same)
NativePaths, _IMPORT_ERROR = journeys_class("NativePaths")

Journey = tuple[int, list[str], list[str]]


def _not_built() -> ConfigError:
    return journeys_not_built(_IMPORT_ERROR)


class OpenPaths(NativeMap[Journey]):
    """The open journeys of a :class:`NativePathAccumulator` as the dict the Python accumulator
    keeps (same keys, order and values); values are copies made on each read."""

    __slots__ = ()


class NativePathAccumulator(PathAccumulator):
    """:class:`PathAccumulator` with native open journeys (see the module doc)."""

    def __init__(self, conversion: Iterable[str], churn: Iterable[str], null_horizon_s: int
                 ) -> None:
        if NativePaths is None:
            raise _not_built()
        super().__init__(conversion, churn, null_horizon_s)
        self._core = NativePaths(self.conversion, self.churn, self.horizon_ms)
        self.open = OpenPaths(self._core)  # type: ignore[assignment]

    def add(self, events: Iterable[ResolvedEvent]) -> None:
        """:meth:`PathAccumulator.add`. `events` may also be the ``NativeReleased`` records of
        the chain's native reorder buffer (:mod:`processors.pending_native`), read instead of
        the events."""
        self._core.add(events, self.done["touchpoint"], self.done["channel"])

    def rename(self, loser: str, winner: str) -> None:
        """:meth:`PathAccumulator.rename`, in the core (no journey copied out and back)."""
        self._core.rename(loser, winner)

    def paths(self, level: Literal["touchpoint", "channel"], now_ms: int) -> list[Path]:
        """:meth:`PathAccumulator.paths` (the idle open journeys read in the core, no copies)."""
        acc: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        for steps, (c, v, n) in self.done[level].items():
            acc[steps] = [c, v, n]
        for steps in self._core.idle(0 if level == "touchpoint" else 1, now_ms):
            acc[steps][2] += 1
        return [Path(steps, c, v, n) for steps, (c, v, n) in acc.items() if steps]

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        del state["_core"]
        state["open"] = self.open.copy()  # type: ignore[attr-defined]
        return (_restore, (state,))


def _restore(state: dict[str, Any]) -> PathAccumulator:
    """Unpickle a native accumulator (the Python one's state): native again, or Python without
    the module."""
    if NativePaths is None:
        return with_state(PathAccumulator, state)
    native = with_state(NativePathAccumulator, state)
    native._core = NativePaths(native.conversion, native.churn, native.horizon_ms)
    native.open = OpenPaths(native._core)  # type: ignore[assignment]
    native.open.update(state["open"])
    return native


def new_path_accumulator(config: ProcessingConfig) -> PathAccumulator:
    """The attribution paths for `config.journey.engine`: native when the module has the loop
    (`auto`) or asked for (`native`: a :class:`ConfigError` if it has not), else Python. Same
    state and paths either way."""
    engine = getattr(config.journey, "engine", "auto")  # configs pickled before the setting
    outcomes = config.outcomes
    args = (outcomes.conversion, outcomes.churn, outcomes.null_horizon_s)
    if engine == "native" and NativePaths is None:
        raise _not_built()
    if engine == "python" or NativePaths is None:
        return PathAccumulator(*args)
    return NativePathAccumulator(*args)


def adopt_paths(config: ProcessingConfig, paths: PathAccumulator) -> PathAccumulator:
    """An accumulator restored from a checkpoint, on the engine `config` asks for where the
    module is installed: a Python one goes on natively over the very same state (so the same
    paths). Anything else is returned as it is."""
    engine = getattr(config.journey, "engine", "auto")
    if engine == "python" or NativePaths is None or type(paths) is not PathAccumulator:
        return paths
    return _restore(dict(paths.__dict__))


__all__ = ["NativePathAccumulator", "OpenPaths", "adopt_paths", "new_path_accumulator"]

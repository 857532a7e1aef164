""":class:`~processors.attribution.PathAccumulator` with its per-event loop (`add`) in Rust
(issue 4).

:class:`NativePathAccumulator` is a ``PathAccumulator`` whose ``add`` runs in
``NativePathAdder`` (``native/journeys/src/paths.rs``, package ``journeymap_journeys``) over the
same Python state: ``open`` and ``done`` are the same dicts, lists and tuples, changed by the same
operations in the same order, so the state, the paths and everything that reads ``open``
directly (the chain's detach, attach and forget) are unchanged. It pickles as the Python
accumulator's state and unpickles as a native one, or as the Python one where the module is
not installed. :func:`new_path_accumulator` picks the engine (``journey.engine``, with the rest
of the journeys stage).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from processors.attribution import PathAccumulator
from processors.config import ProcessingConfig
from processors.errors import ConfigError
from processors.events import ResolvedEvent
from processors.native import journeys_class, journeys_not_built

# (optional: the Python accumulator does the same)
NativePathAdder, _IMPORT_ERROR = journeys_class("NativePathAdder")


def _not_built() -> ConfigError:
    return journeys_not_built(_IMPORT_ERROR)


class NativePathAccumulator(PathAccumulator):
    """:class:`PathAccumulator` adding events in Rust (see the module doc)."""

    def __init__(self, conversion: Iterable[str], churn: Iterable[str], null_horizon_s: int
                 ) -> None:
        if NativePathAdder is None:
            raise _not_built()
        super().__init__(conversion, churn, null_horizon_s)
        self._native = NativePathAdder()

    def add(self, events: Iterable[ResolvedEvent]) -> None:
        """:meth:`PathAccumulator.add`."""
        done = self.done
        self._native.add(events, self.open, done["touchpoint"], done["channel"],
                         self.conversion, self.churn, self.horizon_ms)

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        del state["_native"]
        return (_restore, (state,))


def _restore(state: dict[str, Any]) -> PathAccumulator:
    """Unpickle a native accumulator: native again, or Python without the module."""
    if NativePathAdder is None:
        paths = PathAccumulator.__new__(PathAccumulator)
        paths.__dict__.update(state)
        return paths
    native = NativePathAccumulator.__new__(NativePathAccumulator)
    native.__dict__.update(state)
    native._native = NativePathAdder()
    return native


def new_path_accumulator(config: ProcessingConfig) -> PathAccumulator:
    """The attribution paths for `config.journey.engine`: native when the module has the loop
    (`auto`) or asked for (`native`: a :class:`ConfigError` if it has not), else Python. Same
    state and paths either way."""
    engine = getattr(config.journey, "engine", "auto")  # configs pickled before the setting
    outcomes = config.outcomes
    args = (outcomes.conversion, outcomes.churn, outcomes.null_horizon_s)
    if engine == "native" and NativePathAdder is None:
        raise _not_built()
    if engine == "python" or NativePathAdder is None:
        return PathAccumulator(*args)
    return NativePathAccumulator(*args)


def adopt_paths(config: ProcessingConfig, paths: PathAccumulator) -> PathAccumulator:
    """An accumulator restored from a checkpoint, on the engine `config` asks for where the
    module is installed: a Python one goes on natively over the very same state (so the same
    paths). Anything else is returned as it is."""
    engine = getattr(config.journey, "engine", "auto")
    if engine == "python" or NativePathAdder is None or type(paths) is not PathAccumulator:
        return paths
    return _restore(dict(paths.__dict__))


__all__ = ["NativePathAccumulator", "adopt_paths", "new_path_accumulator"]

""":class:`~processors.chain.JourneyChain`'s funnel reorder buffer (``_pending``) as compact
native records (issue 4).

The Python engine keeps ``_pending`` as a list of ``(ts_ms, arrival seq, ResolvedEvent)``,
sorted by each release. Where the funnels and the attribution paths are native, the chain keeps
a ``NativePending`` instead (``native/journeys/src/pending.rs``, package
``journeymap_journeys``): per waiting event a record taken when it enters (time, seq, customer,
segment, touchpoint and channel), sorted and released natively in the same order, and fed to
:meth:`NativeFunnelTracker.update` and :meth:`NativePathAccumulator.add` as a
``NativeReleased`` batch, without reading the released events again. ``entries()`` gives back
the list it stands for (in the same order) and ``replace(entries)`` sets it, for the chain's
rarer work on the list (detach, attach, forget, renames); it pickles as that list, so
checkpoints are the Python engine's.
"""

from __future__ import annotations

from typing import Any

from processors.attribution import PathAccumulator
from processors.attribution_native import NativePathAccumulator
from processors.events import ResolvedEvent
from processors.funnels import FunnelTracker
from processors.funnels_native import NativeFunnelTracker
from processors.native import journeys_class

# (optional: the Python list does the same)
NativePending, _IMPORT_ERROR = journeys_class("NativePending")

Entry = tuple[int, int, ResolvedEvent]


def new_pending(funnels: FunnelTracker, paths: PathAccumulator) -> Any:
    """An empty buffer: native when `funnels` and `paths` are (its release feeds them its
    records), else the Python list."""
    if (NativePending is not None and isinstance(funnels, NativeFunnelTracker)
            and isinstance(paths, NativePathAccumulator)):
        return NativePending()
    return []


def adopt_pending(pending: Any, funnels: FunnelTracker, paths: PathAccumulator) -> Any:
    """`pending` (a list, as checkpoints hold it, or a buffer) on the engine :func:`new_pending`
    picks for `funnels` and `paths`: the same entries in the same order."""
    adopted = new_pending(funnels, paths)
    entries = pending if isinstance(pending, list) else pending.entries()
    if isinstance(adopted, list):
        return entries
    adopted.replace(entries)
    return adopted


__all__ = ["NativePending", "adopt_pending", "new_pending"]

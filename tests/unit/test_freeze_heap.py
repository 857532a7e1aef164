"""The worker freezes its heap before each checkpoint's fork and collects it all now and then
(streams.app._freeze_heap, issue 6): frozen objects are out of the collector's reach, and a
cycle that died among them is freed by the next full collection."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

from streams.app import _freeze_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_frozen_cycles_are_freed_by_the_periodic_full_collection() -> None:
    gc.collect()
    try:
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        runtime = SimpleNamespace(gc_full_at=float("inf"))  # no full collection due
        _freeze_heap(runtime)
        assert gc.get_freeze_count() > 0
        del a, b
        gc.collect()
        assert alive() is not None  # frozen: the collector does not look at it

        runtime.gc_full_at = float("-inf")  # due
        _freeze_heap(runtime)
        assert alive() is None
        assert runtime.gc_full_at > float("-inf") and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

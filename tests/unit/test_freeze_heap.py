"""The heap is frozen after each batch (replay) and before each checkpoint's fork (worker), and
collected all at once now and then (streams.heap.HeapFreezer, issues 4 and 6): frozen objects are
out of the collector's reach, and a cycle that died among them is freed by the next full
collection."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

from streams.app import _freeze_heap
from streams.heap import HeapFreezer


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_frozen_cycles_are_freed_by_the_periodic_full_collection() -> None:
    gc.collect()
    clock = _Clock()
    heap = HeapFreezer(full_every_s=60.0, clock=clock)
    try:
        with heap.batch():
            assert not gc.isenabled()  # the batch runs with the collector paused
            alive = _cycle()
        assert gc.isenabled() and gc.get_freeze_count() > 0
        gc.collect()
        assert alive() is not None  # frozen: the collector does not look at it

        clock.now = 59.0  # not due yet
        with heap.batch():
            pass
        gc.collect()
        assert alive() is not None and heap.n_full == 0

        clock.now = 60.0  # due
        with heap.batch():
            pass
        assert alive() is None
        assert heap.n_full == 1 and heap.full_at == 60.0 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_young_collection_before_the_freeze_frees_what_died() -> None:
    gc.collect()
    heap = HeapFreezer(full_every_s=float("inf"))
    try:
        alive = _cycle()  # died before the freeze: collected, not frozen
        heap.freeze(young=True)
        assert alive() is None and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_nested_batch_leaves_the_collector_to_the_outermost() -> None:
    heap = HeapFreezer(full_every_s=float("inf"))
    try:
        gc.disable()
        with heap.batch():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_the_worker_collects_young_objects_before_freezing_for_the_fork() -> None:
    gc.collect()
    runtime = SimpleNamespace(heap=HeapFreezer(full_every_s=float("inf")))
    try:
        alive = _cycle()
        _freeze_heap(runtime)
        assert alive() is None and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_worker_resolves_an_ingest_batch_paused_and_freezes_what_it_left() -> None:
    from processors.config import IdentityConfig
    from processors.identity import IdentityResolver
    from streams.app import _resolve
    from tests.factories import event

    gc.unfreeze()  # whatever an earlier test left frozen
    gc.collect()
    seen: list[bool] = []
    resolver = IdentityResolver(IdentityConfig(), "salt")
    resolve = resolver.resolve_batch

    def resolve_batch(events):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return resolve(events)

    resolver.resolve_batch = resolve_batch  # type: ignore[method-assign]
    runtime = SimpleNamespace(heap=HeapFreezer(full_every_s=float("inf")), resolver=resolver)
    try:
        assert gc.get_freeze_count() == 0
        result = _resolve(runtime, [event()])  # type: ignore[arg-type]
        assert len(result.resolved) == 1
        assert seen == [False] and gc.isenabled()  # paused during the batch only
        assert gc.get_freeze_count() > 0  # the graph it built is frozen
    finally:
        gc.unfreeze()

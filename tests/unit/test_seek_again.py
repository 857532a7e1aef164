"""A seek back whose hole stays open is repeated by the worker's watchdog (streams.app)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.app import SEEK_AGAIN_AFTER_S, _seek_again


class _Consumer:
    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return self.assigned

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


def _runtime(assigned: set[TP], seeking: dict[TP, tuple[int, float]]) -> Any:
    return SimpleNamespace(app=SimpleNamespace(consumer=_Consumer(assigned)), seeking=seeking)


def test_an_old_open_seek_is_repeated_and_a_fresh_one_is_left_alone() -> None:
    stale, fresh = TP("r", 3), TP("r", 1)
    long_ago = time.monotonic() - SEEK_AGAIN_AFTER_S - 1
    runtime = _runtime({stale, fresh}, {stale: (0, long_ago), fresh: (40, time.monotonic())})
    asyncio.run(_seek_again(runtime))
    assert runtime.app.consumer.seeks == [(stale, 0)]
    assert runtime.seeking[stale][0] == 0 and runtime.seeking[stale][1] > long_ago
    assert runtime.seeking[fresh][0] == 40


def test_a_seek_on_a_partition_no_longer_assigned_is_forgotten() -> None:
    gone = TP("r", 2)
    runtime = _runtime(set(), {gone: (7, time.monotonic() - SEEK_AGAIN_AFTER_S - 1)})
    asyncio.run(_seek_again(runtime))
    assert runtime.app.consumer.seeks == [] and runtime.seeking == {}

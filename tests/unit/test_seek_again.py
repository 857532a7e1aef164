"""A seek back whose hole stays open is repeated by the worker's watchdog (streams.app)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.app import SEEK_AGAIN_AFTER_S, _seek_again, seek
from tests.unit.fake_consumer import Consumer


def _runtime(assigned: set[TP], seeking: dict[TP, tuple[int, float]]) -> Any:
    return SimpleNamespace(app=SimpleNamespace(consumer=Consumer(assigned)), seeking=seeking)


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


def test_the_seek_runs_on_the_consumers_thread_and_reads_from_there_again() -> None:
    # Faust's Consumer.seek ran aiokafka's seek on the caller's thread while the fetcher went
    # through its records on the consumer thread: a KeyError in fetched_records killed workers.
    consumer = Consumer()
    tp = TP("resolved", 3)
    try:
        asyncio.run(seek(consumer, tp, 41))
        assert consumer.seeks == [(tp, 41)]
        assert consumer._thread.seek_threads == [consumer._thread.thread]
        assert consumer._read_offset[tp] == 41
    finally:
        consumer._thread.stop()

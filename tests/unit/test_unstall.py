"""A journey partition with messages left whose state does not move on is sought back to where
its state ends (streams.app._unstall): a consumer position past the state's end otherwise
waits for new input to reveal the hole, which in a quiet stream may never come."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from processors.chain import JourneyChain
from streams.app import STALL_AFTER_S, PartitionState, _unstall
from tests.unit.fake_consumer import Consumer
from tests.unit.test_chain_hold import CONFIG

TP0 = TP("resolved", 0)


def _runtime(offset: int) -> Any:
    part = PartitionState(JourneyChain(CONFIG))
    part.offset = offset
    consumer = Consumer()
    app = SimpleNamespace(consumer=consumer)
    return SimpleNamespace(progress={}, partitions={0: part}, in_flight=set(), app=app,
                           seeks=consumer.seeks)


def test_a_partition_behind_without_progress_is_sought_to_its_states_end() -> None:
    runtime = _runtime(offset=59)
    asyncio.run(_unstall(runtime, TP0, lag=196, done=60))
    assert runtime.seeks == []  # first look: the clock starts
    runtime.progress[TP0] = (60, time.monotonic() - STALL_AFTER_S - 1)
    asyncio.run(_unstall(runtime, TP0, lag=196, done=60))
    assert runtime.seeks == [(TP0, 60)]
    asyncio.run(_unstall(runtime, TP0, lag=196, done=60))  # the clock started again
    assert runtime.seeks == [(TP0, 60)]


def test_progress_no_lag_or_a_batch_in_flight_leave_it_alone() -> None:
    runtime = _runtime(offset=59)
    stalled = time.monotonic() - STALL_AFTER_S - 1
    runtime.progress[TP0] = (50, stalled)
    asyncio.run(_unstall(runtime, TP0, lag=196, done=60))  # it moved on since
    runtime.progress[TP0] = (60, stalled)
    asyncio.run(_unstall(runtime, TP0, lag=0, done=60))  # nothing left to read
    runtime.progress[TP0] = (60, stalled)
    runtime.in_flight.add(0)  # a long batch (ClickHouse down): not a stall
    asyncio.run(_unstall(runtime, TP0, lag=196, done=60))
    assert runtime.seeks == []

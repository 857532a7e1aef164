"""streams.batching.take_ready: a batch is handed over as soon as events are there (not after
`within`), never holds more than `max_`, what arrives while the agent works is the next batch,
and events are acknowledged after their batch. Faust's in-memory agent test context, no broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from streams.batching import take_ready

HOUR_S = 3600.0  # a `within` no test could wait for: only "ready" hands a batch over


def _app() -> faust.App:
    # test_context never contacts the broker
    return faust.App("take-ready-test", broker="kafka://127.0.0.1:1", store="memory://")


def _agent(app: faust.App, max_: int, *, gate: asyncio.Event | None = None,
           weight: Any = None) -> tuple[Any, Any]:
    topic = app.topic("take-ready", value_type=bytes, value_serializer="raw")
    got: list[list[bytes]] = []
    batches: asyncio.Queue[list[Any]] = asyncio.Queue()

    @app.agent(topic)
    async def agent(stream: Any) -> None:
        async for batch in take_ready(stream, max_, HOUR_S, weight=weight):
            got.append([ev.value for ev in batch])
            await batches.put(batch)
            if gate is not None:
                await gate.wait()

    agent.got = got  # type: ignore[attr-defined]
    return agent, batches


async def test_a_batch_is_handed_over_without_waiting_within() -> None:
    agent, batches = _agent(_app(), 100)
    async with agent.test_context() as a:
        for i in range(5):
            await a.put(str(i).encode(), wait=False)
        await asyncio.wait_for(batches.get(), 10)  # take_events would wait an hour
    assert agent.got == [[b"0", b"1", b"2", b"3", b"4"]]


async def test_no_batch_holds_more_than_max_and_none_is_lost() -> None:
    agent, batches = _agent(_app(), 10)
    async with agent.test_context() as a:
        for i in range(25):
            await a.put(str(i).encode(), wait=False)
        n = 0
        while n < 25:
            n += len(await asyncio.wait_for(batches.get(), 10))
    assert all(1 <= len(b) <= 10 for b in agent.got)
    assert [v for b in agent.got for v in b] == [str(i).encode() for i in range(25)]


async def test_what_arrives_while_the_agent_works_is_the_next_batch() -> None:
    gate = asyncio.Event()
    agent, batches = _agent(_app(), 100, gate=gate)
    async with agent.test_context() as a:
        await a.put(b"first", wait=False)
        await asyncio.wait_for(batches.get(), 10)  # the agent is now at work (on the gate)
        for i in range(7):
            await a.put(str(i).encode(), wait=False)
        gate.set()
        await asyncio.wait_for(batches.get(), 10)
    assert agent.got == [[b"first"], [str(i).encode() for i in range(7)]]


async def test_events_are_acked_after_their_batch_not_before() -> None:
    gate = asyncio.Event()
    agent, batches = _agent(_app(), 100, gate=gate)
    async with agent.test_context() as a:
        await a.put(b"a", wait=False)
        await a.put(b"b", wait=False)
        first = await asyncio.wait_for(batches.get(), 10)
        assert not any(ev.message.acked for ev in first)  # the agent is still at work on it
        gate.set()
        await a.put(b"c", wait=False)
        await asyncio.wait_for(batches.get(), 10)
        assert all(ev.message.acked for ev in first)


async def test_with_a_weight_max_bounds_the_weight_of_a_batch() -> None:
    # a message b"k" weighs k (as an envelope weighs the events it holds)
    agent, batches = _agent(_app(), 10, weight=lambda ev: int(ev.value))
    values = [b"4", b"4", b"4", b"1", b"9", b"1", b"1"]
    async with agent.test_context() as a:
        for v in values:
            await a.put(v, wait=False)
        n = 0
        while n < len(values):
            n += len(await asyncio.wait_for(batches.get(), 10))
    # closed as soon as it reaches 10: 4+4+4, then 1+9, then 1+1
    assert agent.got == [[b"4", b"4", b"4"], [b"1", b"9"], [b"1", b"1"]]

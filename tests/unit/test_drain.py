"""streams.drain: Faust's per-message ``wait_first`` without tasks when the callback does not
suspend, and the original behaviour (interruptible by the flow being suspended) when it does."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
from faust.transport.consumer import Consumer
from mode import Service

from streams import drain


class _Service(Service):
    pass


async def test_a_callback_that_does_not_suspend_is_done_inline_without_tasks() -> None:
    svc = _Service()
    flow = asyncio.Event()
    seen: list[str] = []

    async def callback() -> str:
        seen.append("ran")
        return "delivered"

    tasks_before = len(asyncio.all_tasks())
    first, other = callback(), flow.wait()
    result = await drain.wait_first(svc, first, other)
    assert result.done == [first]
    assert result.results == ["delivered"]
    assert not result.stopped
    assert seen == ["ran"]
    assert len(asyncio.all_tasks()) == tasks_before
    with warnings.catch_warnings():  # the event's wait() was closed, not left un-awaited
        warnings.simplefilter("error")
        del other
        gc.collect()


async def test_a_callback_that_suspends_continues_where_it_stopped() -> None:
    svc = _Service()
    gate, flow = asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def callback() -> int:
        steps.append("before")
        await gate.wait()
        steps.append("after")
        await asyncio.sleep(0)
        return 42

    waiting = asyncio.ensure_future(drain.wait_first(svc, callback(), flow.wait()))
    await asyncio.sleep(0.01)
    assert steps == ["before"] and not waiting.done()
    gate.set()
    result = await waiting
    assert steps == ["before", "after"]
    assert result.results == [42] and not result.stopped


async def test_a_suspended_callback_is_interrupted_when_the_flow_is_suspended() -> None:
    svc = _Service()
    gate, suspend_flow = asyncio.Event(), asyncio.Event()
    ended: list[str] = []

    async def callback() -> None:
        try:
            await gate.wait()  # flow control: blocked until the rebalance is over
            ended.append("delivered")
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    waiting = asyncio.ensure_future(drain.wait_first(svc, callback(), suspend_flow.wait()))
    await asyncio.sleep(0.01)
    suspend_flow.set()
    result = await waiting
    assert len(result.done) == 1 and result.done[0] is not None
    await asyncio.sleep(0.01)  # the callback's task is cancelled, as by the original
    assert ended == ["cancelled"]


async def test_errors_of_the_callback_reach_the_caller_before_and_after_a_suspension() -> None:
    svc = _Service()

    async def fails_at_once() -> None:
        raise ValueError("bad message")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    with pytest.raises(ValueError, match="bad message"):
        await drain.wait_first(svc, fails_at_once(), asyncio.Event().wait())
    with pytest.raises(KeyError, match="later"):
        await drain.wait_first(svc, fails_later(), asyncio.Event().wait())


async def test_a_stopped_service_takes_the_original_path() -> None:
    svc = _Service()
    svc._stopped.set()
    ran: list[bool] = []

    async def callback() -> None:
        ran.append(True)

    result = await drain.wait_first(svc, callback(), asyncio.Event().wait())
    assert result.stopped and result.done == []


def test_install_patches_faust_consumers() -> None:
    original = Consumer.wait_first
    try:
        drain.install()
        drain.install()
        assert Consumer.wait_first is drain.wait_first
    finally:
        Consumer.wait_first = original  # type: ignore[method-assign]

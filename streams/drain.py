"""Faust's consumer hands each fetched message to the streams without four tasks per message.

Faust's fetcher (``faust.transport.consumer.Consumer._drain_messages``) delivers every message
as ``await self.wait_first(callback(message), self.suspend_flow.wait())``: mode's
``Service.wait_first`` wraps the callback and three events (flow suspended, stopped, crashed)
in four tasks, waits for the first, and cancels the rest, so that a rebalance can interrupt a
callback blocked on flow control. Nearly always the callback blocks on nothing (it decodes the
message and puts it on the stream's queue), and those tasks were a third of a Faust agent's
event loop: a pass-through agent read 2-4k messages/s where aiokafka alone reads 300k
(bench/bench_passthrough.py, bench/RESULTS.md "Streaming worker, session 6", issue 6).

:func:`install` gives the consumer a ``wait_first`` that first runs the callback's coroutine up
to its first suspension, in the caller's task. A callback that finishes there (the common
case) is done, exactly as if its task had won; one that suspends (flow control, a full buffer)
continues from where it stopped under the original ``wait_first``, with the same interruption
by the flow being suspended, the consumer stopping or crashing. Nothing else changes.

:func:`fetch_sizes` sets the two fetch settings Faust does not expose for an app's consumer:
Kafka's ``fetch.min.bytes`` (Faust leaves aiokafka's 1 byte) and ``fetch.max.wait.ms`` (Faust
fixes 1500 ms). With one byte, a consumer that keeps up asks the broker again as soon as a
message is there, so a live stream of a few thousand events a second comes in fetches of a few
messages, each paid for in full in the consumer thread (issue 6); a larger minimum with a short
wait gathers each fetch for at most that wait.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from mode.services import WaitResults

_ORIGINAL = Consumer.wait_first
_CREATE_WORKER_CONSUMER = AIOKafkaConsumerThread._create_worker_consumer
_FETCH = "_journeymap_fetch"  # the app attribute fetch_sizes sets


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, Any, Any]:
    """The rest of `coro`, which has already yielded `pending` to its (our) caller."""
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in by the task (cancellation): pass it on
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _finish(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    return await _resume(coro, pending)


async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> WaitResults:
    """``Service.wait_first``, with the first argument run inline while it does not suspend."""
    first = coros[0] if coros else None
    if (not isinstance(first, types.CoroutineType) or self._stopped.is_set()
            or self._crashed.is_set()):
        return await _ORIGINAL(self, *coros, timeout=timeout)
    try:
        pending = first.send(None)
    except StopIteration as stop:
        _close(coros[1:])
        return WaitResults([first], [stop.value], False)
    except BaseException:
        _close(coros[1:])
        raise
    return await _ORIGINAL(self, _finish(first, pending), *coros[1:], timeout=timeout)


def _close(coros: tuple[Any, ...]) -> None:
    """The other arguments' coroutines (an event's wait()), never started: nothing to cancel."""
    for coro in coros:
        if isinstance(coro, types.CoroutineType):
            coro.close()


def fetch_sizes(app: Any, min_bytes: int, max_wait_ms: int) -> None:
    """The fetch settings of `app`'s consumer, set when Faust builds it (call before it starts).

    Patches Faust's aiokafka consumer thread (idempotent); apps without fetch sizes keep
    Faust's own."""
    setattr(app, _FETCH, (min_bytes, max_wait_ms))
    AIOKafkaConsumerThread._create_worker_consumer = (  # type: ignore[method-assign]
        _create_worker_consumer)


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _CREATE_WORKER_CONSUMER(self, transport)
    sizes = getattr(self.app, _FETCH, None)
    if sizes is not None:
        # aiokafka's AIOKafkaConsumer keeps its arguments until start() builds its Fetcher
        consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = sizes
    return consumer


def install() -> None:
    """Patch Faust's consumer class (idempotent; every consumer of the process)."""
    Consumer.wait_first = wait_first  # type: ignore[method-assign]

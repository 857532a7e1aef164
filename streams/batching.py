"""Batches of whatever has arrived: a stream's events handed over as soon as the agent is free.

Faust's ``Stream.take_events(max_, within)`` returns a batch when ``max_`` events are buffered
or when ``within`` has passed since the previous batch was handed over, whichever is first:
below ``max_`` events per ``within`` (every live stream here) each batch waits the whole
``within`` (0.5 s by default) even when its first event had arrived long before. Two agents in
a row (ingest, journey) paid it twice on every event (issue 6, bench/RESULTS.md "Streaming
worker, session 7").

:func:`take_ready` batches the way a Kafka consumer's ``poll`` does: as soon as at least one
event is buffered, it lets the consumer put in what it has already fetched (it yields to the
event loop until the buffer stops growing), then hands the batch over, up to ``max_`` events.
Batches grow with the load by themselves: what arrives while the agent works on one batch is
the next. ``within`` only bounds how long it keeps gathering a batch that keeps growing, and how
often it looks up while the stream is idle. Acknowledgement is Faust's: every event of a batch
is acked after the agent is done with it (after the ``async for`` body), as in
``take_events``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from mode.utils.aiter import aiter
from mode.utils.futures import notify


async def take_ready(stream: Any, max_: int, within: float,
                     weight: Callable[[Any], int] | None = None) -> AsyncIterator[list[Any]]:
    """The events of `stream` in batches of at most `max_`, each as soon as it is available.

    Built like Faust's ``Stream.take_events`` (a processor fills the buffer while the stream is
    drained passively; the agent's acks are disabled and each event is acked after its batch),
    except for when a batch is handed over (see the module docstring). With `weight`, `max_`
    bounds the sum of ``weight(event)`` instead of the number of events (a message holding
    many events, streams.envelope): a batch is closed once it reaches `max_`, so it holds at
    most `max_` plus one message's weight less one.
    """
    if max_ < 1 or within <= 0:
        raise ValueError("take_ready needs max_ >= 1 and within > 0")
    events: list[Any] = []
    size = 0  # the buffer's weight (its length without `weight`)
    ready = asyncio.Event()  # something is buffered
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    enable_acks = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming, size
        try:
            if consuming is not None:  # the agent is at work on a batch: the next waits
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_ready found no current event")
            events.append(event)
            size += 1 if weight is None else weight(event)
            ready.set()
            if size >= max_:  # never more than max_ in a batch
                consumed.clear()
                await stream.wait(consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take_ready buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acked here, after the agent's work on the batch
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))  # as take_events does
    loop = asyncio.get_running_loop()
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(ready, timeout=within)
            if not events:
                continue
            # What the consumer has fetched already goes in first: the processor adds it without
            # waiting, so the buffer stops growing within a few turns of the loop.
            until = loop.time() + within
            n = 0
            while n != len(events) and size < max_ and loop.time() < until:
                n = len(events)
                await asyncio.sleep(0)
            consuming = loop.create_future()
            batch = list(events)
            try:
                yield batch
            finally:
                events.clear()
                size = 0
                ready.clear()
                for event in batch:
                    await stream.ack(event)
                notify(consuming)
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)

"""The raw topic's messages in batches, past Faust's per-message stream (issue 6).

Faust hands every fetched message to its streams through the conductor's compiled handler: the
topic's schema decodes key and value (raw bytes here), an event is built, the producer buffer
and the queue's pressure are checked, the event goes on the stream's queue, and the stream
hands it to the agent (`streams.batching.take_ready`'s processor) and acknowledges it, one by
one. The worker's raw topic carries one message per event, so every event paid for all of it:
~28 % of the worker's main thread in a py-spy profile, where the journey agent, whose
messages each hold many events (`streams.envelope`), pays it once per envelope
(bench/RESULTS.md, "Streaming worker, session 22").

`RawBatches` takes over the handler of the raw topic's partitions and keeps only what Faust's
does that matters here. For each message it waits while flow control is suspended (a
rebalance), tracks the message as unacknowledged (a rebalance waits for it, as
`Consumer.wait_empty` does for stream messages) and appends it to a buffer. It stops fetching a
partition while `max_buffered` messages wait (as a stream queue's pressure does) and fetches
it again once the buffer is down to half. It drops what is buffered when flow resumes after a
rebalance, as Faust clears its stream queues (the consumer then reads from the committed
offsets). `batches()` yields the buffer's messages, at most `max_` at a time, as soon as there
are any (for the same reasons as `take_ready`); `ack` acknowledges a batch once its work is
done, and Faust commits acknowledged offsets as before.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any

from faust.types import TP


class RawBatches:
    """Batches of the messages of `topic` (a Faust topic of `app`), without an agent."""

    def __init__(self, app: Any, topic: Any, max_: int, within: float,
                 max_buffered: int) -> None:
        if max_ < 1 or within <= 0 or max_buffered < max_:
            raise ValueError("RawBatches needs max_ >= 1, within > 0 and max_buffered >= max_")
        self.app = app
        self.max_ = max_
        self.within = within
        self.max_buffered = max_buffered
        self.buffer: list[Any] = []
        self.ready = asyncio.Event()  # something is buffered
        self.paused: set[Any] = set()  # partitions whose fetching waits for the buffer
        names = set(topic.topics)
        conductor = app.topics
        build = conductor._build_handler

        def build_handler(tp: Any, channels: Any) -> Any:
            if tp.topic not in names:
                return build(tp, channels)
            # Faust's own TP: the consumer's partition sets hold nothing else (a message's
            # `tp` can be aiokafka's TopicPartition, equal but refused by Faust's checks)
            return functools.partial(self.on_message, TP(tp.topic, tp.partition))

        conductor._build_handler = build_handler
        conductor.add(topic)  # subscribed like an agent's topic, acknowledged like one
        app.flow_control.manage_queue(self)  # cleared when flow resumes after a rebalance

    async def on_message(self, tp: TP, message: Any) -> None:
        """The handler of partition `tp`'s messages (what the conductor calls for each)."""
        app = self.app
        await app.flow_control.acquire()
        app.consumer.track_message(message)
        self.buffer.append(message)
        self.ready.set()
        if len(self.buffer) >= self.max_buffered and tp not in self.paused:
            self.paused.add(tp)
            app.consumer.on_buffer_full(tp)

    def clear(self) -> None:
        """Drop what is buffered (flow control's call when a rebalance is over)."""
        self.buffer.clear()
        self.ready.clear()
        self._resume_fetching()

    def _resume_fetching(self) -> None:
        for tp in self.paused:
            self.app.consumer.on_buffer_drop(tp)
        self.paused.clear()

    async def batches(self) -> AsyncIterator[list[Any]]:
        """What is buffered, at most `max_` messages a batch, until the app stops."""
        loop = asyncio.get_running_loop()
        buffer = self.buffer
        while not self.app.should_stop:
            try:
                await asyncio.wait_for(self.ready.wait(), timeout=self.within)
            except TimeoutError:
                continue
            # What the consumer has fetched already goes in first (see take_ready).
            until = loop.time() + self.within
            n = -1
            while n != len(buffer) and len(buffer) < self.max_ and loop.time() < until:
                n = len(buffer)
                await asyncio.sleep(0)
            batch = buffer[:self.max_]
            del buffer[:self.max_]
            if not buffer:
                self.ready.clear()
            if self.paused and len(buffer) <= self.max_buffered // 2:
                self._resume_fetching()
            if batch:
                yield batch

    def ack(self, batch: Sequence[Any]) -> None:
        """Acknowledge a batch's messages: their offsets can be committed."""
        ack = self.app.consumer.ack
        for message in batch:
            ack(message)

"""streams.raw_batches: the raw topic's messages in batches, with Faust's flow control, tracking,
back-pressure and acknowledgement kept (the worker's path end to end: tests/e2e)."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from streams.raw_batches import RawBatches

RAW = TP("touchpoints.raw", 0)
_AiokafkaTP = namedtuple("_AiokafkaTP", ["topic", "partition"])  # another (topic, partition) tuple
OTHER = TP("touchpoints.resolved", 0)


@dataclass
class Message:
    tp: TP
    offset: int


@dataclass
class Consumer:
    """What RawBatches asks of Faust's consumer, recorded."""

    tracked: list[int] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    full: list[TP] = field(default_factory=list)
    dropped: list[TP] = field(default_factory=list)

    def track_message(self, message: Message) -> None:
        self.tracked.append(message.offset)

    def ack(self, message: Message) -> bool:
        self.acked.append(message.offset)
        return True

    def on_buffer_full(self, tp: TP) -> None:
        assert type(tp) is TP  # Faust's partition sets take nothing else
        self.full.append(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        assert type(tp) is TP
        self.dropped.append(tp)


class Conductor:
    def __init__(self) -> None:
        self.added: list[Any] = []

    def _build_handler(self, tp: TP, channels: Any) -> Any:
        return ("faust's handler", tp)

    def add(self, topic: Any) -> None:
        self.added.append(topic)


@dataclass
class Topic:
    topics: tuple[str, ...] = ("touchpoints.raw",)


class App:
    def __init__(self) -> None:
        self.topics = Conductor()
        self.consumer = Consumer()
        self.flow_control = FlowControlEvent(initially_suspended=False)
        self.should_stop = False


def _raw(max_: int = 3, max_buffered: int = 4) -> tuple[App, RawBatches]:
    app = App()
    return app, RawBatches(app, Topic(), max_, 0.05, max_buffered)


def _feed(raw: RawBatches, offsets: range, tp: TP = RAW) -> None:
    async def feed() -> None:
        for offset in offsets:
            # (the message's own tp as aiokafka gives it; the handler passes Faust's)
            await raw.on_message(tp, Message(_AiokafkaTP(*tp), offset))

    asyncio.run(feed())


def _take(raw: RawBatches, n_batches: int) -> list[list[int]]:
    async def take() -> list[list[int]]:
        out: list[list[int]] = []
        async for batch in raw.batches():
            out.append([m.offset for m in batch])
            if len(out) == n_batches:
                break
        return out

    return asyncio.run(take())


def test_the_raw_topic_gets_the_buffering_handler_and_other_topics_faust_s() -> None:
    app, raw = _raw()
    topic = app.topics.added[0]
    assert topic.topics == ("touchpoints.raw",)
    handler = app.topics._build_handler(RAW, set())
    assert handler.func == raw.on_message and handler.args == (RAW,)
    assert type(handler.args[0]) is TP
    assert app.topics._build_handler(OTHER, set()) == ("faust's handler", OTHER)
    # the partition as Faust's TP even when the conductor holds another equal tuple
    aiokafka_like = app.topics._build_handler(_AiokafkaTP("touchpoints.raw", 0), set())
    assert type(aiokafka_like.args[0]) is TP and aiokafka_like.args[0] == RAW


def test_batches_keep_arrival_order_at_most_max_each_and_ack_each_message() -> None:
    app, raw = _raw(max_=3, max_buffered=10)
    _feed(raw, range(7))
    assert app.consumer.tracked == list(range(7))
    batches = _take(raw, 3)
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]
    assert not raw.buffer and not raw.ready.is_set()
    raw.ack([Message(RAW, o) for o in batches[0]])
    assert app.consumer.acked == [0, 1, 2]


def test_a_full_buffer_pauses_the_partition_once_and_resumes_it_at_half() -> None:
    app, raw = _raw(max_=2, max_buffered=4)
    _feed(raw, range(6))
    assert app.consumer.full == [RAW]  # paused at the fourth message, once
    assert _take(raw, 1) == [[0, 1]]
    assert app.consumer.dropped == []  # 4 left: above half
    assert _take(raw, 1) == [[2, 3]]
    assert app.consumer.dropped == [RAW]  # 2 left: fetching again
    assert raw.paused == set()


def test_messages_wait_while_flow_is_suspended_and_a_resume_drops_the_buffer() -> None:
    app, raw = _raw(max_=5, max_buffered=8)
    _feed(raw, range(2))

    async def during_rebalance() -> list[int]:
        app.flow_control.suspend()
        late = asyncio.ensure_future(raw.on_message(RAW, Message(RAW, 2)))
        await asyncio.sleep(0.01)
        assert not late.done()  # waits for the rebalance to end
        app.flow_control.resume()  # Faust clears its stream queues; RawBatches its buffer
        await late
        return [m.offset for m in raw.buffer]

    # the two buffered before the rebalance are dropped (re-read from the committed offsets);
    # the one held by flow control arrives after it
    assert asyncio.run(during_rebalance()) == [2]


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="max_buffered >= max_"):
        RawBatches(App(), Topic(), 10, 0.05, 5)
    with pytest.raises(ValueError, match="within > 0"):
        RawBatches(App(), Topic(), 10, 0.0, 50)

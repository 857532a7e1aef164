"""kafka.consumer_fetch_min_bytes / consumer_fetch_max_wait_ms reach the fetcher of a worker's
Kafka consumer (Faust fixes fetch.max.wait.ms and leaves fetch.min.bytes at 1; streams.drain sets
them), started against the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams import drain
from streams.app import create_app
from streams.settings import Settings


@pytest.fixture
def installed() -> Iterator[None]:
    originals = Consumer.wait_first, AIOKafkaConsumerThread._create_worker_consumer
    drain.install()
    yield
    Consumer.wait_first, AIOKafkaConsumerThread._create_worker_consumer = originals  # type: ignore[method-assign]


async def fetcher_of(settings: Settings) -> tuple[int, int]:
    app = create_app(settings)
    consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
    await consumer.start()
    try:
        return consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms
    finally:
        await consumer.stop()


async def test_the_worker_consumer_fetches_with_the_kafka_settings(
    installed: None, jm_settings: Settings, kafka_bootstrap: str
) -> None:
    kafka = jm_settings.kafka.model_copy(update={
        "bootstrap_servers": kafka_bootstrap,
        "consumer_fetch_min_bytes": 65_536, "consumer_fetch_max_wait_ms": 40})
    assert await fetcher_of(jm_settings.model_copy(update={"kafka": kafka})) == (65_536, 40)
    # the defaults are Faust's own: one byte, 1.5 s
    default = kafka.model_copy(update={"consumer_fetch_min_bytes": 1,
                                       "consumer_fetch_max_wait_ms": 1500})
    assert await fetcher_of(jm_settings.model_copy(update={"kafka": default})) == (1, 1500)

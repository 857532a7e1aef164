"""kafka.consumer_fetch_min_bytes / consumer_fetch_max_wait_ms reach the fetcher of a worker's
Kafka consumer (Faust fixes fetch.max.wait.ms and leaves fetch.min.bytes at 1; streams.drain sets
them when the app is created), started against the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import faust
import pytest
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams.app import create_app
from streams.settings import Settings


@pytest.fixture
def restored() -> Iterator[None]:
    original = AIOKafkaConsumerThread._create_worker_consumer
    yield
    AIOKafkaConsumerThread._create_worker_consumer = original  # type: ignore[method-assign]


async def fetcher_of(app: faust.App) -> tuple[int, int]:
    consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
    await consumer.start()
    try:
        return consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms
    finally:
        await consumer.stop()


async def test_the_worker_consumer_fetches_with_the_kafka_settings(
    restored: None, jm_settings: Settings, kafka_bootstrap: str
) -> None:
    kafka = jm_settings.kafka.model_copy(update={
        "bootstrap_servers": kafka_bootstrap,
        "consumer_fetch_min_bytes": 65_536, "consumer_fetch_max_wait_ms": 40})
    assert await fetcher_of(create_app(jm_settings.model_copy(update={"kafka": kafka}))
                            ) == (65_536, 40)
    # an app of the same process built without them keeps Faust's own: one byte, 1.5 s
    plain = faust.App("plain", broker=f"kafka://{kafka_bootstrap}", autodiscover=False)
    assert await fetcher_of(plain) == (1, 1500)

"""The worker's output producer (streams.delivery) against a real broker: deliver() returns
once the broker holds every message, and keys land where aiokafka (Faust) would put them.

Needs Kafka (`journeymap services up`); uses its own topic and deletes it at the end.
"""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, KafkaError, TopicPartition

from streams.delivery import OutputProducer, ProducerFatalError
from streams.envelope import H_EVENTS, group, unpack
from tests.integration import test_producer as producer_tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
N_PARTITIONS = 3  # the `topic` fixture's
# the event producer's tests' fixtures: a broker that answers, a fresh 3-partition topic
bootstrap, topic, consume = producer_tests.bootstrap, producer_tests.topic, producer_tests.consume


def _end_offsets(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    try:
        total = 0
        for p in range(N_PARTITIONS):
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high
        return total
    finally:
        consumer.close()


def test_deliver_returns_when_the_broker_has_everything(bootstrap: str, topic: str) -> None:
    producer = OutputProducer(bootstrap, linger_ms=200)  # a long linger: nothing sent by itself
    n = 5_000
    for i in range(n):
        producer.send(topic, f"customer-{i % 97}".encode(), b"x" * 50)
    producer.deliver()
    # Read right after deliver(), without waiting: the broker already has all of them.
    assert _end_offsets(bootstrap, topic) == n
    assert producer.n_delivered == n and producer.n_retried == 0
    assert producer.close() == 0


def test_keys_land_on_the_partition_aiokafka_would_choose(bootstrap: str, topic: str) -> None:
    producer = OutputProducer(bootstrap)
    keys = [f"customer-{i}".encode() for i in range(200)]
    for key in keys:
        producer.send(topic, key, key)
    producer.deliver()
    partitions = list(range(N_PARTITIONS))
    for key, _value, partition in consume(bootstrap, topic, len(keys)):
        assert key is not None
        assert partition == DefaultPartitioner()(key, partitions, partitions), key


def test_envelopes_land_on_the_partition_their_keys_would(bootstrap: str, topic: str) -> None:
    """The ingest agent's envelopes (streams.envelope): sent keyless to an explicit partition,
    each holds only events whose keys go there, in order, and arrives whole."""
    producer = OutputProducer(bootstrap)
    items = [(f"customer-{i % 37}".encode(), f"event-{i}".encode(), None) for i in range(300)]
    sent = list(group(items, N_PARTITIONS))
    for p, value, _ in sent:
        producer.send(topic, None, value, [("jm-type", H_EVENTS)], None, p)
    producer.deliver()
    partitions = list(range(N_PARTITIONS))
    got = consume(bootstrap, topic, len(sent))
    for key, value, partition in got:
        assert key is None
        for event_key, _ in unpack(value):
            assert partition == DefaultPartitioner()(event_key, partitions, partitions)
    assert sorted(e for _, value, _ in got for e in unpack(value)) == \
        sorted((k, v) for k, v, _ in items)


def test_headers_and_timestamps_arrive_as_given(bootstrap: str, topic: str) -> None:
    producer = OutputProducer(bootstrap)
    producer.send(topic, b"W", b"expect", [("jm-type", b"expect")], 1_700_000_000_123)
    producer.send(topic, b"W", b"event", None, None)
    producer.deliver()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{topic}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = []
    try:
        while len(got) < 2:
            msg = consumer.poll(30)
            assert msg is not None and msg.error() is None
            got.append((msg.value(), msg.headers(), msg.timestamp()[1]))
    finally:
        consumer.close()
    assert got[0] == (b"expect", [("jm-type", b"expect")], 1_700_000_000_123)
    assert got[1][0] == b"event" and got[1][1] is None and got[1][2] > 1_700_000_000_123


def test_a_fatal_producer_error_raises_instead_of_retrying_for_ever(bootstrap: str,
                                                                    topic: str) -> None:
    # librdkafka reports a fatal error (e.g. an idempotent producer's lost sequence) through
    # the delivery callback; no broker can be made to produce one on demand, so it is handed in.
    producer = OutputProducer(bootstrap)
    producer.send(topic, b"k", b"v")
    producer.deliver()
    producer._on_delivery(KafkaError(KafkaError._FATAL, "sequence lost", fatal=True), None)
    with pytest.raises(ProducerFatalError, match="sequence lost"):
        producer.deliver()

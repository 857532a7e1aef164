"""The worker's high-volume outputs on confluent-kafka: the ingest agent's messages to
touchpoints.resolved and identity.merges, the journey agent's scores, alerts and late events.

Faust's producer (aiokafka) costs pure-Python work per message on the worker's event loop: a
batch of a few thousand released events meant a few thousand ``Topic.send`` calls, and after a
backlog the loop stalled in them for seconds (bench/RESULTS.md, issue 6). librdkafka queues a
message in one C call and does the rest on its own threads.

Delivery is at-least-once, as before: :meth:`OutputProducer.deliver` returns only once every
message handed over since the last call is acknowledged by the broker (``acks=all``,
idempotence on), re-producing any that failed; the ingest agent acknowledges its raw batch,
and the journey agent checkpoints a partition, only after that. One producer keeps the order of
what it is given per partition; the ingest agent has its own (see streams.app on the order of
the merge messages), and the journey agent's forwards and transfers stay on Faust's producer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

log = logging.getLogger("journeymap.worker")

Headers = list[tuple[str, bytes]] | None
# topic, key, value, headers, timestamp (ms; None = now), partition (None: the key's)
Outgoing = tuple[str, bytes | None, bytes, Headers, int | None, int | None]


def produce(producer: Producer, message: Outgoing, on_delivery: Any) -> None:
    """Queue one message; while the local queue is full, serve delivery reports to make room."""
    topic, key, value, headers, timestamp_ms, partition = message
    extra: dict[str, Any] = {}
    if headers:
        extra["headers"] = headers
    if timestamp_ms:
        extra["timestamp"] = timestamp_ms
    if partition is not None:
        extra["partition"] = partition
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra)
            return
        except BufferError:
            producer.poll(0.05)


class ProducerFatalError(RuntimeError):
    """librdkafka reported a fatal error: this producer cannot deliver anything any more."""


class OutputProducer:
    """Produce to any topic; :meth:`deliver` waits until everything produced is acknowledged.

    Keys are partitioned with murmur2 like Java clients and aiokafka, so a customer's scores
    land on the partition they always did. Not thread-safe: one caller at a time (the journey
    agent awaits :meth:`deliver` before it produces the next batch).
    """

    def __init__(self, bootstrap_servers: str, *, linger_ms: int = 5,
                 config: Mapping[str, Any] | None = None) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": "journeymap-worker-outputs",
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": linger_ms,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 1_000_000,
        }
        conf.update(config or {})
        self._producer = Producer(conf)
        self._unconfirmed = 0
        self._failed: list[Outgoing] = []
        self._fatal: KafkaError | None = None
        self.n_delivered = 0
        self.n_retried = 0

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = None,
             timestamp_ms: int | None = None, partition: int | None = None) -> None:
        """Queue one message: to `partition` when given, else to its key's (murmur2)."""
        self._unconfirmed += 1
        produce(self._producer, (topic, key, value, headers, timestamp_ms, partition),
                self._on_delivery)
        self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self._unconfirmed -= 1
        if err is None:
            self.n_delivered += 1
            return
        if err.fatal():  # e.g. the idempotent producer lost its sequence: nothing more gets out
            self._fatal = err
            return
        _kind, timestamp_ms = msg.timestamp()
        partition = msg.partition()  # the one asked for, or the key's (the same again)
        self._failed.append((msg.topic() or "", msg.key(), msg.value() or b"",
                             msg.headers() or None, timestamp_ms or None,
                             partition if partition is not None and partition >= 0 else None))
        log.warning("output to %s not delivered (%s); producing it again", msg.topic(), err)

    def deliver(self, retry_every_s: float = 1.0) -> None:
        """Block until every message sent so far is acknowledged; failed ones are re-produced.

        Waits as long as the broker is away (the batch is then not checkpointed, like a batch
        whose rows ClickHouse did not take). Call it in a thread from async code. A fatal
        producer error raises :class:`ProducerFatalError` instead of retrying for ever: the
        worker then exits and resumes from its checkpoints when restarted.
        """
        while True:
            self._producer.flush(retry_every_s)
            if self._fatal is not None:
                raise ProducerFatalError(f"Kafka producer failed for good: {self._fatal}")
            failed, self._failed = self._failed, []
            for message in failed:
                self.n_retried += 1
                self.send(*message)
            if not failed and self._unconfirmed <= 0:
                return
            if failed:
                time.sleep(min(retry_every_s, 0.2))

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush with a bounded wait; returns how many messages are still queued."""
        return int(self._producer.flush(timeout_s))

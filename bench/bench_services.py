"""Throughput of the local Kafka that `journeymap services up` runs: confluent-kafka vs aiokafka.

    journeymap services up --only kafka
    python bench/bench_services.py [--messages 100000] [--size 200]

Figure: confluent-kafka (what producers and `simulate --to-kafka` use) produce and consume rates.
Baseline, same run, same broker, same messages: aiokafka (what Faust workers use). The ratio says
how much of the broker's speed the worker's client gets; both talk to one local broker.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.settings import load_settings


def _topic(admin: AdminClient) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    for future in admin.create_topics([NewTopic(name, 1, 1)]).values():
        future.result(20)
    return name


def confluent_rates(bootstrap: str, topic: str, payloads: list[bytes]) -> tuple[float, float]:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000}
    )
    start = time.perf_counter()
    for i, value in enumerate(payloads):
        producer.produce(topic, value=value, key=b"%d" % (i % 1000))
        producer.poll(0)
    producer.flush(60)
    produce_s = time.perf_counter() - start

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    n, start, deadline = 0, time.perf_counter(), time.monotonic() + 120
    while n < len(payloads) and time.monotonic() < deadline:
        n += sum(1 for m in consumer.consume(10_000, 1.0) if m.error() is None)
    consume_s = time.perf_counter() - start
    consumer.close()
    assert n == len(payloads), f"consumed {n} of {len(payloads)}"
    return len(payloads) / produce_s, n / consume_s


async def aiokafka_rates(bootstrap: str, topic: str, payloads: list[bytes]) -> tuple[float, float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    start = time.perf_counter()
    futures = [
        await producer.send(topic, value, key=b"%d" % (i % 1000))
        for i, value in enumerate(payloads)
    ]
    await asyncio.gather(*futures)
    produce_s = time.perf_counter() - start
    await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=topic, auto_offset_reset="earliest"
    )
    await consumer.start()
    n, start = 0, time.perf_counter()
    async with asyncio.timeout(120):
        while n < len(payloads):
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            n += sum(len(records) for records in batches.values())
    consume_s = time.perf_counter() - start
    await consumer.stop()
    return len(payloads) / produce_s, n / consume_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=200)
    args = parser.parse_args()
    bootstrap = load_settings().kafka.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    payloads = [(b"x" * args.size)[:-8] + b"%08d" % i for i in range(args.messages)]

    topics = [_topic(admin), _topic(admin)]
    try:
        ck_prod, ck_cons = confluent_rates(bootstrap, topics[0], payloads)
        ai_prod, ai_cons = asyncio.run(aiokafka_rates(bootstrap, topics[1], payloads))
    finally:
        for future in admin.delete_topics(topics).values():
            future.result(20)
    print(f"{args.messages} messages of {args.size} B, one partition, local broker {bootstrap}")
    print(f"confluent-kafka produce {ck_prod:12,.0f} msg/s   consume {ck_cons:12,.0f} msg/s")
    print(f"aiokafka (baseline)     {ai_prod:12,.0f} msg/s   consume {ai_cons:12,.0f} msg/s")
    print(
        f"ratio confluent/aiokafka  produce {ck_prod / ai_prod:.2f}"
        f"   consume {ck_cons / ai_cons:.2f}"
    )


if __name__ == "__main__":
    main()

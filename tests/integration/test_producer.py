"""The event producer against a real broker: everything sent comes back, keyed and in order.

Needs Kafka at `kafka.bootstrap_servers` (start it with `journeymap services up`). Without a
broker these tests fail with that instruction; they do not skip. Each test uses its own topic
and consumer group and deletes the topic at the end.
"""

from __future__ import annotations

import gzip
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from processors.errors import ServiceUnavailable
from simulator.model import SimConfig, simulate
from simulator.truth import load_truth
from simulator.writer import write_simulation
from streams.cli import cli
from streams.producer import EventProducer, key_of
from streams.settings import load_settings

pytestmark = pytest.mark.integration
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def bootstrap() -> str:
    servers = load_settings().kafka.bootstrap_servers
    try:
        AdminClient({"bootstrap.servers": servers}).list_topics(timeout=10)
    except KafkaException as exc:
        pytest.fail(
            f"no Kafka broker answers at {servers} ({exc}); start one with "
            "`journeymap services up` (or set JOURNEYMAP_KAFKA__BOOTSTRAP_SERVERS)"
        )
    return servers


@pytest.fixture
def topic(bootstrap: str) -> Iterator[str]:
    name = f"test.producer.{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])[name].result(
        timeout=30
    )
    yield name
    admin.delete_topics([name])[name].result(timeout=30)


def consume(bootstrap: str, topic: str, n: int) -> list[tuple[bytes | None, bytes, int]]:
    """(key, value, partition) of the first `n` messages, in the order each partition has them."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[tuple[bytes | None, bytes, int]] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(out) < n and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                out.append((msg.key(), msg.value(), msg.partition()))
    finally:
        consumer.close()
    assert len(out) == n, f"consumed {len(out)} of {n} messages within {TIMEOUT_S} s"
    return out


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_everything_produced_comes_back_keyed_and_in_order(
    bootstrap: str, topic: str, compression: str
) -> None:
    lines = simulate(SimConfig(customers=300, seed=4)).lines
    with EventProducer(bootstrap, topic, compression=compression) as producer:  # type: ignore[arg-type]
        assert producer.check()
        producer.send_many(lines)
    stats = producer.stats
    assert stats.ok, stats
    assert stats.n_sent == stats.n_delivered == len(lines)

    got = consume(bootstrap, topic, len(lines))
    assert Counter(v for _, v, _ in got) == Counter(lines)
    assert all(k == key_of(v) for k, v, _ in got)
    # one key lands on one partition, and its messages keep the order they were sent in
    sent_by_key: dict[bytes | None, list[bytes]] = defaultdict(list)
    for line in lines:
        sent_by_key[key_of(line)].append(line)
    got_by_key: dict[bytes | None, list[bytes]] = defaultdict(list)
    partitions: dict[bytes | None, set[int]] = defaultdict(set)
    for k, v, p in got:
        got_by_key[k].append(v)
        partitions[k].add(p)
    for k, values in sent_by_key.items():
        if k is not None:
            assert got_by_key[k] == values
            assert len(partitions[k]) == 1


def test_the_rate_limit_holds(bootstrap: str, topic: str) -> None:
    lines = simulate(SimConfig(customers=60, seed=8)).lines[:500]
    started = time.monotonic()
    with EventProducer(bootstrap, topic, rate_per_s=1000) as producer:
        producer.send_many(lines)
    elapsed = time.monotonic() - started
    assert producer.stats.ok
    assert elapsed >= 0.4  # 500 events at 1000/s, minus the first burst of 100
    assert len(consume(bootstrap, topic, len(lines))) == len(lines)


def test_simulate_command_writes_files_and_produces_the_same_stream(
    bootstrap: str, topic: str, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    result = CliRunner().invoke(
        cli,
        ["simulate", "--customers", "80", "--seed", "3", "--out", str(out), "--gzip",
         "--to-kafka", "--topic", topic, "--quiet"],
    )
    assert result.exit_code == 0, result.output
    with gzip.open(tmp_path / "events.jsonl.gz", "rb") as fh:
        lines = fh.read().splitlines()
    truth = load_truth(tmp_path / "events.jsonl.gz")
    assert truth == load_truth(tmp_path / "events.truth.jsonl.gz")
    assert truth.delivery.n_lines == len(lines) > 0
    assert {orjson.loads(v)["event_id"] for v in lines} == set(truth.customer_of_event())
    got = consume(bootstrap, topic, len(lines))
    assert Counter(v for _, v, _ in got) == Counter(lines)


def test_files_are_the_same_bytes_for_the_same_seed(tmp_path: Path) -> None:
    sim = simulate(SimConfig(customers=50, seed=12))
    a = write_simulation(sim, tmp_path / "a.jsonl", gzip_out=True)
    b = write_simulation(simulate(SimConfig(customers=50, seed=12)), tmp_path / "b.jsonl", True)
    assert a.events_path.read_bytes() == b.events_path.read_bytes()
    assert a.truth_path.read_bytes() == b.truth_path.read_bytes()
    plain = write_simulation(sim, tmp_path / "c.jsonl")
    assert plain.events_path.read_bytes() == b"".join(line + b"\n" for line in sim.lines)
    assert load_truth(plain.truth_path) == sim.truth == load_truth(a.truth_path)


def test_no_broker_fails_with_what_to_do() -> None:
    producer = EventProducer("127.0.0.1:1", "touchpoints.raw")
    with pytest.raises(ServiceUnavailable, match="journeymap services up"):
        producer.check(timeout_s=2)
    assert producer.close(timeout_s=1).n_sent == 0

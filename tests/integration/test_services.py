"""The real services `journeymap services up` runs: Kafka (confluent-kafka, aiokafka, a Faust
worker), Redis, the chDB-backed ClickHouse server, and the service manager's own life cycle."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from processors.errors import ServiceUnavailable
from streams.chdb_server import check_config
from streams.services import ServiceManager, endpoints, parse_only, probe_clickhouse
from streams.settings import Settings, load_settings

pytestmark = pytest.mark.integration

POLL_DEADLINE_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _consume(bootstrap: str, topic: str, group: str, n: int) -> list[tuple[bytes, bytes]]:
    """Up to ``n`` (key, value) pairs from the start of ``topic``, within POLL_DEADLINE_S."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + POLL_DEADLINE_S
    try:
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return got


# -- Kafka ------------------------------------------------------------------------------------


def test_confluent_kafka_round_trip(kafka_bootstrap: str, kafka_topic: str, consumer_group: str):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = [(f"k{i % 3}".encode(), f"v{i}".encode()) for i in range(20)]
    for key, value in sent:
        producer.produce(kafka_topic, value=value, key=key)
    assert producer.flush(15) == 0

    assert _consume(kafka_bootstrap, kafka_topic, consumer_group, len(sent)) == sent


async def test_aiokafka_round_trip(kafka_bootstrap: str, kafka_topic: str, consumer_group: str):
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await asyncio.wait_for(producer.start(), 20)
    try:
        for i in range(10):
            await asyncio.wait_for(
                producer.send_and_wait(kafka_topic, f"v{i}".encode(), key=b"k"), 20
            )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=consumer_group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await asyncio.wait_for(consumer.start(), 20)
    got: list[bytes] = []
    try:
        async with asyncio.timeout(POLL_DEADLINE_S):
            async for msg in consumer:
                got.append(msg.value)
                if len(got) == 10:
                    await consumer.commit()
                    break
    finally:
        await consumer.stop()
    assert got == [f"v{i}".encode() for i in range(10)]


async def test_aiokafka_transactions_commit_and_abort(
    kafka_bootstrap: str, kafka_topic: str, consumer_group: str
):
    """Faust's exactly_once guarantee needs transactions from aiokafka against this broker."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{kafka_topic}"
    )
    await asyncio.wait_for(producer.start(), 30)
    try:
        async with producer.transaction():
            await producer.send_and_wait(kafka_topic, b"committed")
        await producer.begin_transaction()
        await producer.send_and_wait(kafka_topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(kafka_topic, b"last")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=consumer_group,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await asyncio.wait_for(consumer.start(), 20)
    got: list[bytes] = []
    try:
        async with asyncio.timeout(POLL_DEADLINE_S):
            while len(got) < 2:
                batches = await consumer.getmany(timeout_ms=1000)
                got += [m.value for records in batches.values() for m in records]
    finally:
        await consumer.stop()
    assert got == [b"committed", b"last"]


FAUST_APP = """
import os

import faust

app = faust.App(
    os.environ["PROBE_APP_ID"],
    broker="kafka://" + os.environ["PROBE_BOOTSTRAP"],
    store="memory://",
    web_enabled=False,
    topic_partitions=1,
    topic_replication_factor=1,
)
source_topic = app.topic(os.environ["PROBE_IN"], key_serializer="raw", value_serializer="raw")
sink_topic = app.topic(os.environ["PROBE_OUT"], key_serializer="raw", value_serializer="raw")
counts_table = app.Table("counts", default=int, partitions=1)


@app.agent(source_topic)
async def forward(stream):
    async for key, value in stream.items():
        counts_table[key] += 1  # reassigned: written to the changelog topic
        await sink_topic.send(key=key, value=value.upper() + b":%d" % counts_table[key])


if __name__ == "__main__":
    app.main()
"""


@pytest.fixture
def faust_worker(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Any, kafka_admin: Any
) -> Iterator[tuple[str, str, str]]:
    """A real `faust worker` subprocess forwarding topic_in -> topic_out with a table."""
    topic_in, topic_out = make_topic("faust-in"), make_topic("faust-out")
    app_id = f"probe-{topic_in.rsplit('-', 1)[1]}"
    (tmp_path / "probe_app.py").write_text(textwrap.dedent(FAUST_APP))
    env = {
        **os.environ,
        "PROBE_APP_ID": app_id,
        "PROBE_BOOTSTRAP": kafka_bootstrap,
        "PROBE_IN": topic_in,
        "PROBE_OUT": topic_out,
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "probe_app.py", "worker", "--loglevel", "info"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while b"Worker]: Ready" not in log_path.read_bytes():
            assert proc.poll() is None, "faust worker exited:\n" + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "worker not ready:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield topic_in, topic_out, app_id
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        internal = [
            name
            for name in kafka_admin.list_topics(timeout=10).topics
            if name.startswith(app_id + "-")
        ]
        if internal:
            for future in kafka_admin.delete_topics(internal, operation_timeout=10).values():
                future.result(timeout=20)


def test_faust_worker_round_trip(
    kafka_bootstrap: str, faust_worker: tuple[str, str, str], consumer_group: str, kafka_admin: Any
):
    from confluent_kafka import Producer

    topic_in, topic_out, app_id = faust_worker
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in (b"a", b"b", b"c"):
        producer.produce(topic_in, value=value, key=b"customer-1")
    producer.produce(topic_in, value=b"d", key=b"customer-2")
    assert producer.flush(15) == 0

    got = _consume(kafka_bootstrap, topic_out, consumer_group, 4)

    assert got == [
        (b"customer-1", b"A:1"),
        (b"customer-1", b"B:2"),
        (b"customer-1", b"C:3"),
        (b"customer-2", b"D:1"),
    ]
    changelog = f"{app_id}-counts-changelog"
    assert changelog in kafka_admin.list_topics(timeout=10).topics


# -- Redis ------------------------------------------------------------------------------------


def test_redis_round_trip(redis_client: Any):
    redis_client.set("k", b"v", ex=60)
    redis_client.hset("customer:1", mapping={"stage": "signup", "score": "0.5"})
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.incr("n")
        pipe.incr("n")
        assert pipe.execute() == [1, 2]

    assert redis_client.get("k") == b"v"
    assert redis_client.hgetall("customer:1") == {b"stage": b"signup", b"score": b"0.5"}
    assert 0 < redis_client.ttl("k") <= 60


# -- ClickHouse (the chDB-backed server) -------------------------------------------------------


def test_clickhouse_engines_views_and_parameters(clickhouse_client: Any):
    ch = clickhouse_client
    ch.command(
        "CREATE TABLE touch (id UInt64, customer String, ts DateTime64(3)) "
        "ENGINE = MergeTree ORDER BY (customer, ts)"
    )
    ch.command(
        "CREATE TABLE latest (customer String, stage String, version UInt64) "
        "ENGINE = ReplacingMergeTree(version) ORDER BY customer"
    )
    ch.command(
        "CREATE TABLE per_customer (customer String, n AggregateFunction(count)) "
        "ENGINE = AggregatingMergeTree ORDER BY customer"
    )
    ch.command(
        "CREATE MATERIALIZED VIEW per_customer_mv TO per_customer AS "
        "SELECT customer, countState() AS n FROM touch GROUP BY customer"
    )

    ch.insert(
        "touch",
        [[1, "c1", 1_700_000_000_000], [2, "c2", 1_700_000_001_000]],
        column_names=["id", "customer", "ts"],
    )
    ch.insert_arrow(
        "touch",
        pa.table(
            {
                "id": pa.array([3, 4, 5], pa.uint64()),
                "customer": ["c1", "c1", "c3"],
                "ts": pa.array([1_700_000_002_000] * 3, pa.timestamp("ms")),
            }
        ),
    )
    ch.insert(
        "latest",
        [["c1", "visit", 1], ["c1", "signup", 2], ["c2", "visit", 1]],
        column_names=["customer", "stage", "version"],
    )

    counts = ch.query(
        "SELECT customer, countMerge(n) FROM per_customer GROUP BY customer ORDER BY customer"
    ).result_rows
    assert counts == [("c1", 3), ("c2", 1), ("c3", 1)]
    latest = ch.query("SELECT customer, stage FROM latest FINAL ORDER BY customer").result_rows
    assert latest == [("c1", "signup"), ("c2", "visit")]
    n = ch.query(
        "SELECT count() FROM touch WHERE customer = {c:String} AND id >= {i:UInt64}",
        parameters={"c": "c1", "i": 3},
    ).result_rows
    assert n == [(2,)]
    arrow = ch.query_arrow("SELECT id FROM touch ORDER BY id")
    assert arrow.column("id").to_pylist() == [1, 2, 3, 4, 5]


def test_clickhouse_native_tcp_port_answers(jm_settings: Settings, clickhouse_url: str):
    e = endpoints(jm_settings)
    with socket.create_connection((e.clickhouse_host, e.clickhouse_tcp_port), timeout=5):
        pass


def _start_chdb_server(run_dir: Path, data: Path, http: int, tcp: int) -> subprocess.Popen[bytes]:
    (run_dir / "config.xml").write_text(
        f"<clickhouse><listen_host>127.0.0.1</listen_host><http_port>{http}</http_port>"
        f"<tcp_port>{tcp}</tcp_port></clickhouse>"
    )
    log = (run_dir / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.chdb_server", "--http-port", str(http),
         "--tcp-port", str(tcp), "--data", str(data)],
        cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 60
    while not probe_clickhouse("127.0.0.1", http):
        assert proc.poll() is None, (run_dir / "server.log").read_text()
        assert time.monotonic() < deadline, "chdb_server did not answer within 60s"
        time.sleep(0.3)
    return proc


def test_chdb_server_stops_on_sigterm_and_keeps_its_data(tmp_path: Path):
    import clickhouse_connect

    data = tmp_path / "data"
    http, tcp = _free_port(), _free_port()
    proc = _start_chdb_server(tmp_path, data, http, tcp)
    try:
        client = clickhouse_connect.get_client(host="127.0.0.1", port=http, connect_timeout=5)
        client.command("CREATE DATABASE kept")
        client.command("CREATE TABLE kept.t (x UInt8) ENGINE = MergeTree ORDER BY x")
        client.insert("kept.t", [[7]])
    finally:
        proc.send_signal(signal.SIGTERM)
        # A client's keep-alive connection is still open: the server may end with status 1.
        assert proc.wait(30) in (0, 1), (tmp_path / "server.log").read_text()

    proc = _start_chdb_server(tmp_path, data, http, tcp)
    try:
        url = f"http://127.0.0.1:{http}/?query=SELECT+x+FROM+kept.t"
        with urllib.request.urlopen(url, timeout=10) as response:  # no keep-alive
            assert response.read() == b"7\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "server.log").read_text()
    assert (tmp_path / "server.log").read_text().rstrip().endswith("chdb_server: stopped")


def test_chdb_server_refuses_a_config_for_other_ports(tmp_path: Path):
    (tmp_path / "config.xml").write_text("<clickhouse><http_port>1</http_port></clickhouse>")
    assert "<http_port>2</http_port>" in (check_config(tmp_path / "config.xml", 2, 3) or "")
    assert "missing" in (check_config(tmp_path / "nope.xml", 2, 3) or "")


# -- the service manager ----------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[ServiceManager]:
    """A manager for a second Redis on a free port, its home under tmp_path; stopped after."""
    settings = load_settings(redis={"url": f"redis://127.0.0.1:{_free_port()}/0"})
    manager = ServiceManager(settings, home=tmp_path / "svc", start_timeout_s=30)
    yield manager
    manager.down(["redis"])


def test_manager_up_is_idempotent_and_down_stops_by_pid(private_redis: ServiceManager):
    [first] = private_redis.up(["redis"])
    assert first.state == "running" and first.pid is not None
    [again] = private_redis.up(["redis"])
    assert again.pid == first.pid  # nothing new was started

    [stopped] = private_redis.down(["redis"])

    assert stopped.state == "stopped"
    assert (
        not Path(f"/proc/{first.pid}").exists()
        or b"Z" in Path(f"/proc/{first.pid}/stat").read_bytes().rpartition(b")")[2][:3]
    )
    assert not private_redis.pid_file("redis").exists()


def test_manager_reports_a_server_it_did_not_start_as_external(redis_test_url: str, tmp_path):
    manager = ServiceManager(load_settings(), home=tmp_path / "other-home")

    [row] = manager.up(["redis"])  # the session's Redis answers: nothing is started

    assert row.state == "external" and row.pid is None
    assert not manager.pid_file("redis").exists()


def test_manager_failure_names_the_log_file(tmp_path: Path):
    with socket.socket() as squatter:  # holds the port, so redis-server cannot bind it
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = load_settings(redis={"url": f"redis://127.0.0.1:{port}/0"})
        manager = ServiceManager(settings, home=tmp_path / "svc", start_timeout_s=15)

        with pytest.raises(ServiceUnavailable) as failure:
            manager.up(["redis"])
        manager.down(["redis"])

    assert str(manager.log_file("redis")) in str(failure.value)


def test_endpoints_come_from_the_settings():
    settings = load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:19092,127.0.0.1:19093"},
        redis={"url": "redis://127.0.0.1:16379/2"},
        clickhouse={"url": "http://localhost:18123"},
        services={"kafka_controller_port": 19094, "clickhouse_tcp_port": 19000},
    )
    e = endpoints(settings)
    assert (e.kafka_port, e.kafka_controller_port, e.redis_port) == (19092, 19094, 16379)
    assert (e.clickhouse_http_port, e.clickhouse_tcp_port) == (18123, 19000)
    assert all(e.managed(name) for name in ("kafka", "redis", "clickhouse"))
    embedded = endpoints(load_settings(clickhouse={"url": "/tmp/chdb"}))
    assert embedded.clickhouse_http_port == 8123  # the server for tests, beside the embedded store
    remote = endpoints(load_settings(clickhouse={"url": "https://ch.example.com"}))
    assert (remote.clickhouse_http_port, remote.managed("clickhouse")) == (8443, False)


def test_parse_only_keeps_canonical_order_and_rejects_unknown_names():
    from processors.errors import ConfigError

    assert parse_only("redis, KAFKA") == ("kafka", "redis")
    assert parse_only(None) == ("kafka", "redis", "clickhouse")
    with pytest.raises(ConfigError, match="zookeeper"):
        parse_only("kafka,zookeeper")

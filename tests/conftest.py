"""Shared fixtures for integration and e2e tests: the real services `journeymap services up` runs.

They read the same settings as the CLI (journeymap.toml plus JOURNEYMAP_* variables). A service
that does not answer FAILS the test that needs it, with the command to run, rather than skipping:
a green run must mean the services were exercised. Unit and property tests use none of these.

    kafka_bootstrap, kafka_admin      the broker and an admin client (session)
    make_topic(...) / kafka_topic     unique topics, created before and deleted after the test
    consumer_group                    a unique consumer group id
    redis_client                      a client on a test db (JOURNEYMAP_TEST_REDIS_DB, default 15),
                                      flushed before and after each test
    clickhouse_client                 a clickhouse-connect client on a fresh database, dropped after
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from streams.services import (
    clickhouse_server_url,
    endpoints,
    probe_clickhouse,
    probe_kafka,
    probe_redis,
)
from streams.settings import Settings, load_settings

ADMIN_TIMEOUT_S = 20.0
RUN_UP = "run `journeymap services up` (or scripts/test, which does it for you)"
_REAL_SERVICE_DIRS = ("integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration and tests/e2e is marked `integration`."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if any(part in parts for part in _REAL_SERVICE_DIRS):
            item.add_marker(pytest.mark.integration)


def unique_name(prefix: str) -> str:
    """``prefix-<12 hex>``: unique per call, valid as a topic, group or (with _) a database."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def jm_settings() -> Settings:
    """The settings the services were started with."""
    return load_settings()


# -- Kafka ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap(jm_settings: Settings) -> str:
    """``host:port`` of a broker that answers metadata requests; fails the test otherwise."""
    e = endpoints(jm_settings)
    if not probe_kafka(e.kafka_host, e.kafka_port, timeout_s=10.0):
        pytest.fail(f"Kafka does not answer at {e.kafka_host}:{e.kafka_port}: {RUN_UP}", False)
    return jm_settings.kafka.bootstrap_servers


def _quiet_logger() -> logging.Logger:
    quiet = logging.getLogger("tests.rdkafka")
    quiet.setLevel(logging.ERROR)
    return quiet


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap}, logger=_quiet_logger())


@pytest.fixture
def make_topic(kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """``make_topic(prefix="t", partitions=1, **config) -> name``: created now, deleted after."""
    from confluent_kafka.admin import NewTopic

    created: list[str] = []

    def make(prefix: str = "test", partitions: int = 1, **config: str) -> str:
        name = unique_name(prefix)
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
        for future in kafka_admin.create_topics([topic], operation_timeout=10).values():
            future.result(timeout=ADMIN_TIMEOUT_S)
        created.append(name)
        return name

    yield make
    if created:
        for future in kafka_admin.delete_topics(created, operation_timeout=10).values():
            future.result(timeout=ADMIN_TIMEOUT_S)


@pytest.fixture
def kafka_topic(make_topic: Callable[..., str]) -> str:
    """One fresh single-partition topic."""
    return make_topic()


@pytest.fixture
def consumer_group(kafka_admin: Any) -> Iterator[str]:
    """A unique consumer group id; the group is deleted after the test when it exists."""
    group = unique_name("group")
    yield group
    try:
        for future in kafka_admin.delete_consumer_groups([group], request_timeout=10).values():
            future.result(timeout=ADMIN_TIMEOUT_S)
    except Exception:  # the group never committed anything, or is still shutting down
        pass


# -- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_test_url(jm_settings: Settings) -> str:
    """The Redis URL with the test db (JOURNEYMAP_TEST_REDIS_DB, default 15) in its path."""
    e = endpoints(jm_settings)
    if not probe_redis(e.redis_host, e.redis_port, timeout_s=5.0):
        pytest.fail(f"Redis does not answer at {e.redis_host}:{e.redis_port}: {RUN_UP}", False)
    db = int(os.environ.get("JOURNEYMAP_TEST_REDIS_DB", "15"))
    parts = urlsplit(jm_settings.redis.url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture
def redis_client(redis_test_url: str) -> Iterator[Any]:
    """A redis-py client on the test db, flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(redis_test_url, socket_timeout=5, socket_connect_timeout=5)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


# -- ClickHouse -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clickhouse_url(jm_settings: Settings) -> str:
    """The ClickHouse server URL: clickhouse.url when it is http(s), else the local one."""
    url = clickhouse_server_url(jm_settings)
    parts = urlsplit(url)
    if not probe_clickhouse(parts.hostname or "127.0.0.1", parts.port or 8123, timeout_s=5.0):
        pytest.fail(f"ClickHouse does not answer at {url}: {RUN_UP}", False)
    return url


@pytest.fixture
def clickhouse_client(clickhouse_url: str, jm_settings: Settings) -> Iterator[Any]:
    """A clickhouse-connect client whose default database is new and dropped after the test."""
    import clickhouse_connect

    parts = urlsplit(clickhouse_url)
    database = unique_name("test").replace("-", "_")
    common: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 8123,
        "secure": parts.scheme == "https",
        "username": jm_settings.clickhouse.user,
        "password": jm_settings.clickhouse.password.get_secret_value(),
        "connect_timeout": 5,
        "send_receive_timeout": 60,
    }
    admin = clickhouse_connect.get_client(**common)
    admin.command(f"CREATE DATABASE {database}")
    client = clickhouse_connect.get_client(database=database, **common)
    try:
        yield client
    finally:
        client.close()
        admin.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        admin.close()

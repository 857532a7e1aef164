"""The Redis identity store against a real Redis: concurrent workers and an outage.

Needs a Redis at JOURNEYMAP_REDIS__URL (default redis://127.0.0.1:6379/0); the outage test starts
its own redis-server (skipped when the binary is missing). Each test uses its own key prefix.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from processors.config import IdentityConfig
from processors.events import TouchpointEvent
from processors.identity import IdentityResolver, InMemoryIdentityStore
from sinks.identity_redis import RedisIdentityStore, RetryPolicy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REDIS_URL = os.environ.get("JOURNEYMAP_REDIS__URL", "redis://127.0.0.1:6379/0")
SALT = "integration-salt"
T0_MS = 1_772_323_200_000
CONFIG = IdentityConfig()


def stream(n: int, seed: int) -> list[TouchpointEvent]:
    """Customers with cookies, a device and occasional logins; no identifier is shared."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = rng.randrange(n // 8)
        ids = {"anonymous_id": f"cookie-{c}-{rng.randrange(3)}"}
        r = rng.random()
        if r < 0.3:
            ids["device_id"] = f"device-{c}"
        elif r < 0.45:
            ids["user_id"] = f"user-{c}"
        elif r < 0.5:
            ids["email"] = f"c{c}@example.com"
        out.append(
            TouchpointEvent.model_validate(
                {
                    "event_id": f"ev-{i}",
                    "occurred_at": T0_MS + rng.randrange(3_600_000),
                    "channel": "web",
                    "touchpoint": "landing_page",
                    "identities": ids,
                }
            )
        )
    return out


@pytest.fixture
def prefix() -> Iterator[str]:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL} (set JOURNEYMAP_REDIS__URL)")
    name = f"test:identity:{uuid.uuid4().hex[:12]}"
    yield name
    RedisIdentityStore(REDIS_URL, prefix=name).clear()


def _worker(
    prefix: str, n: int, seed: int, part: int, batch: int, out: mp.Queue, start: object
) -> None:
    events = stream(n, seed)[part::2]
    store = RedisIdentityStore(REDIS_URL, prefix=prefix)
    resolver = IdentityResolver(CONFIG, SALT, store)
    start.wait()  # type: ignore[attr-defined]  # both workers resolve at the same time
    merges, resolved, retries = [], [], 0
    for i in range(0, len(events), batch):
        result = resolver.resolve_batch(events[i : i + batch])
        merges.append([tuple(m) for m in result.merges])
        resolved.append([(e.event.event_id, e.customer_id) for e in result.resolved])
        retries += result.n_attempts - 1
    out.put((part, merges, resolved, retries))


def test_two_worker_processes_end_with_exactly_the_in_memory_answer(prefix: str) -> None:
    n, seed = 6_000, 11
    memory = IdentityResolver(CONFIG, SALT)
    result = memory.resolve_batch(stream(n, seed))
    assert not result.conflicts  # the stream shares no identifier: no safeguard may fire
    expected = {e.event.event_id: e.customer_id for e in result.resolved}

    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    start = ctx.Barrier(2)
    workers = [
        ctx.Process(target=_worker, args=(prefix, n, seed, part, 20, queue, start))
        for part in (0, 1)
    ]
    for w in workers:
        w.start()
    reports = [queue.get(timeout=150) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0

    store = RedisIdentityStore(REDIS_URL, prefix=prefix)
    assert isinstance(memory.store, InMemoryIdentityStore)
    assert store.partition() == memory.store.graph.partition()

    # Every event was resolved once, by one of the workers; replaying the whole stream on the
    # shared graph changes nothing and resolves every event to its in-memory customer.
    seen = [event_id for _, _, resolved, _ in reports for b in resolved for event_id, _ in b]
    assert sorted(seen) == sorted(expected)
    final = IdentityResolver(CONFIG, SALT, store)
    again = final.resolve_batch(stream(n, seed))
    assert {e.event.event_id: e.customer_id for e in again.resolved} == expected
    assert again.merges == [] and again.links == []
    print("commit retries per worker:", [r[3] for r in reports])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(data),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_redis_down_for_a_while_waits_retries_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    proc = _start_redis(port, tmp_path)
    try:
        events = stream(2_000, 5)
        first, second = events[:1_000], events[1_000:]
        store = RedisIdentityStore(
            f"redis://127.0.0.1:{port}/0",
            prefix="outage",
            retry=RetryPolicy(initial_s=0.05, max_backoff_s=0.4, max_wait_s=60),
        )
        resolver = IdentityResolver(CONFIG, SALT, store)
        resolver.resolve_batch(first)

        proc.terminate()
        proc.wait(timeout=10)
        outcome: dict[str, object] = {}

        def resolve() -> None:
            outcome["result"] = resolver.resolve_batch(second)

        with caplog.at_level(logging.WARNING, logger="journeymap.identity"):
            thread = threading.Thread(target=resolve)
            thread.start()
            time.sleep(1.5)
            assert thread.is_alive(), "resolve_batch must wait while Redis is down"
            proc = _start_redis(port, tmp_path)
            thread.join(timeout=60)
        assert not thread.is_alive()
        assert "result" in outcome
        assert any("waiting for Redis" in r.getMessage() for r in caplog.records)
        assert any("is back" in r.getMessage() for r in caplog.records)

        memory = IdentityResolver(CONFIG, SALT)
        memory.resolve_batch(first)
        memory.resolve_batch(second)
        assert isinstance(memory.store, InMemoryIdentityStore)
        assert store.partition() == memory.store.graph.partition()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_retry_gives_up_after_max_wait_with_a_clear_error() -> None:
    from processors.errors import ServiceUnavailable

    port = _free_port()  # nothing listens here
    store = RedisIdentityStore(
        f"redis://127.0.0.1:{port}/0",
        prefix="nowhere",
        retry=RetryPolicy(initial_s=0.05, max_backoff_s=0.1, max_wait_s=0.5),
    )
    resolver = IdentityResolver(CONFIG, SALT, store)
    with pytest.raises(ServiceUnavailable, match="nothing was committed"):
        resolver.resolve_batch(stream(16, 1))

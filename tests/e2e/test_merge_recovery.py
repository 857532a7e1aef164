"""A worker that died between its identity commit and producing the merge: the merge is not lost.

The identity commit keeps each merge record in a Redis outbox in the same atomic step; the
ingest agent removes it once produced. Here the crash is staged: a batch is resolved straight
against the worker's identity graph (committed, never produced), its outbox entry aged past the
recovery delay. A worker started afterwards must produce the merge on identity.merges, write it
to the identity_merges table and empty the outbox.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer

from processors.identity import IdentityResolver
from sinks.clickhouse import connect, run_query
from sinks.identity_redis import RedisIdentityStore
from streams.app import MERGE_RECOVERY_AFTER_S
from streams.settings import ClickHouseSettings, Settings
from tests.e2e.harness import run_cli
from tests.e2e.test_stream_vs_replay import Supervisor, free_ports, metric, stream_env
from tests.factories import MIN_MS, T0_MS, event

__all__ = ["stream_env"]  # the fixture, shared with the stream-vs-replay test


@pytest.mark.timeout(240)
def test_a_merge_committed_but_never_produced_is_produced_by_the_next_worker(
    stream_env: dict[str, str], tmp_path: Path, jm_settings: Settings
) -> None:
    env = stream_env
    group = env["JOURNEYMAP_KAFKA__CONSUMER_GROUP"]
    run_cli(env, "topics", "create")
    run_cli(env, "migrate")
    settings = jm_settings.model_copy(deep=True)
    store = RedisIdentityStore(settings.redis.url, prefix=f"jm:id:{group}")  # the worker's
    resolver = IdentityResolver(settings.processing().identity, "salt", store)
    resolver.resolve_batch([event(at_ms=T0_MS, event_id="a", anonymous_id="cookie-a"),
                            event(at_ms=T0_MS + MIN_MS, event_id="b", anonymous_id="cookie-b")])
    merges = resolver.resolve_batch([
        event(at_ms=T0_MS + 2 * MIN_MS, event_id="ab", anonymous_id="cookie-b", device_id="d"),
        event(at_ms=T0_MS + 3 * MIN_MS, event_id="ba", anonymous_id="cookie-a", device_id="d"),
    ]).merges
    assert len(merges) == 1
    # ... and the worker that committed it died: its outbox entry grows old.
    outbox = f"{store.prefix}:mo"
    for field, value in store.client.hgetall(outbox).items():
        seq, _, body = value.partition(" ")  # '<commit sequence> <JSON>'
        record = orjson.loads(body)
        record["committed_ms"] -= int((MERGE_RECOVERY_AFTER_S + 60) * 1000)
        store.client.hset(outbox, field, f"{seq} {orjson.dumps(record).decode()}")
    assert store.pending_merges(MERGE_RECOVERY_AFTER_S) == merges

    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_ports(1)[0]
    worker = Supervisor(env, logs, [port])
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": f"{group}-check", "auto.offset.reset": "earliest"})
    consumer.subscribe([env["JOURNEYMAP_KAFKA__TOPICS__MERGES"]])
    try:
        produced: list[dict[str, object]] = []
        deadline = time.monotonic() + 150
        while not produced and time.monotonic() < deadline:
            worker.check()
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                produced.append(orjson.loads(msg.value()))
        assert produced == [merges[0]._asdict()]
        while store.client.hlen(outbox) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert store.pending_merges() == []
        target = ClickHouseSettings(url=env["JOURNEYMAP_CLICKHOUSE__URL"],
                                    database=env["JOURNEYMAP_CLICKHOUSE__DATABASE"])
        with connect(target) as ch_store:
            rows = run_query(ch_store, "SELECT loser, winner FROM identity_merges FINAL", {}).rows
        assert [tuple(r) for r in rows] == [(merges[0].loser, merges[0].winner)]
        assert metric([port], "journeymap_merges_recovered_total") == [1.0]
    finally:
        consumer.close()
        worker.stop()
        store.clear()

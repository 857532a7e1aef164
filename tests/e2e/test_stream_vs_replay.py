"""The streaming pipeline on real Kafka, Redis and ClickHouse gives the replay's analyst tables.

The simulator's history goes through `journeymap replay` (embedded chDB) and, separately, through
Kafka (four partitions) to two `journeymap worker` processes writing to the ClickHouse server.
The allowed lateness is set longer than the history, so arrival order (which Kafka partitions
reorder) cannot change anything, and a few sentinel events far in the future push every
partition's frontier past the history, so both sides have released and finalized everything.
Then the tables must be equal, row for row (customer ids followed through merges).

Variants disturb the run in the middle: `kill -9` of one worker (restarted as a supervisor
would), ClickHouse stopped for 30 s, Redis restarted. Each variant returns as soon as the tables
are equal; the timeout only bounds a failure. The workers' latency and lag gauges must be filled.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from processors.errors import QueryError
from sinks.clickhouse import Store, connect, run_query
from streams.producer import EventProducer
from streams.services import ServiceManager
from streams.settings import ClickHouseSettings, Settings
from tests.e2e.harness import history, isolated_env, run_cli

SENTINELS = 48

# Compared up to the cutoff (the end of the history): the sentinels themselves stay open in the
# stream, which has no end, while the replay's finish releases them.
TABLES = {
    "touchpoints": """
        SELECT count(), sum(cityHash64(event_id, m.winner, channel, touchpoint, segment, revenue))
        FROM touchpoints AS t
        LEFT JOIN (SELECT customer_id, winner FROM customer_map) AS m
            ON t.customer_id = m.customer_id
        WHERE toUnixTimestamp64Milli(occurred_at) < {cutoff:Int64}""",
    "transitions": "SELECT count(), sum(cityHash64(window_start, segment, channel, order, src1, "
    "src, dst, n, gap_count, gap_sum_ms)) FROM transitions "
    "WHERE toUnixTimestamp(window_start) * 1000 < {cutoff:Int64}",
    "funnel_progress": "SELECT count(), sum(cityHash64(funnel, from_stage, to_stage, ts)) "
    "FROM funnel_progress WHERE toUnixTimestamp64Milli(ts) < {cutoff:Int64}",
    "late_events": "SELECT count() FROM late_events WHERE {cutoff:Int64} > 0",
    "dead_letters": "SELECT count(), sum(cityHash64(reason, stage)) FROM dead_letters "
    "WHERE {cutoff:Int64} > 0",
    # Which identifiers make up each (final) customer. The intermediate customers and merges in
    # between depend on batch boundaries; the final partition does not.
    "identity": """
        SELECT count(), sum(cityHash64(winner, kind, id_hash)) FROM (
            SELECT DISTINCT ifNull(m.winner, l.customer_id) AS winner, kind, id_hash
            FROM identity_links AS l
            LEFT JOIN (SELECT customer_id, winner FROM customer_map) AS m
                ON l.customer_id = m.customer_id
            WHERE {cutoff:Int64} > 0)""",
}


# Row-level views of the tables, written next to the test's logs when a variant fails, so the
# rows that differ can be compared (the stream's database is dropped after the test).
ROWS = {
    "funnel_progress": "SELECT ifNull(m.winner, f.customer_id) AS c, funnel, from_stage, "
    "to_stage, ts FROM funnel_progress AS f LEFT JOIN (SELECT customer_id, winner FROM "
    "customer_map) AS m ON f.customer_id = m.customer_id "
    "WHERE toUnixTimestamp64Milli(ts) < {cutoff:Int64} ORDER BY c, funnel, ts, to_stage",
    "touchpoints": "SELECT ifNull(m.winner, t.customer_id) AS c, event_id, occurred_at, channel, "
    "touchpoint, segment FROM touchpoints AS t LEFT JOIN (SELECT customer_id, winner FROM "
    "customer_map) AS m ON t.customer_id = m.customer_id "
    "WHERE toUnixTimestamp64Milli(occurred_at) < {cutoff:Int64} ORDER BY c, occurred_at, event_id",
    "identity": "SELECT ifNull(m.winner, l.customer_id) AS c, l.customer_id, kind, id_hash "
    "FROM identity_links AS l LEFT JOIN (SELECT customer_id, winner FROM customer_map) AS m "
    "ON l.customer_id = m.customer_id WHERE {cutoff:Int64} > 0 ORDER BY c, kind, id_hash",
    "merges": "SELECT loser, winner, evidence_event_id FROM identity_merges "
    "WHERE {cutoff:Int64} > 0 ORDER BY merged_at, loser",
    "customer_map": "SELECT customer_id, winner FROM customer_map WHERE {cutoff:Int64} > 0 "
    "ORDER BY customer_id",
}


def dump_rows(store: Store, cutoff_ms: int, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for name, sql in ROWS.items():
        try:  # a diagnosis only: never hide the comparison's own failure
            rows = run_query(store, sql, {"cutoff": str(cutoff_ms)}).rows
        except QueryError as exc:
            rows = [("query failed:", exc)]
        (into / f"{name}.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))


def fingerprint(store: Store, cutoff_ms: int) -> dict[str, tuple[Any, ...]]:
    params = {"cutoff": str(cutoff_ms)}
    return {name: tuple(run_query(store, sql, params).rows[0]) for name, sql in TABLES.items()}


@pytest.fixture
def stream_env(jm_settings: Settings, clickhouse_url: str) -> Iterator[dict[str, str]]:
    with isolated_env(jm_settings, clickhouse_url, "e2e",
                      JOURNEYMAP_KAFKA__PARTITIONS="4",
                      JOURNEYMAP_WORKER__BATCH_MAX="200") as env:
        yield env


def _worker(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--no-models", "--web-port", str(port),
         "--workdir", str(log.parent / f"w{port}")],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


def _drained(env: dict[str, str], bootstrap: str, ports: list[int]) -> bool:
    """Every message on the raw and resolved topics is processed.

    Raw: the group's committed offsets are at the end (the ingest agent acknowledges a batch
    only after producing its outputs). Resolved: the journey partitions' positions come from
    their checkpoints, not from Kafka commits, so ask the workers: every partition reports a
    lag of zero. Two drained looks in a row mean nothing is in flight between the agents.
    """
    from confluent_kafka import Consumer, TopicPartition

    n_partitions = int(env["JOURNEYMAP_KAFKA__PARTITIONS"])
    resolved = env["JOURNEYMAP_KAFKA__TOPICS__RESOLVED"]
    lags = metric(ports, "journeymap_consumer_lag{", f'topic="{resolved}"')
    if len(lags) < n_partitions or any(lags):
        return False
    group = env["JOURNEYMAP_KAFKA__CONSUMER_GROUP"]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        raw = env["JOURNEYMAP_KAFKA__TOPICS__RAW"]
        tps = [TopicPartition(raw, p) for p in range(n_partitions)]
        for tp in c.committed(tps, timeout=10):
            _, high = c.get_watermark_offsets(tp, timeout=10)
            if high > 0 and tp.offset < high:
                return False
        return True
    except Exception:  # the broker is busy or the group rebalancing: not yet
        return False
    finally:
        c.close()


def _resolved_kinds(env: dict[str, str], bootstrap: str) -> dict[bytes | str, int]:
    """How many messages of each jm-type (None: a single event) touchpoints.resolved holds, and
    how many events its envelopes hold in all."""
    from confluent_kafka import Consumer, TopicPartition

    from streams.envelope import count

    topic = env["JOURNEYMAP_KAFKA__TOPICS__RESOLVED"]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    kinds: dict[bytes | str, int] = {"events in envelopes": 0}
    try:
        # every partition from its first message to its end now: assigned, not subscribed (no
        # group to join), read until each partition's position reaches its end
        starts, ends = {}, {}
        for p in range(int(env["JOURNEYMAP_KAFKA__PARTITIONS"])):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                starts[p], ends[p] = low, high
        c.assign([TopicPartition(topic, p, starts[p]) for p in ends])
        deadline = time.monotonic() + 60
        left = dict(ends)
        while left and time.monotonic() < deadline:
            for msg in c.consume(num_messages=1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                if msg.offset() + 1 >= left.get(msg.partition(), 0):
                    left.pop(msg.partition(), None)
                kind = dict(msg.headers() or ()).get("jm-type")
                kinds[kind] = kinds.get(kind, 0) + 1
                if kind == b"events":
                    kinds["events in envelopes"] += count(msg.value() or b"")
        assert not left, f"touchpoints.resolved not read to its end within 60 s: {left}"
    finally:
        c.close()
    return kinds


def free_ports(n: int) -> list[int]:
    """`n` ports free right now (other tests and helpers run workers too)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def metric(ports: list[int], name: str, label: str = "") -> list[float]:
    """The values of one metric (lines containing `label`, e.g. 'agent="ingest"')."""
    import urllib.request

    values = []
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith(name) and label in line:
                        values.append(float(line.split()[-1]))
        except OSError:
            pass
    return values


@contextmanager
def _disrupted(disruption: str, settings: Settings, workers: Supervisor) -> Iterator[None]:
    """Disturb the run while the second half of the history is produced; always restore."""
    if disruption == "kill-9-and-restart":
        time.sleep(3)
        workers.kill(workers.ports[0])
        yield
        return
    if disruption == "clean":
        yield
        return
    name = {"clickhouse-outage-30s": "clickhouse", "redis-restart": "redis"}[disruption]
    manager = ServiceManager(settings)
    if manager.status([name])[0].state != "running":
        pytest.skip(f"{name} is not run by `journeymap services` here; cannot stop it")
    time.sleep(2)
    manager.down([name])
    started = time.monotonic()
    try:
        yield
        if name == "clickhouse":  # other helpers' tests share it: no longer than 30 s
            time.sleep(max(0.0, 30 - (time.monotonic() - started)))
    finally:
        manager.up([name])


class Supervisor:
    """Restarts a worker that exits, as systemd or Kubernetes would (workers are crash-only)."""

    def __init__(self, env: dict[str, str], logs: Path, ports: list[int]) -> None:
        self.env, self.logs, self.ports = env, logs, ports
        self.procs = {port: _worker(env, port, logs / f"w{port}-0.log") for port in ports}
        self.restarts = 0

    def check(self) -> None:
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                self.restarts += 1
                self.procs[port] = _worker(
                    self.env, port, self.logs / f"w{port}-{self.restarts}.log"
                )

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(timeout=30)
        self.check()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _warnings(logs: Path, last: int = 40) -> list[str]:
    """The workers' last warnings and errors: a failed variant's diagnosis in CI, where the
    logs are gone with the machine."""
    lines = []
    for log in sorted(logs.glob("*.log")):
        lines += [f"{log.name}: {line}" for line in log.read_text(errors="replace").splitlines()
                  if "WARNING" in line or "ERROR" in line or "CRITICAL" in line]
    return lines[-last:]


def _wait_equal(target: ClickHouseSettings, want: dict[str, tuple[Any, ...]], cutoff_ms: int,
                timeout_s: float, supervisor: Supervisor) -> dict[str, tuple[Any, ...]]:
    """Poll the tables until they equal `want` (return at once) or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    got: dict[str, tuple[Any, ...]] = {}
    while time.monotonic() < deadline:
        supervisor.check()
        try:
            with connect(target) as store:
                got = fingerprint(store, cutoff_ms)
        except Exception:  # ClickHouse still restarting
            got = {}
        if got == want:
            return got
        time.sleep(2)
    return got


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "disruption", [
        "clean",
        "kill-9-and-restart",
        "clickhouse-outage-30s",
        "redis-restart",
    ],
)
def test_two_workers_on_four_partitions_equal_the_replay(
    disruption: str, stream_env: dict[str, str], tmp_path: Path, jm_settings: Settings
) -> None:
    path, sim, sentinels, cutoff_ms = history(tmp_path, customers=250, seed=23,
                                              sentinels=SENTINELS)
    lines = list(sim.lines)
    env = stream_env
    bootstrap = jm_settings.kafka.bootstrap_servers

    replay_db = tmp_path / "replay-chdb"
    run_cli(env, "replay", str(path), "--clickhouse", str(replay_db), "--no-models", "--quiet",
         timeout=300)
    database = env["JOURNEYMAP_CLICKHOUSE__DATABASE"]
    with connect(ClickHouseSettings(url=str(replay_db), database=database)) as store:
        want = fingerprint(store, cutoff_ms)
    assert want["touchpoints"][0] > 2000

    if disruption == "clean":
        # small raw buffers: the ingest task's consumer pauses and resumes its partitions
        # (streams.raw_batches) many times over the run
        env = {**env, "JOURNEYMAP_WORKER__BATCH_MAX": "20",
               "JOURNEYMAP_WORKER__RAW_BUFFER_MAX": "20"}
    run_cli(env, "topics", "create")
    run_cli(env, "migrate")
    logs = tmp_path / "logs"
    logs.mkdir()
    ports = free_ports(2)
    workers = Supervisor(env, logs, ports)
    try:
        time.sleep(8)
        producer = EventProducer(bootstrap, env["JOURNEYMAP_KAFKA__TOPICS__RAW"], rate_per_s=1500)
        half = len(lines) // 2
        producer.send_many(lines[:half])
        producer.flush()
        with _disrupted(disruption, jm_settings, workers):
            producer.send_many(lines[half:])
            producer.flush()
        # The sentinels end the history: send them once every history event has gone through
        # both agents (Kafka does not order across partitions; a sentinel must not overtake).
        started = time.monotonic()
        deadline = started + 240
        n_drained = 0
        while n_drained < 2 and time.monotonic() < deadline:
            workers.check()
            n_drained = n_drained + 1 if _drained(env, bootstrap, ports) else 0
            time.sleep(2)
        print(f"drained: {n_drained >= 2} after {time.monotonic() - started:.0f} s; lags "
              f"{metric(ports, 'journeymap_consumer_lag{')}")  # shown with -rP
        producer.send_many(sentinels)
        stats = producer.close(30)
        assert stats.n_failed == 0 and stats.n_undelivered == 0
        target = ClickHouseSettings(url=env["JOURNEYMAP_CLICKHOUSE__URL"],
                                    database=env["JOURNEYMAP_CLICKHOUSE__DATABASE"])
        got = _wait_equal(target, want, cutoff_ms, timeout_s=240, supervisor=workers)
        if got != want:  # keep both sides' rows for the diagnosis
            with connect(target) as store:
                dump_rows(store, cutoff_ms, tmp_path / "stream-rows")
            with connect(ClickHouseSettings(url=str(replay_db), database=database)) as store:
                dump_rows(store, cutoff_ms, tmp_path / "replay-rows")
        assert got == want, (
            {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v},
            "transfers awaited", metric(ports, "journeymap_transfers_awaited"),
            "lags", metric(ports, "journeymap_consumer_lag{"),
            "worker warnings", _warnings(logs),
        )
        for agent in ("ingest", "journey"):  # filled by the batches that produced the tables
            latency = metric(ports, "journeymap_processing_latency_seconds", f'agent="{agent}"')
            assert latency and max(latency) > 0, (agent, latency)
        lags: list[float] = []
        for _ in range(10):  # one line per assigned partition (refreshed every 2 s)
            lags = metric(ports, "journeymap_consumer_lag{")
            if lags:
                break
            time.sleep(2)
        assert lags, "no consumer lag reported"
        # the ingest agents sent their events in envelopes, not one message each (a message
        # without a header is a forward after a merge: a few)
        kinds = _resolved_kinds(env, bootstrap)
        assert kinds["events in envelopes"] >= want["touchpoints"][0], kinds
        assert kinds.get(None, 0) < 0.05 * kinds["events in envelopes"], kinds
        # The supervisor restarts a worker that died, so the tables can be right after a crash:
        # say so instead (Faust logs a crashed service as "Crashed reason=..."; a seek from the
        # wrong thread once killed workers that way, streams.app.seek).
        crashed = [line for line in _warnings(logs, last=10_000) if "Crashed reason=" in line]
        assert not crashed, crashed[:5]
    finally:
        workers.stop()

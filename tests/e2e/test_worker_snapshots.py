"""A streaming worker writes the snapshot tables (funnel_dropoff, attribution, segments,
customer_scores) on its schedule and at shutdown, with the replay's rows.

One worker with the models owns both partitions of touchpoints.resolved, so its attribution and
segments cover every customer, as the replay's do. As in test_stream_vs_replay, the allowed
lateness is longer than the history and sentinel events far in the future push every
partition's frontier past it, so both sides have released and finalized the whole history.
The models see the events in another order on the two sides (per partition batches against
file chunks), so scores and segments are compared by who has them, not by value; attribution
and funnel drop-off do not depend on the models and must be equal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinks.clickhouse import connect, run_query
from streams.producer import EventProducer
from streams.settings import ClickHouseSettings, Settings
from tests.e2e.harness import history, isolated_env, run_cli

pytestmark = pytest.mark.integration


LATEST = {
    "attribution": "SELECT count(), sum(cityHash64(model, level, key, "
    "round(conversions_attributed, 6), round(revenue_attributed, 4))) FROM attribution "
    "WHERE as_of = (SELECT max(as_of) FROM attribution) AND {cutoff:Int64} > 0",
    # summed over shards (the worker's partitions) and segments (the models' order differs),
    # history cohorts only: the sentinels are released by the replay's finish, not the stream
    "funnel_dropoff": """
        SELECT count(), sum(cityHash64(funnel, stage, cohort_week, entered, advanced, dropped))
        FROM (SELECT funnel, stage, cohort_week, sum(entered) AS entered,
                     sum(advanced) AS advanced, sum(dropped) AS dropped
              FROM funnel_dropoff
              WHERE segment != '*' AND cohort_week IS NOT NULL
                AND toUnixTimestamp(cohort_week) * 1000 < {cutoff:Int64}
              GROUP BY funnel, stage, cohort_week)""",
    "scored_customers": "SELECT count(), sum(cityHash64(customer_id)) FROM customer_scores "
    "WHERE toUnixTimestamp64Milli(ts) < {cutoff:Int64}",
    # written per batch, not on the schedule: which (final customer, event-time day) has a score
    "score_history_days": """
        SELECT count(), sum(cityHash64(c, d)) FROM (
            SELECT DISTINCT m.winner AS c, h.day AS d FROM customer_score_history AS h
            LEFT JOIN (SELECT customer_id, winner FROM customer_map) AS m
                ON h.customer_id = m.customer_id
            WHERE toUnixTimestamp64Milli(h.ts) < {cutoff:Int64})""",
}


def _fingerprint(store, cutoff_ms: int) -> dict[str, tuple]:
    params = {"cutoff": str(cutoff_ms)}
    return {k: tuple(run_query(store, sql, params).rows[0]) for k, sql in LATEST.items()}


def _scalar(store, sql: str) -> int:
    return int(run_query(store, sql, {}).rows[0][0])


@pytest.fixture
def env(jm_settings: Settings, clickhouse_url: str) -> Iterator[dict[str, str]]:
    with isolated_env(jm_settings, clickhouse_url, "snap",
                      JOURNEYMAP_KAFKA__PARTITIONS="2",
                      JOURNEYMAP_WORKER__SNAPSHOT_EVERY_S="2",
                      JOURNEYMAP_WORKER__BATCH_MAX="500") as env:
        yield env


@pytest.mark.timeout(600)
def test_worker_writes_the_replays_snapshots(env: dict[str, str], tmp_path: Path,
                                             jm_settings: Settings) -> None:
    path, sim, sentinels, cutoff_ms = history(tmp_path, customers=400, seed=29, sentinels=24)

    replay_db = tmp_path / "replay-chdb"
    run_cli(env, "replay", str(path), "--clickhouse", str(replay_db), "--quiet",
            timeout=300)
    database = env["JOURNEYMAP_CLICKHOUSE__DATABASE"]
    with connect(ClickHouseSettings(url=str(replay_db), database=database)) as store:
        want = _fingerprint(store, cutoff_ms)
        replay_segments = _scalar(store, "SELECT count() FROM segments")
    assert want["attribution"][0] > 10 and want["funnel_dropoff"][0] > 0
    assert want["scored_customers"][0] > 100
    assert want["score_history_days"][0] > 2 * want["scored_customers"][0]  # several days each

    run_cli(env, "topics", "create")
    run_cli(env, "migrate")
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--web-port", "16091",
         "--workdir", str(tmp_path / "w")],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    target = ClickHouseSettings(url=env["JOURNEYMAP_CLICKHOUSE__URL"], database=database)
    try:
        time.sleep(8)
        producer = EventProducer(jm_settings.kafka.bootstrap_servers,
                                 env["JOURNEYMAP_KAFKA__TOPICS__RAW"])
        producer.send_many(list(sim.lines))
        producer.flush()
        time.sleep(15)  # the history in before the sentinels (Kafka does not order partitions)
        producer.send_many(sentinels)
        stats = producer.close(30)
        assert stats.n_failed == 0 and stats.n_undelivered == 0
        # written on the schedule, while the worker runs
        got: dict[str, tuple] = {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            with connect(target) as store:
                got = _fingerprint(store, cutoff_ms)
            if got == want:
                break
            time.sleep(3)
        if got != want and os.environ.get("JM_DEBUG_DIR"):
            d = Path(os.environ["JM_DEBUG_DIR"])
            q = ("SELECT model, level, key, conversions_attributed, revenue_attributed FROM "
                 "attribution WHERE as_of = (SELECT max(as_of) FROM attribution) ORDER BY 1,2,3")
            q2 = "SELECT customer_id, ts, segment FROM customer_scores ORDER BY 1"
            q3 = ("SELECT funnel, stage, cohort_week, shard, segment, entered, advanced, "
                  "dropped FROM funnel_dropoff ORDER BY 1,2,3,4,5")
            for name, url in (("stream", target), ("replay", ClickHouseSettings(
                    url=str(replay_db), database=database))):
                with connect(url) as store:
                    for tag, qq in (("attr", q), ("scores", q2), ("funnel", q3)):
                        (d / f"{name}.{tag}").write_text(
                            "\n".join(map(repr, run_query(store, qq, {}).rows)))
        assert got == want, {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        with connect(target) as store:
            before_stop = _scalar(store, "SELECT count(DISTINCT as_of) FROM attribution")
            if replay_segments:
                assert _scalar(store, "SELECT count() FROM segments") > 0
        stop_ms = int(time.time() * 1000)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=90)
        except subprocess.TimeoutExpired:
            worker.kill()
    # and once more at shutdown
    with connect(target) as store:
        last = _scalar(store, "SELECT toUnixTimestamp64Milli(max(as_of)) FROM attribution")
        assert _scalar(store, "SELECT count(DISTINCT as_of) FROM attribution") > before_stop
        assert last >= stop_ms
        assert _fingerprint(store, cutoff_ms) == want

"""The worker's serving hook (streams.serve.publish_partitions) on a real partition state and
real Redis: the scored customers' state with their open funnel stage, and forgotten customers'
state dropped from the partition once."""

from __future__ import annotations

import uuid

import orjson
import redis

from online_models.suite import CustomerModelState, Scores
from processors.chain import JourneyChain
from processors.config import FunnelConfig, ProcessingConfig
from sinks.serving import ServingStore
from streams.app import PartitionState
from streams.serve import publish_partitions
from tests.factories import HOUR_MS, T0_MS, journey

FUNNEL = FunnelConfig.model_validate({"name": "signup", "stages": [
    {"name": "visit", "touchpoints": ["landing_page"]},
    {"name": "signed_up", "touchpoints": ["signup"]},
    {"name": "bought", "touchpoints": ["purchase"]},
]})


def _scores(cid: str, ts_ms: int) -> Scores:
    return Scores(cid, ts_ms, "browsers", 0.4, 0.1, (("n_sessions", 1.0),), "demo_offer", 0.05,
                  None, None, None)


async def test_publish_and_forget_on_a_partition(redis_test_url: str):
    group = f"pub-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_test_url)
    store = ServingStore(client, f"jm:serve:{group}", f"jm:id:{group}")
    try:
        client.hset(f"jm:id:{group}:r", "c_00000000000000a1", "[]")  # a current customer
        part = PartitionState(JourneyChain(ProcessingConfig(funnels=[FUNNEL])))
        events = journey("c_00000000000000a1", "landing_page signup", gap_ms=HOUR_MS)
        part.chain.process_resolved(events)
        part.chain.finish()  # release everything to the funnels
        assert part.chain.funnels.customer("c_00000000000000a1")
        n = await publish_partitions(store, [(part, [_scores("c_00000000000000a1", T0_MS),
                                                     _scores("c_00000000000000a1",
                                                             T0_MS + 2 * HOUR_MS)])])
        assert n == 1
        found = store.find(customer_id="c_00000000000000a1")
        assert found is not None and found.state is not None
        assert found.state["last_event_at_ms"] == T0_MS + 2 * HOUR_MS  # the latest scores win
        (funnel,) = found.state["funnels"]
        assert (funnel["funnel"], funnel["stage"]) == ("signup", "signed_up")
        assert funnel["time_in_stage_s"] == 3600.0

        # forgotten: the partition drops the customer on its next batch, once
        part.model_states["c_00000000000000a1"] = CustomerModelState(None)  # type: ignore[arg-type]
        part.last_scores["c_00000000000000a1"] = _scores("c_00000000000000a1", T0_MS)
        store.mark_forgotten("c_00000000000000a1", 1)
        assert await publish_partitions(store, [(part, [])]) == 0
        assert "c_00000000000000a1" not in part.model_states
        assert "c_00000000000000a1" not in part.last_scores
        assert "c_00000000000000a1" not in part.chain.journeys.customers
        assert not part.chain.funnels.customer("c_00000000000000a1")
        assert store.find(customer_id="c_00000000000000a1") is None
        assert store.forgotten() == set()
    finally:
        leftover = list(client.scan_iter(f"jm:*:{group}*"))
        if leftover:
            client.delete(*leftover)
        client.close()


async def test_redis_down_does_not_stop_the_worker():
    store = ServingStore("redis://127.0.0.1:1/0", "jm:serve:x", "jm:id:x", socket_timeout_s=0.2)
    part = PartitionState(JourneyChain(ProcessingConfig()))
    n = await publish_partitions(store, [(part, [_scores("c_00000000000000a2", T0_MS)])],
                                 retry_total_s=0.5)
    assert n == 0  # warned and skipped: customer_scores in ClickHouse keeps the rows


def test_states_are_written_in_rounds_and_a_later_state_wins(redis_test_url: str):
    """More states than one MSET round takes: each stored as JSON under its key, counted, and
    a customer written twice in one round keeps the later state."""
    from sinks import serving

    group = f"w-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_test_url)
    store = ServingStore(client, f"jm:serve:{group}", f"jm:id:{group}")
    try:
        n = 2 * serving.BATCH + 5
        states = [{"customer_id": f"c{i}", "stage": i} for i in range(n)]
        states.insert(3, {"customer_id": "c7", "stage": -1})  # before c7's own: c7's wins
        assert store.write(iter(states)) == n + 1
        stored = client.mget([store.state_key(f"c{i}") for i in range(n)])
        assert [orjson.loads(v) for v in stored] == \
            [{"customer_id": f"c{i}", "stage": i} for i in range(n)]
        assert store.write([]) == 0
    finally:
        leftover = list(client.scan_iter(f"jm:*:{group}*"))
        if leftover:
            client.delete(*leftover)
        client.close()

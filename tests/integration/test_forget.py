"""`journeymap forget` on demo data: afterwards no store has the customer.

A small simulated history is replayed into embedded chDB with the serving state in Redis (under
prefixes unique to the test), an experiment assignment is added, then one customer is forgotten
by their email. Every ClickHouse table, the Redis keys, the serving API and a worker-like
partition state are searched for them afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from processors.experiments import Assignment
from simulator.model import SimConfig, simulate
from simulator.writer import write_simulation
from sinks import experiments as xs
from sinks.clickhouse import connect, migrate
from streams.commands.forget import forget_identifier
from streams.replay import Replayer
from streams.serve import _publish_sync, publish_replay, serving_store
from streams.settings import Settings
from streams.web.app import create_app

TOKEN = "forget-test-token-0123456789"


@pytest.fixture
def demo(tmp_path: Path, redis_test_url: str) -> Iterator[dict[str, Any]]:
    group = f"forget-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        redis={"url": redis_test_url},
        kafka={"consumer_group": group},
        clickhouse={"url": str(tmp_path / "chdb")},
        serving={"tokens": [{"name": "t", "token": TOKEN, "role": "reader"}]},
    )
    sim = simulate(SimConfig(customers=150, seed=5))
    events = tmp_path / "events.jsonl"
    write_simulation(sim, events)
    store = connect(settings.clickhouse)
    migrate(store)
    replayer = Replayer(settings.processing(), store)
    replayer.run([events])
    serving = serving_store(settings)
    publish_replay(replayer, serving)
    client = redis.Redis.from_url(redis_test_url)
    try:
        yield {"settings": settings, "store": store, "replayer": replayer, "events": events,
               "serving": serving, "redis": client, "group": group}
    finally:
        leftover = list(client.scan_iter(f"jm:*:{group}*"))
        if leftover:
            client.delete(*leftover)
        client.close()
        serving.close()
        store.close()


def _email_with_most_events(events: Path) -> str:
    counts: dict[str, int] = {}
    for line in events.read_bytes().splitlines():
        try:
            email = orjson.loads(line).get("identities", {}).get("email")
        except orjson.JSONDecodeError:
            continue
        if isinstance(email, str):
            counts[email] = counts.get(email, 0) + 1
    return max(counts, key=lambda e: (counts[e], e))


def _mentions(store: Any, ids: list[str]) -> dict[str, int]:
    """Rows mentioning any of `ids` in any column of any table, searched as text."""
    out = {}
    tables = store.client.query(
        "SELECT name FROM system.tables WHERE database = {db:String} "
        "AND engine LIKE '%MergeTree' AND name != 'deletions'",
        parameters={"db": store.database},
    ).result_rows
    for (table,) in tables:
        n = store.client.query(
            f"SELECT count() FROM `{table}` WHERE multiSearchAny(toString(tuple(*)), "
            "{ids:Array(String)})",
            parameters={"ids": ids},
        ).result_rows[0][0]
        out[table] = int(n)
    return out


def test_forget_removes_the_customer_from_every_store(demo: dict[str, Any]):
    settings, store, replayer = demo["settings"], demo["store"], demo["replayer"]
    email = _email_with_most_events(demo["events"])
    cid = replayer.chain.resolver.customer_of("email", email)
    assert cid is not None
    xs.record_assignments(store, [Assignment("exp", cid, "b", "all", 0)])
    before = _mentions(store, [cid])
    assert before["touchpoints"] > 0 and before["identity_links"] > 0
    assert before["experiment_assignments"] == 1
    assert before["customer_score_history"] > 1  # several days of scores
    node_keys = [k for k, _ in replayer.chain.resolver.store.members_of(cid)]
    assert demo["serving"].find(customer_id=cid) is not None

    # the API sees the customer before
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert http.get(f"/api/customers/email/{email}", headers=auth).status_code == 200

        result = forget_identifier(settings, "email", email)
        assert cid in result.customer_ids
        assert result.rows_removed["touchpoints"] == before["touchpoints"]
        assert result.rows_removed["customer_score_history"] >= before["customer_score_history"]
        assert not any(result.rows_left.values())
        assert result.redis_keys_removed["serving_state"] == 1

        # every ClickHouse table (any column, as text), the identity and serving keys, the API
        ids = result.customer_ids
        assert _mentions(store, ids) == dict.fromkeys(before, 0)
        assert store.client.query(
            "SELECT count() FROM customer_score_history WHERE customer_id IN {ids:Array(String)}",
            parameters={"ids": ids}).result_rows[0][0] == 0
        r = demo["redis"]
        group = demo["group"]
        assert not any(r.hexists(f"jm:serve:{group}:ids", k) for k in node_keys)
        assert not r.exists(f"jm:serve:{group}:c:{cid}", f"jm:serve:{group}:m:{cid}")
        assert demo["serving"].find(customer_id=cid) is None
        assert http.get(f"/api/customers/email/{email}", headers=auth).status_code == 404
        assert http.get(f"/api/customers/customer_id/{cid}", headers=auth).status_code == 404

    # the deletion is recorded, by hash only
    rows = store.client.query(
        "SELECT id_kind, id_hash, n_customers, rows_removed FROM deletions"
    ).result_rows
    assert len(rows) == 1
    kind, id_hash, n, removed = rows[0]
    assert (kind, n) == ("email", len(ids))
    assert id_hash == replayer.chain.resolver.hash_of("email", email)
    assert removed["touchpoints"] == before["touchpoints"]
    assert email not in str(rows)

    # a worker holding the customer drops its state on its next batch, once
    assert cid in replayer.model_states or cid in replayer.last_scores
    _publish_sync(demo["serving"], [(replayer, [])])
    assert cid not in replayer.model_states and cid not in replayer.last_scores
    assert cid not in replayer.chain.journeys.customers
    assert cid not in demo["serving"].forgotten()

    # forgetting again finds nobody
    assert forget_identifier(settings, "email", email).customer_ids == []


def test_forget_dry_run_changes_nothing(demo: dict[str, Any]):
    settings, store, replayer = demo["settings"], demo["store"], demo["replayer"]
    email = _email_with_most_events(demo["events"])
    cid = replayer.chain.resolver.customer_of("email", email)
    before = _mentions(store, [cid])
    result = forget_identifier(settings, "email", email, dry_run=True)
    assert result.rows_removed["touchpoints"] == before["touchpoints"]
    assert _mentions(store, [cid]) == before
    assert demo["serving"].find(customer_id=cid) is not None

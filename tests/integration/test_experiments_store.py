"""The experiment loop on ClickHouse (embedded chDB): the API records an intervention, customers
are assigned, outcomes come from `touchpoints` through the `experiment_outcomes` view, and the
results (API and CLI) match scipy on the same counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from scipy import stats

from processors.experiments import Assignment
from sinks import experiments as xs
from sinks.clickhouse import connect, migrate
from streams.cli import cli
from streams.settings import Settings
from streams.web.app import create_app

WRITER = "writer-token-0123456789"
READER = "reader-token-0123456789"
DAY_MS = 86_400_000
T0 = 1_772_323_200_000  # 2026-03-01


def _touchpoint(i: int, cid: str, touchpoint: str, at_ms: int) -> dict[str, Any]:
    return {"event_id": f"e{i}", "occurred_at": at_ms, "customer_id": cid, "channel": "web",
            "touchpoint": touchpoint, "session_id": "s", "segment": "x", "revenue": 0.0,
            "properties": {}, "has_text": False, "sentiment": None, "ingested_at": at_ms}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(clickhouse={"url": str(tmp_path / "chdb")}, serving={"tokens": [
        {"name": "growth", "token": WRITER, "role": "writer"},
        {"name": "bi", "token": READER, "role": "reader"},
    ]})
    with connect(s.clickhouse) as store:
        migrate(store)
        # 2 segments x 2 variants; converted = a purchase after the assignment
        plan = {("s1", "control"): (200, 20), ("s1", "b"): (200, 36),
                ("s2", "control"): (150, 30), ("s2", "b"): (160, 33)}
        assignments, rows, i = [], [], 0
        for (segment, variant), (n, x) in plan.items():
            for k in range(n):
                cid = f"c_{segment}{variant}{k}"
                assignments.append(Assignment("checkout", cid, variant, segment, T0))
                if k < x:
                    rows.append(_touchpoint(i := i + 1, cid, "purchase", T0 + DAY_MS))
                elif k < x + 5:  # bought before the assignment: not an outcome
                    rows.append(_touchpoint(i := i + 1, cid, "purchase", T0 - DAY_MS))
                rows.append(_touchpoint(i := i + 1, cid, "landing_page", T0 + 1000))
        xs.record_assignments(store, assignments)
        writer = store.writer()
        writer.add("touchpoints", rows)
        writer.flush()
    return s


def test_api_records_and_analyses(settings: Settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        w = {"Authorization": f"Bearer {WRITER}"}
        r_ = {"Authorization": f"Bearer {READER}"}
        body = {"name": "one-click checkout", "experiment": "checkout",
                "variants": ["control", "b"], "control": "control",
                "outcome_touchpoints": ["purchase"], "started_at": "2026-03-01T00:00:00Z",
                "planned_n_per_variant": 300}
        r = http.post("/api/experiments/interventions", json=body, headers=w)
        assert r.status_code == 201, r.text
        r = http.post("/api/experiments/interventions", headers=w, json={
            "name": "winter sale", "segment": "s1", "started_at": "2026-02-20T00:00:00Z",
            "ended_at": "2026-03-10T00:00:00Z"})
        assert r.json()["overlapping"] == ["one-click checkout"]

        r = http.get("/api/experiments/checkout/results", headers=r_)
        assert r.status_code == 200, r.text
        res = r.json()
        by = {(c["segment"], c["variant"]): c for c in res["comparisons"]}
        assert set(by) == {("*", "b"), ("s1", "b"), ("s2", "b")}
        s1 = by[("s1", "b")]
        assert (s1["n"], s1["conversions"], s1["control_n"], s1["control_conversions"]) == (
            200, 36, 200, 20)
        _, p, _, _ = stats.chi2_contingency([[20, 180], [36, 164]], correction=False)
        assert s1["p_value"] == pytest.approx(p, rel=1e-9)
        overall = by[("*", "b")]
        assert (overall["n"], overall["conversions"]) == (360, 69)
        assert any("winter sale" in w_ for w_ in res["warnings"])
        # below the planned 300 per variant in each segment: peeking
        assert any("peeking" in w_ for w_ in s1["warnings"])
        assert not overall["warnings"]

        # bad input: clear 4xx
        assert http.get("/api/experiments/nope/results", headers=r_).status_code == 404
        assert http.get("/api/experiments/x'%20OR%201=1/results", headers=r_).status_code == 422
        bad = dict(body, control="c")
        r = http.post("/api/experiments/interventions", json=bad, headers=w)
        assert r.status_code == 422 and "control must be one of the variants" in r.text
        r = http.post("/api/experiments/interventions", json=dict(body, extra=1), headers=w)
        assert r.status_code == 422
        r = http.post("/api/experiments/interventions", json=body, headers=r_)
        assert r.status_code == 403


def test_cli_record_analyse_save(settings: Settings, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("JOURNEYMAP_CLICKHOUSE__URL", settings.clickhouse.url)
    runner = CliRunner()
    r = runner.invoke(cli, ["experiments", "record", "one-click checkout", "--started-at",
                            "2026-03-01T00:00:00Z", "--experiment", "checkout", "--variants",
                            "control,b", "--control", "control", "--outcome", "purchase"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["experiments", "record", "x", "--started-at", "2026-03-01T00:00:00Z",
                            "--experiment", "e2", "--variants", "a"])
    assert r.exit_code == 2 and "at least two distinct variants" in r.output
    r = runner.invoke(cli, ["experiments", "analyse", "checkout", "--json", "--save"])
    assert r.exit_code == 0, r.output
    out = orjson.loads(r.output)
    assert any("no planned sample size" in w for w in out["warnings"])
    with connect(settings.clickhouse) as store:
        saved = store.client.query(
            "SELECT segment, n, conversions FROM experiment_results FINAL ORDER BY segment"
        ).result_rows
    assert saved == [("*", 360, 69), ("s1", 200, 36), ("s2", 160, 33)]
    r = runner.invoke(cli, ["experiments", "analyse", "missing"])
    assert r.exit_code != 0 and "no intervention names experiment" in r.output

    # assign: customers already assigned keep their variant; a new one gets its hash's
    with connect(settings.clickhouse) as store:
        writer = store.writer()
        writer.add("touchpoints", [_touchpoint(10**6, "c_newcomer", "landing_page", T0)])
        writer.flush()
    r = runner.invoke(cli, ["experiments", "assign", "checkout"])
    assert r.exit_code == 0, r.output
    assert "assigned 1 new customers (710 already assigned)" in r.output
    from processors.experiments import assign_variant

    with connect(settings.clickhouse) as store:
        rows = store.client.query(
            "SELECT variant, assigned_at FROM experiment_assignments FINAL "
            "WHERE customer_id = 'c_newcomer'").result_rows
    assert [r[0] for r in rows] == [assign_variant("checkout", "c_newcomer", ["control", "b"])]
    assert int(rows[0][1].timestamp() * 1000) == T0  # the intervention's start


def test_api_assigns_once_by_any_identifier(settings: Settings, redis_test_url: str):
    import uuid

    import redis

    from processors.config import IdentityConfig
    from processors.experiments import assign_variant
    from processors.identity import IdentityResolver
    from sinks.serving import ServingStore

    group = f"assign-{uuid.uuid4().hex[:10]}"
    s = settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"url": redis_test_url}),
        "kafka": settings.kafka.model_copy(update={"consumer_group": group}),
    })
    hasher = IdentityResolver(IdentityConfig(), s.identity_salt.get_secret_value())
    key = hasher.key_of("email", "ada@example.com")
    client = redis.Redis.from_url(redis_test_url)
    serving = ServingStore(client, f"jm:serve:{group}", f"jm:id:{group}")
    serving.write_identifiers([("c_00000000000000ad", [key])])
    serving.write([{"customer_id": "c_00000000000000ad", "segment": "s1"}])
    try:
        with TestClient(create_app(s), raise_server_exceptions=False) as http:
            w = {"Authorization": f"Bearer {WRITER}"}
            http.post("/api/experiments/interventions", headers=w, json={
                "name": "one-click checkout", "experiment": "checkout",
                "variants": ["control", "b"], "control": "control",
                "outcome_touchpoints": ["purchase"], "started_at": "2026-03-01T00:00:00Z"})
            r = http.post("/api/experiments/checkout/assign", headers=w,
                          json={"kind": "email", "value": " ADA@example.com"})
            assert r.status_code == 200, r.text
            expected = assign_variant("checkout", "c_00000000000000ad", ["control", "b"])
            assert r.json() == {"customer_id": "c_00000000000000ad", "variant": expected,
                                "new": True}
            r = http.post("/api/experiments/checkout/assign", headers=w,
                          json={"kind": "customer_id", "value": "c_00000000000000ad"})
            assert r.json()["new"] is False and r.json()["variant"] == expected
            r = http.post("/api/experiments/checkout/assign", headers=w,
                          json={"kind": "email", "value": "nobody@example.com"})
            assert r.status_code == 404
            r = http.post("/api/experiments/nope/assign", headers=w,
                          json={"kind": "email", "value": "ada@example.com"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_experiment"
        with connect(s.clickhouse) as store:
            rows = store.client.query(
                "SELECT customer_id, variant, segment FROM experiment_assignments FINAL "
                "WHERE customer_id = 'c_00000000000000ad'").result_rows
        assert rows == [("c_00000000000000ad", expected, "s1")]
    finally:
        leftover = list(client.scan_iter(f"jm:*:{group}*"))
        if leftover:
            client.delete(*leftover)
        client.close()

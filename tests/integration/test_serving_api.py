"""The serving API against real Redis: lookups by every identifier kind, auth, and bad input.

The identity graph is written by the real resolver on Redis (the workers' store), the serving
state by sinks.serving; keys live under prefixes unique to the test and are removed after it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from online_models.suite import Scores
from processors.config import IdentityConfig
from processors.funnels import CustomerFunnel
from processors.identity import IdentityResolver
from sinks.identity_redis import RedisIdentityStore
from sinks.serving import ServingStore, state_of
from streams.settings import Settings
from streams.web.app import create_app
from tests.factories import T0_MS, event

SALT = "test-salt-serving"
READER = "r" * 24
PII = "p" * 24
WRITER = "w" * 24


@pytest.fixture
def served(redis_test_url: str) -> Iterator[dict[str, Any]]:
    group = f"svc-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        redis={"url": redis_test_url},
        kafka={"consumer_group": group},
        identity_salt=SALT,
        serving={"tokens": [
            {"name": "crm", "token": READER, "role": "reader"},
            {"name": "dpo", "token": PII, "role": "pii"},
            {"name": "growth", "token": WRITER, "role": "writer"},
        ]},
    )
    client = redis.Redis.from_url(redis_test_url)
    resolver = IdentityResolver(IdentityConfig(), SALT,
                                RedisIdentityStore(redis_test_url, prefix=f"jm:id:{group}"))
    result = resolver.resolve_batch([
        event("landing_page", at_ms=T0_MS, anonymous_id="anon-42", device_id="dev-42"),
        event("signup", at_ms=T0_MS + 1000, anonymous_id="anon-42", email=" Ada@Example.com ",
              user_id="u-42", crm_id="crm-42"),
        event("landing_page", at_ms=T0_MS + 2000, anonymous_id="anon-unscored"),
    ])
    cid = result.resolved[1].customer_id
    assert result.resolved[0].customer_id == cid
    store = ServingStore(client, f"jm:serve:{group}", f"jm:id:{group}")
    scores = Scores(cid, T0_MS + 61_000, "browsers", 0.31, 0.12,
                    (("n_sessions", 0.8), ("pricing_views", 0.4)), "demo_offer", 0.07, None,
                    "positive", 0.6)
    funnel = CustomerFunnel("signup", 1, "signed_up", T0_MS + 1000, T0_MS, "browsers",
                            T0_MS // 1000)  # type: ignore[arg-type]
    store.write([state_of(scores, [funnel], T0_MS + 62_000)])
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield {"http": http, "cid": cid, "group": group, "resolver": resolver, "store": store}
    leftover = list(client.scan_iter(f"jm:*:{group}*"))
    if leftover:
        client.delete(*leftover)
    client.close()


def get(served: dict[str, Any], path: str, token: str | None = READER) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return served["http"].get(path, headers=headers)


@pytest.mark.parametrize(("kind", "value"), [
    ("anonymous_id", "anon-42"), ("device_id", "dev-42"), ("user_id", "u-42"),
    ("email", "ada@example.com"), ("email", "  ADA@example.COM"), ("crm_id", "crm-42"),
])
def test_every_identifier_kind_finds_the_customer(served: dict[str, Any], kind: str, value: str):
    r = get(served, f"/api/customers/{kind}/{value}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["customer_id"] == served["cid"]
    assert body["scored"] is True
    assert body["segment"] == "browsers"
    assert body["p_convert"] == pytest.approx(0.31)
    assert body["next_best_action"] == "demo_offer"
    assert body["expected_lift"] == pytest.approx(0.07)
    assert body["top_features"][0] == {"feature": "n_sessions", "weight": 0.8}
    assert body["funnels"] == [{"funnel": "signup", "stage": "signed_up", "stage_index": 1,
                                "stage_entered_at": "2026-03-01T00:00:01.000Z",
                                "time_in_stage_s": 60.0}]
    kinds = sorted(i["kind"] for i in body["identifiers"])
    assert kinds == ["anonymous_id", "crm_id", "device_id", "email", "user_id"]
    hashes = {i["hash"] for i in body["identifiers"]}
    assert served["resolver"].hash_of("email", "ada@example.com") in hashes
    assert "ada@example.com" not in r.text and "u-42" not in r.text  # hashes only


def test_customer_id_and_hashed_lookups(served: dict[str, Any]):
    cid = served["cid"]
    assert get(served, f"/api/customers/customer_id/{cid}").json()["customer_id"] == cid
    h = served["resolver"].hash_of("user_id", "u-42")
    r = get(served, f"/api/customers/user_id/{h}?hashed=true")
    assert r.status_code == 200 and r.json()["customer_id"] == cid
    # the same hash under another kind is another node: unknown
    assert get(served, f"/api/customers/email/{h}?hashed=true").status_code == 404


def test_known_but_unscored_customer(served: dict[str, Any]):
    r = get(served, "/api/customers/anonymous_id/anon-unscored")
    assert r.status_code == 200
    assert r.json()["scored"] is False and r.json()["segment"] is None


def test_pii_role_gets_hashes_too(served: dict[str, Any]):
    r = get(served, "/api/customers/email/ada@example.com", token=PII)
    assert r.status_code == 200
    assert "ada@example.com" not in r.text


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    for leak in ("Traceback", "File \"", "redis", "Redis<", SALT, "jm:id", "jm:serve"):
        assert leak not in r.text
    return body


def test_unknown_identifiers_are_404(served: dict[str, Any]):
    _error(get(served, "/api/customers/email/nobody@example.com"), 404, "unknown_identifier")
    _error(get(served, "/api/customers/customer_id/c_0000000000000000"), 404, "unknown_identifier")


@pytest.mark.parametrize(("path", "code"), [
    ("/api/customers/customer_id/c_123", "malformed_identifier"),
    ("/api/customers/customer_id/C_0123456789ABCDEF", "malformed_identifier"),
    ("/api/customers/user_id/%20%20", "malformed_identifier"),
    ("/api/customers/user_id/a%00b", "malformed_identifier"),
    ("/api/customers/user_id/" + "x" * 513, "malformed_identifier"),
    ("/api/customers/email/null", "placeholder_identifier"),
    ("/api/customers/anonymous_id/anonymous", "placeholder_identifier"),
    ("/api/customers/user_id/abc?hashed=true", "malformed_identifier"),
    ("/api/customers/customer_id/c_0123456789abcdef?hashed=true", "invalid_request"),
    ("/api/customers/phone/123", "invalid_request"),
    ("/api/customers/user_id/u-42?hashed=maybe", "invalid_request"),
])
def test_malformed_identifiers_are_422(served: dict[str, Any], path: str, code: str):
    _error(get(served, path), 422, code)


@pytest.mark.parametrize("value", [
    "' OR '1'='1", "1; DROP TABLE touchpoints; --", "u-42' UNION SELECT * FROM identity_links --",
    "\" OR \"\"=\"", "*", "u-4%", "<b onmouseover=alert(1)>",
])
def test_sql_like_strings_are_just_unknown_identifiers(served: dict[str, Any], value: str):
    from urllib.parse import quote

    _error(get(served, f"/api/customers/user_id/{quote(value, safe='')}"), 404,
           "unknown_identifier")
    _error(get(served, f"/api/customers/customer_id/{quote(value, safe='')}"), 422,
           "malformed_identifier")


def test_auth(served: dict[str, Any]):
    path = "/api/customers/user_id/u-42"
    r = get(served, path, token=None)
    _error(r, 401, "missing_token")
    assert r.headers["www-authenticate"] == "Bearer"
    _error(get(served, path, token="not-a-token"), 401, "invalid_token")
    _error(get(served, path, token=READER + "x"), 401, "invalid_token")
    r = served["http"].get(path, headers={"Authorization": f"Basic {READER}"})
    _error(r, 401, "missing_token")
    # a reader may not record interventions
    r = served["http"].post("/api/experiments/interventions", json={},
                            headers={"Authorization": f"Bearer {READER}"})
    _error(r, 403, "forbidden")


def test_unknown_endpoint_and_method(served: dict[str, Any]):
    _error(get(served, "/api/nothing/here"), 404, "not_found")
    _error(get(served, "/api/customers/user_id/a/b"), 404, "not_found")
    _error(get(served, "/api/customers/user_id/..%2F..%2Fetc%2Fpasswd"), 404, "not_found")
    r = served["http"].delete("/api/customers/user_id/u-42",
                              headers={"Authorization": f"Bearer {READER}"})
    _error(r, 405, "method_not_allowed")


def test_redis_down_is_503_without_details(redis_test_url: str):
    settings = Settings(
        redis={"url": "redis://127.0.0.1:1/0"}, identity_salt=SALT,
        serving={"tokens": [{"name": "crm", "token": READER, "role": "reader"}]},
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        r = http.get("/api/customers/user_id/u-42", headers={"Authorization": f"Bearer {READER}"})
    body = _error(r, 503, "service_unavailable")
    assert "127.0.0.1:1" not in r.text, body


def test_openapi_documents_the_api(served: dict[str, Any]):
    spec = served["http"].get("/openapi.json").json()
    op = spec["paths"]["/api/customers/{kind}/{value}"]["get"]
    assert {"401", "403", "404", "422", "503"} <= set(op["responses"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert "/api/experiments/{experiment}/results" in spec["paths"]


def test_a_merged_away_customer_id_is_not_served(served: dict[str, Any]):
    # a state left under an id the identity graph no longer has as a customer (merged away)
    served["store"].write([{"customer_id": "c_00000000000000ff", "segment": "stale"}])
    r = get(served, "/api/customers/customer_id/c_00000000000000ff")
    _error(r, 404, "unknown_identifier")


def test_an_unexpected_error_is_500_without_details(served: dict[str, Any], monkeypatch):
    from streams.web import api

    def boom(request: Any) -> Any:
        raise RuntimeError("secret detail at /srv/journeymap/internal.py")

    monkeypatch.setattr(api, "_reader", boom)
    r = get(served, "/api/customers/user_id/u-42")
    _error(r, 500, "internal_error")
    assert "secret" not in r.text and "RuntimeError" not in r.text

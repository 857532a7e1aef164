"""`journeymap alerts webhook` against real Kafka and a real HTTP server on 127.0.0.1.

The server fails the first attempts of some alerts (503, a dropped connection), refuses one
(400) and is down for another: every deliverable alert arrives exactly once, in order, with its
Idempotency-Key; the others are parked on the dead-letter topic with their reason and original
bytes; every offset is committed; a second run delivers nothing again; an alert interrupted while
retrying is not committed and arrives, once, on the next run.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition

from sinks.alerts import WebhookDelivery, WebhookPolicy, WebhookRunner, encode_alert
from streams.cli import cli
from tests.integration.test_alerts_tail import make_alert, produce


class Hook:
    """Per alert id: how many attempts fail first, and how ("503", "drop", "400", "down")."""

    def __init__(self) -> None:
        self.plan: dict[str, tuple[str, int]] = {}
        self.attempts: Counter[str] = Counter()
        self.delivered: list[tuple[str, bytes, str]] = []
        self.lock = threading.Lock()

    def answer(self, key: str, body: bytes, attempt_header: str) -> str:
        with self.lock:
            self.attempts[key] += 1
            how, n_fail = self.plan.get(key, ("ok", 0))
            if how in ("400", "down") or self.attempts[key] <= n_fail:
                return {"down": "503"}.get(how, how)
            self.delivered.append((key, body, attempt_header))
            return "200"


@pytest.fixture
def hook() -> Iterator[tuple[Hook, str]]:
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            verdict = state.answer(self.headers["Idempotency-Key"], body,
                                   self.headers["X-Journeymap-Attempt"])
            if verdict == "drop":
                self.close_connection = True
                self.connection.close()  # no response at all
                return
            self.send_response(int(verdict))
            self.end_headers()
            self.wfile.write(b"no thanks" if verdict == "400" else b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def topics(make_topic: Callable[..., str], consumer_group: str,
           monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    names = {"alerts": make_topic("alerts"), "dlq": make_topic("alerts-dlq"),
             "group": consumer_group}
    for var, value in {
        "KAFKA__TOPICS__ALERTS": names["alerts"],
        "KAFKA__TOPICS__ALERTS_DLQ": names["dlq"],
        "ALERTS_WEBHOOK__CONSUMER_GROUP": consumer_group,
        "ALERTS_WEBHOOK__BACKOFF_INITIAL_S": "0.05",
        "ALERTS_WEBHOOK__BACKOFF_MAX_S": "0.2",
        "ALERTS_WEBHOOK__GIVE_UP_AFTER_S": "1.5",
        "ALERTS_WEBHOOK__REQUEST_TIMEOUT_S": "5",
    }.items():
        monkeypatch.setenv(f"JOURNEYMAP_{var}", value)
    return names


def read_all(bootstrap: str, topic: str, n: int) -> list[Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: list[Any] = []
    for _ in range(40):
        got += consumer.consume(n - len(got), timeout=0.5)
        if len(got) >= n:
            break
    consumer.close()
    return got


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    consumer.close()
    return int(tp.offset)


def test_every_alert_once_failures_parked_offsets_committed(
    kafka_bootstrap: str, topics: dict[str, str], hook: tuple[Hook, str]
) -> None:
    state, url = hook
    alerts = [make_alert(i) for i in range(1, 8)]
    ids = [a.alert_id for a in alerts]
    state.plan = {ids[0]: ("503", 2), ids[1]: ("drop", 1), ids[2]: ("400", 0),
                  ids[3]: ("503", 1), ids[4]: ("down", 0)}
    values = [encode_alert(a) for a in alerts]
    produce(kafka_bootstrap, topics["alerts"], [*values[:3], b"{broken", *values[3:]])

    result = CliRunner().invoke(cli, ["alerts", "webhook", "--url", url, "--timeout", "4"])
    assert result.exit_code == 0, result.output
    good = [ids[i] for i in (0, 1, 3, 5, 6)]
    assert [k for k, _, _ in state.delivered] == good  # once each, in topic order
    assert {k: b for k, b, _ in state.delivered} == {ids[i]: values[i] for i in (0, 1, 3, 5, 6)}
    assert [a for k, _, a in state.delivered] == ["3", "2", "2", "1", "1"]
    assert state.attempts[ids[2]] == 1  # a 400 is not retried
    assert state.attempts[ids[4]] >= 3  # retried until give_up_after_s
    assert "5 delivered, 3 parked" in result.stderr

    parked = read_all(kafka_bootstrap, topics["dlq"], 3)
    assert [m.value() for m in parked] == [values[2], b"{broken", values[4]]
    reasons = [dict(m.headers())["jm-reason"].decode() for m in parked]
    assert reasons[0].startswith("refused by the endpoint: HTTP 400: no thanks")
    assert reasons[1].startswith("bad alert message: not an alert")
    assert reasons[2].startswith("gave up after") and "HTTP 503" in reasons[2]
    assert dict(parked[0].headers())["jm-url"] == url.encode()
    assert committed(kafka_bootstrap, topics["group"], topics["alerts"]) == 8

    again = CliRunner().invoke(cli, ["alerts", "webhook", "--url", url, "--timeout", "3"])
    assert again.exit_code == 0, again.output
    assert len(state.delivered) == 5 and "0 delivered, 0 parked" in again.stderr


def test_an_alert_interrupted_while_retrying_is_delivered_by_the_next_run(
    kafka_bootstrap: str, topics: dict[str, str], hook: tuple[Hook, str]
) -> None:
    state, url = hook
    first, second = make_alert(1), make_alert(2)
    state.plan = {first.alert_id: ("503", 10**6)}  # down until we say so
    produce(kafka_bootstrap, topics["alerts"], [encode_alert(first), encode_alert(second)])
    policy = WebhookPolicy(url, 5.0, 0.05, 0.1, give_up_after_s=600)

    def runner(stop: threading.Event) -> WebhookRunner:
        return WebhookRunner(kafka_bootstrap, topics["alerts"], topics["dlq"], topics["group"],
                             WebhookDelivery(policy, stop))

    stop = threading.Event()
    crashed = runner(stop)
    thread = threading.Thread(target=crashed.run, kwargs={"max_idle_s": 60})
    thread.start()
    for _ in range(200):
        if state.attempts[first.alert_id] >= 3:
            break
        threading.Event().wait(0.05)
    stop.set()  # what SIGTERM does
    thread.join(30)
    assert not thread.is_alive()
    assert crashed.stats.delivered == crashed.stats.parked == 0
    assert committed(kafka_bootstrap, topics["group"], topics["alerts"]) < 0  # nothing yet

    state.plan = {}  # the endpoint is back
    stats = runner(threading.Event()).run(max_alerts=2, max_idle_s=20)
    assert (stats.delivered, stats.parked) == (2, 0)
    assert [k for k, _, _ in state.delivered] == [first.alert_id, second.alert_id]
    assert committed(kafka_bootstrap, topics["group"], topics["alerts"]) == 2


def test_webhook_needs_a_valid_url(topics: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["alerts", "webhook", "--url", "ftp://x/y", "--timeout", "1"])
    assert result.exit_code == 2 and "expected an http(s)" in result.output
    result = CliRunner().invoke(cli, ["alerts", "webhook", "--timeout", "1"])
    assert "pass --url or set alerts_webhook.url" in str(result.exception)

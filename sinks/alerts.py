"""Alerts on the `alerts` topic: the message schema (docs/alerts.md) and webhook delivery.

The worker encodes every :class:`online_models.drift.Alert` with :func:`encode_alert`, so what
goes on the topic always validates against :class:`AlertMessage`; consumers (`journeymap alerts
tail`, `journeymap alerts webhook`, anyone's own) decode with :func:`decode_alert`, which turns
bytes that do not fit into an :class:`AlertDecodeError` naming the field.

Webhook delivery (:class:`WebhookDelivery`) posts one alert per request with an
``Idempotency-Key`` header (the alert id), retries transient failures (connection errors,
timeouts, 408, 425, 429, 5xx) with exponential backoff and gives up after a configured time.
A permanent refusal (any other 4xx) or giving up parks the alert on the dead-letter topic with
the reason; :func:`park_record` builds that record.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from online_models.drift import Alert
from processors.errors import JourneymapError, ServiceUnavailable

SCHEMA_VERSION = 1
IDEMPOTENCY_HEADER = "Idempotency-Key"


class AlertDecodeError(JourneymapError):
    """Bytes on the alerts topic that are not an alert; the message says what is wrong."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AlertEvidence(_Frozen):
    """The numbers behind a drift alert (see docs/alerts.md)."""

    before_mean: float
    after_mean: float
    abs_change: float
    rel_change: float | None  # None when the mean before was 0
    since_ts_ms: int
    n_before: Annotated[int, Field(ge=0)]
    n_after: Annotated[int, Field(ge=0)]
    detector: str


class AlertMessage(_Frozen):
    """One message on the `alerts` topic (key = alert_id). Field by field in docs/alerts.md."""

    schema_version: Literal[1] = SCHEMA_VERSION
    alert_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    ts_ms: Annotated[int, Field(ge=0)]
    kind: Annotated[str, Field(min_length=1)]
    severity: Literal["warning", "critical"]
    segment: Annotated[str, Field(min_length=1)]
    metric: Annotated[str, Field(min_length=1)]
    message: str
    evidence: AlertEvidence


def alert_message(alert: Alert) -> AlertMessage:
    """The topic message of a model alert (raises ValidationError if the two ever disagree)."""
    return AlertMessage.model_validate(alert.to_dict())


def encode_alert(alert: Alert | AlertMessage) -> bytes:
    """The bytes the worker sends to the alerts topic."""
    msg = alert if isinstance(alert, AlertMessage) else alert_message(alert)
    return orjson.dumps(msg.model_dump())


def decode_alert(raw: bytes | None) -> AlertMessage:
    """Validate one alerts-topic value; AlertDecodeError says what is wrong with it."""
    if not raw:
        raise AlertDecodeError("empty message")
    try:
        return AlertMessage.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:5]
        )
        raise AlertDecodeError(f"not an alert ({problems})") from None


# -- webhook delivery ---------------------------------------------------------------------------

TRANSIENT_STATUS = frozenset({408, 425, 429}) | frozenset(range(500, 600))
BODY_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Where and how hard to try (from the `alerts_webhook` settings)."""

    url: str
    request_timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    give_up_after_s: float = 900.0


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Parked:
    """Not delivered: goes to the dead-letter topic with `reason`."""

    reason: str
    attempts: int
    last_status: int | None


@dataclass(frozen=True, slots=True)
class Interrupted:
    """Stopped while retrying: not delivered, not parked; the offset stays uncommitted."""

    attempts: int


Outcome = Delivered | Parked | Interrupted


def backoff_s(policy: WebhookPolicy, attempt: int, rng: random.Random) -> float:
    """Exponential, capped, with jitter in [0.5, 1) of the step so retrying senders spread out."""
    step = min(policy.backoff_max_s, policy.backoff_initial_s * 2.0 ** (attempt - 1))
    return step * (0.5 + rng.random() / 2)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would become a GET without the alert: report the 3xx instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post_once(url: str, body: bytes, headers: dict[str, str], timeout_s: float
              ) -> tuple[int | None, str]:
    """One POST: (HTTP status or None when no response came, a short description)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return response.status, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        text = exc.read(BODY_EXCERPT).decode("utf-8", "replace").strip()
        return exc.code, f"HTTP {exc.code}" + (f": {text}" if text else "")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        # refused, reset, DNS, timeout, a connection closed without (or mid-) response
        reason = getattr(exc, "reason", exc)
        return None, f"no response ({reason})"


class WebhookDelivery:
    """POST one alert until a 2xx, a permanent refusal, the give-up time, or `stop`."""

    def __init__(
        self,
        policy: WebhookPolicy,
        stop: threading.Event | None = None,
        *,
        post: Callable[[str, bytes, dict[str, str], float], tuple[int | None, str]] = post_once,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        self.policy = policy
        self.stop = stop or threading.Event()
        self._post = post
        self._clock = clock
        self._rng = random.Random(seed)

    def deliver(self, alert_id: str, body: bytes) -> Outcome:
        p = self.policy
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            headers = {
                "Content-Type": "application/json",
                IDEMPOTENCY_HEADER: alert_id,
                "User-Agent": "journeymap-alerts-webhook",
                "X-Journeymap-Attempt": str(attempt),
            }
            status, what = self._post(p.url, body, headers, p.request_timeout_s)
            if status is not None and 200 <= status < 300:
                return Delivered(status, attempt)
            if status is not None and status not in TRANSIENT_STATUS:
                return Parked(f"refused by the endpoint: {what}", attempt, status)
            delay = backoff_s(p, attempt, self._rng)
            waited = self._clock() - started
            if waited + delay > p.give_up_after_s:
                return Parked(f"gave up after {attempt} attempts in {waited:.1f}s "
                              f"(give_up_after_s={p.give_up_after_s:g}); last: {what}",
                              attempt, status)
            if self.stop.wait(delay):
                return Interrupted(attempt)


def park_headers(reason: str, url: str, outcome_attempts: int, last_status: int | None,
                 topic: str, partition: int, offset: int, now_ms: int) -> list[tuple[str, bytes]]:
    """Headers of a dead-lettered alert; the value stays the original bytes (replayable)."""
    return [
        ("jm-reason", reason.encode()),
        ("jm-url", url.encode()),
        ("jm-attempts", str(outcome_attempts).encode()),
        ("jm-last-status", str(last_status or "").encode()),
        ("jm-source", f"{topic}[{partition}]@{offset}".encode()),
        ("jm-parked-at-ms", str(now_ms).encode()),
    ]


@dataclass(slots=True)
class WebhookStats:
    delivered: int = 0
    parked: int = 0
    bad: int = 0
    attempts: int = 0


class WebhookRunner:
    """Consume the alerts topic in a consumer group and deliver each alert in order.

    The offset of an alert is committed only after its 2xx, or after it is safely on the
    dead-letter topic (flushed and acknowledged by the broker). A crash or stop in between
    leaves it uncommitted, so the next run delivers it again: at least once, and the
    ``Idempotency-Key`` lets the endpoint drop the repeat.
    """

    def __init__(self, bootstrap: str, topic: str, dlq_topic: str, group: str,
                 delivery: WebhookDelivery,
                 on_outcome: Callable[[AlertMessage | None, Outcome], None] | None = None
                 ) -> None:
        from confluent_kafka import Consumer, Producer

        self.topic, self.dlq_topic, self.delivery = topic, dlq_topic, delivery
        self.on_outcome = on_outcome
        self.stats = WebhookStats()
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",  # a new group starts at the oldest kept alert
            "enable.partition.eof": False,
        })
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                  "acks": "all"})

    def run(self, max_alerts: int | None = None, max_idle_s: float | None = None) -> WebhookStats:
        """Until `delivery.stop` is set, `max_alerts` were handled or `max_idle_s` passed idle."""
        stop = self.delivery.stop
        self.consumer.subscribe([self.topic])
        last = time.monotonic()
        handled = 0
        try:
            while not stop.is_set():
                if max_alerts is not None and handled >= max_alerts:
                    break
                if max_idle_s is not None and time.monotonic() - last >= max_idle_s:
                    break
                msg = self.consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    continue  # librdkafka reports and recovers transient errors itself
                last = time.monotonic()
                if self._handle(msg):
                    handled += 1
                else:
                    break  # interrupted: leave the offset uncommitted
                last = time.monotonic()
        finally:
            self.consumer.close()
        return self.stats

    def _handle(self, msg: Any) -> bool:
        value = msg.value() or b""
        alert: AlertMessage | None = None
        try:
            alert = decode_alert(value)
        except AlertDecodeError as exc:
            self.stats.bad += 1
            outcome: Outcome = Parked(f"bad alert message: {exc}", 0, None)
        else:
            outcome = self.delivery.deliver(alert.alert_id, value)
        self.stats.attempts += outcome.attempts
        if isinstance(outcome, Interrupted):
            return False
        if isinstance(outcome, Parked):
            self._park(msg, outcome)
            self.stats.parked += 1
        else:
            self.stats.delivered += 1
        self.consumer.commit(message=msg, asynchronous=False)
        if self.on_outcome is not None:
            self.on_outcome(alert, outcome)
        return True

    def _park(self, msg: Any, outcome: Parked) -> None:
        failures: list[Any] = []
        self.producer.produce(
            self.dlq_topic, key=msg.key(), value=msg.value(),
            headers=park_headers(outcome.reason, self.delivery.policy.url, outcome.attempts,
                                 outcome.last_status, msg.topic(), msg.partition(),
                                 msg.offset(), int(time.time() * 1000)),
            on_delivery=lambda err, _m: failures.append(err) if err is not None else None,
        )
        left = self.producer.flush(30)
        if left or failures:
            raise ServiceUnavailable(
                f"could not park an alert on {self.dlq_topic!r} "
                f"({failures[0] if failures else 'flush timed out'}); its offset is not "
                "committed, so the next run retries it. Does the topic exist? "
                "`journeymap topics create`"
            )

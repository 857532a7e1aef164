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

from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from online_models.drift import Alert
from processors.errors import JourneymapError

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

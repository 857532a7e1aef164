"""The alerts-topic schema (sinks.alerts, docs/alerts.md) matches what the drift monitor raises."""

from __future__ import annotations

import random
import re
from pathlib import Path

import orjson
import pytest

from online_models.drift import Alert, DriftMonitor
from sinks.alerts import AlertDecodeError, AlertMessage, alert_message, decode_alert, encode_alert
from tests.factories import MIN_MS, T0_MS

DOC = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"


def _real_alert() -> Alert:
    #  conversion ~ Bernoulli(0.10) ....... | Bernoulli(0.03) .......
    m, rng = DriftMonitor(), random.Random(3)
    for i in range(30_000):
        p = 0.10 if i < 15_000 else 0.03
        a = m.update("conversion_rate", "s2", float(rng.random() < p), T0_MS + i * MIN_MS,
                     binary=True)
        if a is not None:
            return a
    raise AssertionError("the injected drift raised no alert")


def test_a_raised_alert_round_trips_through_the_topic_bytes() -> None:
    alert = _real_alert()
    raw = encode_alert(alert)
    msg = decode_alert(raw)
    assert msg == alert_message(alert)
    body = orjson.loads(raw)
    assert body.pop("schema_version") == 1
    assert body == alert.to_dict()  # nothing added, dropped or renamed on the way
    assert encode_alert(msg) == raw


def test_alert_without_relative_change_is_valid() -> None:
    alert = _real_alert()
    zero_before = Alert(**{**alert.to_dict(),
                           "evidence": {**alert.evidence, "before_mean": 0.0, "rel_change": None}})
    assert decode_alert(encode_alert(zero_before)).evidence.rel_change is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "empty message"),
        (b"not json", "Invalid JSON"),
        (b'{"alert_id": "x"}', "alert_id"),
        (orjson.dumps({**_real_alert().to_dict(), "severity": "meh"}), "severity"),
        (orjson.dumps({**_real_alert().to_dict(), "surprise": 1}), "surprise"),
        (orjson.dumps({**_real_alert().to_dict(), "schema_version": 2}), "schema_version"),
    ],
)
def test_bad_messages_are_named_errors(raw: bytes, problem: str) -> None:
    with pytest.raises(AlertDecodeError, match=problem):
        decode_alert(raw)


def test_the_documented_fields_are_the_schema_fields() -> None:
    text = DOC.read_text().split("## The message", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", text, flags=re.M))
    top = set(AlertMessage.model_fields)
    evidence = {f"evidence.{f}" for f in AlertMessage.model_fields["evidence"].annotation
                .model_fields}  # type: ignore[union-attr]
    assert documented == top | evidence
    example = text.split("```json", 1)[1].split("```", 1)[0]
    decode_alert(example.encode())  # the example in the docs is a valid message

"""`journeymap alerts tail` against a real Kafka topic: filters, --json, bad messages, following."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from online_models.drift import Alert
from sinks.alerts import encode_alert
from streams.cli import cli


def make_alert(i: int, segment: str = "s1", kind: str = "drift",
               severity: str = "warning") -> Alert:
    return Alert(
        alert_id=f"{i:016x}", ts_ms=1_772_323_200_000 + i * 60_000, kind=kind,
        severity=severity,  # type: ignore[arg-type]
        segment=segment, metric="conversion_rate",
        message=f"conversion_rate in segment {segment} fell (alert {i})",
        evidence={"before_mean": 0.1, "after_mean": 0.05, "abs_change": -0.05,
                  "rel_change": -0.5, "since_ts_ms": 1_772_323_000_000, "n_before": 1000,
                  "n_after": 100 + i, "detector": "glr"},
    )


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        producer.produce(topic, value=v, key=v[:16])
    assert producer.flush(10) == 0


@pytest.fixture
def alerts_topic(make_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> str:
    topic = make_topic("alerts")
    monkeypatch.setenv("JOURNEYMAP_KAFKA__TOPICS__ALERTS", topic)
    return topic


def test_tail_from_beginning_filters_and_reports_bad_messages(
    kafka_bootstrap: str, alerts_topic: str
) -> None:
    values = [
        encode_alert(make_alert(1, "s1")),
        b'{"alert_id": "not hex"}',
        encode_alert(make_alert(2, "s2", severity="critical")),
        b"\xff\xfe garbage",
        encode_alert(make_alert(3, "s1", kind="rule")),
        encode_alert(make_alert(4, "s1")),
    ]
    produce(kafka_bootstrap, alerts_topic, values)
    runner = CliRunner()

    everything = runner.invoke(cli, ["alerts", "tail", "--from-beginning", "--timeout", "3"])
    assert everything.exit_code == 0, everything.output
    lines = everything.stdout.splitlines()
    assert [line.rsplit("[", 1)[1] for line in lines] == [
        f"{i:016x}]" for i in (1, 2, 3, 4)
    ]
    assert "CRITICAL" in lines[1] and "WARNING" in lines[0] and "(alert 2)" in lines[1]
    assert everything.stderr.count("skipped message") == 2
    assert f"{alerts_topic}[0]@1: not an alert (alert_id" in everything.stderr
    assert "4 alert(s) shown, 2 bad message(s) skipped" in everything.stderr

    filtered = runner.invoke(cli, ["alerts", "tail", "--from-beginning", "--timeout", "3",
                                   "--kind", "drift", "--segment", "s1", "--json"])
    assert filtered.exit_code == 0, filtered.output
    got = [orjson.loads(line) for line in filtered.stdout.splitlines()]
    assert [g["alert_id"] for g in got] == [f"{i:016x}" for i in (1, 4)]
    assert got[0] == orjson.loads(values[0])

    first = runner.invoke(cli, ["alerts", "tail", "--from-beginning", "--max", "2"])
    assert first.exit_code == 0, first.output
    assert len(first.stdout.splitlines()) == 2


def test_tail_follows_only_new_alerts(kafka_bootstrap: str, alerts_topic: str) -> None:
    produce(kafka_bootstrap, alerts_topic, [encode_alert(make_alert(1))])
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "alerts", "tail", "--max", "1", "--timeout", "30"],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline().decode()  # printed once the end offsets are assigned
        assert "following" in banner, banner
        produce(kafka_bootstrap, alerts_topic, [encode_alert(make_alert(7, "s9"))])
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    (line,) = out.decode().splitlines()
    assert f"[{7:016x}]" in line and " s9 " in line


def test_tail_of_a_missing_topic_says_what_to_do(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNEYMAP_KAFKA__TOPICS__ALERTS", f"missing-{time.time_ns()}")
    done = subprocess.run([sys.executable, "-m", "streams.cli", "alerts", "tail"],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 2
    assert b"journeymap topics create" in done.stderr

"""Drift: one alert per step change with evidence; silence on stationary data; cooldown."""

from __future__ import annotations

import json
import random

from online_models.drift import Alert, DriftMonitor
from tests.factories import MIN_MS, T0_MS

#  value ~ Bernoulli(0.10) ............ | Bernoulli(0.04) ..........
#  0                             20_000 ^ change                40_000


def _feed(m: DriftMonitor, seed: int, rates: list[tuple[int, float]]) -> list[Alert]:
    rng = random.Random(seed)
    alerts, i = [], 0
    for n, p in rates:
        for _ in range(n):
            a = m.update("conversion_rate", "s1", float(rng.random() < p), T0_MS + i * MIN_MS)
            i += 1
            if a is not None:
                alerts.append(a)
    return alerts


def test_step_change_raises_one_alert_with_evidence() -> None:
    m = DriftMonitor()
    alerts = _feed(m, 0, [(20_000, 0.10), (20_000, 0.04)])
    assert len(alerts) == 1
    (a,) = alerts
    delay = (a.ts_ms - T0_MS) // MIN_MS - 20_000
    assert 0 < delay < 2_000
    ev = a.evidence
    assert abs(ev["before_mean"] - 0.10) < 0.01 and abs(ev["after_mean"] - 0.04) < 0.015
    assert abs((ev["since_ts_ms"] - T0_MS) // MIN_MS - 20_000) < 600
    assert a.severity == "critical" and a.metric == "conversion_rate" and a.segment == "s1"
    assert "fell" in a.message
    assert json.loads(json.dumps(a.to_dict()))["alert_id"] == a.alert_id


def test_stationary_stream_stays_silent() -> None:
    for seed in range(3):
        m = DriftMonitor()
        assert _feed(m, seed, [(100_000, 0.05)]) == []


def test_alert_ids_are_deterministic_and_cooldown_deduplicates() -> None:
    a1 = _feed(DriftMonitor(), 4, [(20_000, 0.10), (20_000, 0.03)])
    a2 = _feed(DriftMonitor(), 4, [(20_000, 0.10), (20_000, 0.03)])
    assert [a.alert_id for a in a1] == [a.alert_id for a in a2] and len(a1) == 1
    # a second change long after the cooldown is a second alert
    m = DriftMonitor(cooldown_ms=10 * MIN_MS)
    alerts = _feed(m, 5, [(20_000, 0.10), (20_000, 0.03), (20_000, 0.10)])
    assert [a.evidence["abs_change"] < 0 for a in alerts] == [True, False]


def test_small_changes_are_not_alerts_and_monitor_pickles() -> None:
    m = DriftMonitor(min_rel_change=0.5)
    assert _feed(m, 6, [(20_000, 0.10), (20_000, 0.07)]) == []
    copy = DriftMonitor.restore(m.snapshot())
    assert _feed(copy, 7, [(5_000, 0.02)]) == _feed(m, 7, [(5_000, 0.02)])

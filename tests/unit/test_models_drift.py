"""Drift: one alert per step change with evidence; silence on stationary data; cooldown."""

from __future__ import annotations

import json
import math
import pickle
import random

import numpy as np

from online_models.drift import (
    Alert,
    BernoulliGLR,
    DriftMonitor,
    _binomial_ll,
    _binomial_ll_one,
    _split_llr,
)
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


def _feed_binary(m: DriftMonitor, seed: int, rates: list[tuple[int, float]]) -> list[Alert]:
    rng = random.Random(seed)
    alerts, i = [], 0
    for n, p in rates:
        for _ in range(n):
            value = float(rng.random() < p)
            a = m.update("conversion_rate", "s1", value, T0_MS + i * MIN_MS, binary=True)
            i += 1
            if a is not None:
                alerts.append(a)
    return alerts


def test_glr_catches_a_rare_event_rate_falling_sooner_than_adwin() -> None:
    #  Bernoulli(0.029) ............ | Bernoulli(0.006) ....   (the simulator's injected drift)
    delays = {}
    for name, binary in (("glr", True), ("adwin", False)):
        m = DriftMonitor(warmup=2_000)
        rng = random.Random(8)
        for i in range(60_000):
            p = 0.029 if i < 40_000 else 0.006
            a = m.update("conversion_rate", "s1", float(rng.random() < p), T0_MS + i, binary=binary)
            if a is not None:
                assert i >= 40_000, f"{name}: false alarm at {i}"
                delays[name] = i - 40_000
                assert a.evidence["detector"] == name
                break
    assert delays["glr"] < 2_000 and delays["glr"] < delays["adwin"]


def test_glr_step_change_and_stationary_silence() -> None:
    alerts = _feed_binary(DriftMonitor(), 0, [(20_000, 0.10), (20_000, 0.04)])
    assert len(alerts) == 1 and 0 < (alerts[0].ts_ms - T0_MS) // MIN_MS - 20_000 < 1_000
    for seed, p in ((1, 0.005), (2, 0.03), (3, 0.2)):
        assert _feed_binary(DriftMonitor(), seed, [(150_000, p)]) == []


def test_glr_llr_is_exact_and_window_keeps_what_follows_the_change() -> None:
    det = BernoulliGLR(threshold=1e9, block=4, min_blocks=1)
    for x in [1, 1, 1, 1, 0, 0, 0, 0]:
        det.update(float(x))
    assert det.n_blocks == 2 and det.width == 8
    # one split (4 ones | 4 zeros): LLR = 0 + 0 - 8 ln 2
    det2 = BernoulliGLR(threshold=8 * math.log(2) - 1e-9, block=4, min_blocks=1)
    for x in [1, 1, 1, 1, 0, 0, 0, 0]:
        det2.update(float(x))
    assert det2.drift_detected and det2.width == 4
    assert pickle.loads(pickle.dumps(det2)).width == 4



class _ReferenceGLR(BernoulliGLR):
    """BernoulliGLR's test as it was: both cumulative sums recomputed on every test."""

    __slots__ = ()

    def _test(self) -> None:
        m, k = self.n_blocks, self.min_blocks
        if m < 2 * k:
            return
        cn = np.cumsum(self.counts[:m])
        cs = np.cumsum(self.sums[:m])
        stride = max(1, (m - 2 * k) // self.max_candidates)
        n1, s1 = cn[k - 1 : m - k : stride], cs[k - 1 : m - k : stride]
        total_n, total_s = cn[-1], cs[-1]
        llr = (_binomial_ll(s1, n1) + _binomial_ll(total_s - s1, total_n - n1)
               - float(_binomial_ll(total_s, total_n)))
        best = int(llr.argmax())
        if llr[best] < self.threshold:
            return
        self.drift_detected = True
        cut = best * stride + k
        rest = m - cut
        self.counts[:rest] = self.counts[cut:m]
        self.sums[:rest] = self.sums[cut:m]
        self.n_blocks = rest
        self.n_window = int(self.counts[:rest].sum())


def test_glr_kept_cumulative_sums_are_the_recomputed_ones() -> None:
    """The kept cumulative sums are np.cumsum's bit for bit, and the detector decides as the
    one recomputing them did, through halvings of the window, cuts, and pickle round trips
    (also of a detector pickled before the kept sums), on 0/1 and on fractional values."""
    rng = random.Random(7)
    rare = [float(rng.random() < (0.03 if i % 40_000 < 20_000 else 0.005))
            for i in range(120_000)]
    uniform = [rng.random() for _ in range(40_000)]
    n_cuts = 0
    for threshold, values in ((12.0, rare), (1e9, uniform)):
        ref = _ReferenceGLR(threshold=threshold, max_blocks=256)
        new = BernoulliGLR(threshold=threshold, max_blocks=256)
        for i, x in enumerate(values):
            if i == len(values) // 2:
                new = pickle.loads(pickle.dumps(new))
            if i == len(values) // 3:  # as if pickled before the kept sums existed
                for name in ("cum_counts", "cum_sums", "n_cum"):
                    delattr(new, name)
            new.update(x)
            ref.update(x)
            n_cuts += new.drift_detected
            assert new.drift_detected == ref.drift_detected
            assert (new.n_blocks, new.n_window, new.n_open) == (
                ref.n_blocks, ref.n_window, ref.n_open)
            assert new.counts.tobytes() == ref.counts.tobytes()
            assert new.sums.tobytes() == ref.sums.tobytes()
            if i % 97 == 0 and getattr(new, "n_cum", 0):
                c = new.n_cum
                assert new.cum_counts[:c].tobytes() == np.cumsum(new.counts[:c]).tobytes()
                assert new.cum_sums[:c].tobytes() == np.cumsum(new.sums[:c]).tobytes()
    assert n_cuts >= 2


def test_scalar_binomial_ll_is_the_ufunc_one() -> None:
    rng = random.Random(3)
    cases = [(0.0, 0.0), (0.0, 5.0), (5.0, 5.0), (3.0, 17.0)]
    cases += [(float(rng.randrange(0, 500)), float(rng.randrange(500, 20_000)))
              for _ in range(2_000)]
    cases += [(rng.random() * 50, 50 + rng.random() * 1e4) for _ in range(2_000)]
    for s, n in cases:
        want = float(_binomial_ll(np.float64(s), np.float64(n)))
        assert _binomial_ll_one(s, n) == want


def test_split_llr_is_the_binomial_formula_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    for m in (1, 2, 7, 64, 128):
        for rate in (0.0, 0.004, 0.05, 0.5, 1.0):
            counts = rng.integers(8, 17, size=m + 9).astype(float)
            sums = rng.binomial(counts.astype(int), rate).astype(float)
            cn, cs = np.cumsum(counts), np.cumsum(sums)
            n1, s1 = cn[:m], cs[:m]
            want = (_binomial_ll(s1, n1) + _binomial_ll(cs[-1] - s1, cn[-1] - n1)
                    - float(_binomial_ll(cs[-1], cn[-1])))
            got = _split_llr(n1, s1, float(cn[-1]), float(cs[-1]))
            assert got.tobytes() == want.tobytes()

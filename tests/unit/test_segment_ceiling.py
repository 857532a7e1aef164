"""The Bayes ceiling of segment recovery (`streams.segment_ceiling`): posteriors by hand, and a
simulation of very distinct segments that the true parameters tell apart almost always."""

from __future__ import annotations

import math

import pytest

from simulator import catalog, model
from simulator.catalog import NULL, START, Segment
from simulator.model import SimConfig, simulate
from streams import segment_ceiling as sc

DAY_MS = 86_400_000
T0 = 1_700_000_000_000
END = T0 + 1000 * DAY_MS  # far: a session gap of median 1 h never reaches it


def _seg(name: str, prior: float, start_x: float, *, step_s: float = 60.0,
         continue_p: float = 0.5) -> sc.SegmentParams:
    """Two touchpoints x, y; from start x with `start_x`; x goes on to y or stops, half each;
    y always stops."""
    rows = {START: {"x": start_x, "y": 1 - start_x}, "x": {"y": 0.5, NULL: 0.5},
            "y": {NULL: 1.0}}
    return sc.SegmentParams(
        name=name, log_prior=math.log(prior), rows=rows, log_rows=sc._logs(rows),
        drifted_rows=None, drift_at_ms=None, continue_p=continue_p,
        step_mu=math.log(step_s * 1000), session_mu=math.log(3_600_000.0),
        revenue_mu=math.log(100.0),
        log_sentiment={"negative": math.log(0.2), "neutral": math.log(0.5),
                       "positive": math.log(0.3)},
    )


def test_one_event_posterior_by_hand() -> None:
    a, b = _seg("a", 0.3, 0.8), _seg("b", 0.7, 0.2)
    journey = [sc.Step("x", T0)]
    # P(x first) x P(stop after x) x prior; the range's end is too far to be reached
    ja, jb = 0.3 * 0.8 * 0.5, 0.7 * 0.2 * 0.5
    post = sc.posterior(journey, [a, b], end_ms=END)
    assert post["a"] == pytest.approx(ja / (ja + jb), rel=1e-9)
    assert sc.bayes_assign({"c": journey}, [a, b], end_ms=END) == {"c": "a"}
    # the same evidence with a stronger prior for b: the prior decides
    b_heavy = _seg("b", 0.9, 0.2)
    post = sc.posterior(journey, [_seg("a", 0.1, 0.8), b_heavy], end_ms=END)
    ja, jb = 0.1 * 0.8 * 0.5, 0.9 * 0.2 * 0.5
    assert post["b"] == pytest.approx(jb / (ja + jb), rel=1e-9)
    assert sc.bayes_assign({"c": journey}, [_seg("a", 0.1, 0.8), b_heavy],
                           end_ms=END) == {"c": "b"}


def test_gap_decides_between_equal_chains() -> None:
    """Same moves and priors; a 60 s step gap is likelier under a 60 s median than 600 s."""
    fast, slow = _seg("fast", 0.5, 0.5, step_s=60), _seg("slow", 0.5, 0.5, step_s=600)
    journey = [sc.Step("x", T0), sc.Step("y", T0 + 60_000)]

    def lognormal_pdf(x: float, median_ms: float) -> float:
        z = (math.log(x) - math.log(median_ms)) / 0.8
        return math.exp(-0.5 * z * z) / (x * 0.8 * math.sqrt(2 * math.pi))

    # x first (0.5), same session (0.5) with the step gap's density, x -> y (0.5), stop (1)
    g = 60_000.5  # the simulator floors a gap to whole ms: the density in its middle
    ja = 0.5 * 0.5 * 0.5 * lognormal_pdf(g, 60_000) * 0.5
    jb = 0.5 * 0.5 * 0.5 * lognormal_pdf(g, 600_000) * 0.5
    post = sc.posterior(journey, [fast, slow], end_ms=END)
    assert post["fast"] == pytest.approx(ja / (ja + jb), rel=1e-6)
    assert post["fast"] > 0.9
    # a gap no step and no session can have (between 25 and 35 min): impossible everywhere,
    # so the posterior falls back to the prior
    odd = [sc.Step("x", T0), sc.Step("y", T0 + 30 * 60_000)]
    assert sc.log_likelihood(odd, fast, end_ms=END) == -math.inf
    assert sc.posterior(odd, [fast, slow], end_ms=END) == {"fast": 0.5, "slow": 0.5}


def test_censoring_near_the_end_of_the_range() -> None:
    """Right before the end, a journey may have been cut rather than stopped: P(stop) is the
    null move plus the chance the next gap runs past the end."""
    a = _seg("a", 0.5, 0.5, continue_p=1.0)
    end = T0 + 500  # less than any step gap (>= 1 s): the next event would fall outside
    assert sc.log_likelihood([sc.Step("x", T0)], a, end_ms=end) == pytest.approx(math.log(0.5))
    assert sc.log_likelihood([sc.Step("x", T0)], a, end_ms=END) == pytest.approx(
        math.log(0.5 * 0.5))


@pytest.fixture
def distinct_segments(monkeypatch: pytest.MonkeyPatch) -> tuple[Segment, ...]:
    """Two segments that share nothing: docs and app in quick long sessions vs social and blog
    visits weeks apart."""
    segments = (
        Segment(name="fast_dev", share=0.5, description="docs and app, quick",
                affinity={"docs_page": 30, "app_open": 30, "feature_use": 30,
                          "social_visit": 0.01, "blog_post": 0.01, "landing_page": 0.01,
                          "ad_click": 0.01, NULL: 0.3},
                session_continue_p=0.9, step_gap_median_s=5, session_gap_median_h=2,
                revenue_median=50, sentiment_p=(0.1, 0.5, 0.4), extra_cookie_p=0.1,
                second_device_p=0.1),
        Segment(name="slow_reader", share=0.5, description="social and blog, weeks apart",
                affinity={"social_visit": 30, "blog_post": 30, "docs_page": 0.01,
                          "app_open": 0.01, "feature_use": 0.01, "pricing_page": 0.01,
                          "demo_request": 0.01},
                session_continue_p=0.1, step_gap_median_s=900, session_gap_median_h=400,
                revenue_median=5000, sentiment_p=(0.4, 0.5, 0.1), extra_cookie_p=0.1,
                second_device_p=0.1),
    )
    monkeypatch.setattr(model, "SEGMENTS", segments)
    monkeypatch.setattr(catalog, "SEGMENTS", segments)
    return segments


def test_distinct_segments_ceiling_is_about_one(distinct_segments: tuple[Segment, ...]) -> None:
    sim = simulate(SimConfig(customers=600, seed=2, drift_segment=None))
    truth = sim.truth
    assert set(truth.segments) == {"fast_dev", "slow_reader"}
    params = sc.params_of(truth)
    journeys = sc.truth_journeys(truth)
    pred = sc.bayes_assign(journeys, params, end_ms=truth.end_ms)
    true = {c.customer_id: c.segment for c in truth.customers}
    n_events = {c: len(j) for c, j in journeys.items()}
    ari = sc.ari_by_bucket(true, pred, n_events, true)
    assert ari["all"]["ari"] > 0.95
    assert sum(pred[c] == true[c] for c in true) / len(true) > 0.98


def test_catalog_ceiling_is_calibrated() -> None:
    """On the simulator's own segments, the true segment's likelihood is never impossible, and
    the mean maximum posterior matches the share assigned right (a wrong likelihood would be
    over- or under-confident)."""
    sim = simulate(SimConfig(customers=1500, seed=4))
    truth = sim.truth
    params = sc.params_of(truth)
    by_name = {p.name: p for p in params}
    right = confidence = 0.0
    for c in truth.customers:
        journey = [sc.Step(e.touchpoint, e.ts_ms, e.revenue, e.sentiment) for e in c.events]
        assert sc.log_likelihood(journey, by_name[c.segment], end_ms=truth.end_ms) > -math.inf
        post = sc.posterior(journey, params, end_ms=truth.end_ms)
        best = max(post, key=post.__getitem__)
        right += best == c.segment
        confidence += post[best]
    n = len(truth.customers)
    # binomial noise of the share right on 1,500 customers: sd ~0.01
    assert abs(right / n - confidence / n) < 0.035

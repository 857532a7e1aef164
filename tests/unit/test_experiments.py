"""processors.experiments against scipy on the same counts (no I/O)."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from processors.experiments import (
    Intervention,
    VariantOutcome,
    analyse,
    assign_variant,
    sample_size_per_variant,
    two_proportion_ztest,
)

COUNTS = [(120, 1000, 150, 1000), (5, 40, 12, 45), (300, 5000, 390, 5200), (0, 50, 3, 50)]


@pytest.mark.parametrize(("x_a", "n_a", "x_b", "n_b"), COUNTS)
def test_ztest_matches_scipy_chi2_without_correction(x_a: int, n_a: int, x_b: int, n_b: int):
    ours = two_proportion_ztest(x_a, n_a, x_b, n_b)
    chi2, p, _, _ = stats.chi2_contingency(
        [[x_a, n_a - x_a], [x_b, n_b - x_b]], correction=False
    )
    assert ours.z**2 == pytest.approx(chi2, rel=1e-9)
    assert ours.p_value == pytest.approx(p, rel=1e-9)
    assert ours.p_value == pytest.approx(2 * stats.norm.sf(abs(ours.z)), rel=1e-9)
    assert math.copysign(1, ours.z) == math.copysign(1, x_b / n_b - x_a / n_a)


def test_confidence_interval_matches_scipy_normal_quantile():
    t = two_proportion_ztest(120, 1000, 150, 1000)
    p_a, p_b = 0.12, 0.15
    se = math.sqrt(p_a * (1 - p_a) / 1000 + p_b * (1 - p_b) / 1000)
    q = stats.norm.ppf(0.975)
    assert t.ci_low == pytest.approx(0.03 - q * se, rel=1e-9)
    assert t.ci_high == pytest.approx(0.03 + q * se, rel=1e-9)


def test_no_variation_is_no_evidence():
    t = two_proportion_ztest(0, 10, 0, 10)
    assert (t.z, t.p_value) == (0.0, 1.0)


@pytest.mark.parametrize("bad", [(-1, 10, 1, 10), (11, 10, 1, 10), (1, 0, 1, 10)])
def test_impossible_counts_are_refused(bad: tuple[int, int, int, int]):
    with pytest.raises(ValueError, match="conversions"):
        two_proportion_ztest(*bad)


def _power(n: int, p1: float, p2: float, alpha: float) -> float:
    """Power of the two-sided pooled z-test at n per group (normal approximation, scipy)."""
    p_bar = (p1 + p2) / 2
    se0 = math.sqrt(2 * p_bar * (1 - p_bar) / n)
    se1 = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
    za = stats.norm.ppf(1 - alpha / 2)
    d = abs(p2 - p1)
    return stats.norm.cdf((d - za * se0) / se1) + stats.norm.cdf((-d - za * se0) / se1)


@pytest.mark.parametrize(("p1", "mde", "alpha", "power"),
                         [(0.1, 0.02, 0.05, 0.8), (0.3, 0.05, 0.01, 0.9), (0.05, -0.01, 0.05, 0.8)])
def test_sample_size_reaches_the_power_and_is_the_smallest(p1, mde, alpha, power):
    n = sample_size_per_variant(p1, mde, alpha=alpha, power=power)
    assert _power(n, p1, p1 + mde, alpha) >= power
    assert _power(n - 1, p1, p1 + mde, alpha) < power


def test_sample_size_textbook_value():
    # 10 % -> 12 %, alpha 5 %, power 80 %: the usual figure is 3,841 per group.
    assert sample_size_per_variant(0.10, 0.02) == 3841


@pytest.mark.parametrize("args", [(0.0, 0.1), (0.95, 0.1), (0.2, 0.0)])
def test_sample_size_refuses_impossible_rates(args):
    with pytest.raises(ValueError):
        sample_size_per_variant(*args)


def test_assignment_is_stable_and_balanced():
    ids = [f"c_{i:016x}" for i in range(20_000)]
    first = [assign_variant("exp", c, ["a", "b"]) for c in ids]
    assert first == [assign_variant("exp", c, ["a", "b"]) for c in ids]
    share = first.count("a") / len(first)
    # binomial test against 50 %: a fair split passes comfortably
    assert stats.binomtest(first.count("a"), len(first), 0.5).pvalue > 0.001, share
    weighted = [assign_variant("exp2", c, ["a", "b"], [0.9, 0.1]) for c in ids]
    assert 0.88 < weighted.count("a") / len(ids) < 0.92
    assert first != [assign_variant("other", c, ["a", "b"]) for c in ids]


def _ab(**kw) -> Intervention:
    base = dict(intervention_id="i1", name="new pricing page", started_at_ms=1_000,
                segment="*", experiment="pricing", variants=("control", "b"), control="control",
                outcome_touchpoints=("purchase",), planned_n_per_variant=1000)
    base.update(kw)
    return Intervention(**base)


def test_analyse_per_segment_and_overall_matches_scipy():
    outcomes = [
        VariantOutcome("control", "s1", 600, 60), VariantOutcome("b", "s1", 610, 92),
        VariantOutcome("control", "s2", 500, 40), VariantOutcome("b", "s2", 480, 41),
    ]
    report = analyse(_ab(), outcomes)
    by = {(c.segment, c.variant): c for c in report.comparisons}
    assert set(by) == {("*", "b"), ("s1", "b"), ("s2", "b")}
    overall = by[("*", "b")]
    assert (overall.n, overall.conversions, overall.control_n, overall.control_conversions) == (
        1090, 133, 1100, 100)
    _, p, _, _ = stats.chi2_contingency([[100, 1000], [133, 957]], correction=False)
    assert overall.test.p_value == pytest.approx(p, rel=1e-9)
    assert by[("s1", "b")].significant and not by[("s2", "b")].significant
    # below the planned 1,000 per variant in the segments: each says it is a peek
    assert any("peeking" in w for w in by[("s1", "b")].warnings)
    assert not overall.warnings
    assert not report.warnings


def test_bonferroni_over_treatments():
    iv = _ab(variants=("control", "b", "c"))
    outcomes = [VariantOutcome("control", "s", 1000, 100), VariantOutcome("b", "s", 1000, 128),
                VariantOutcome("c", "s", 1000, 100)]
    c = {x.variant: x for x in analyse(iv, outcomes).comparisons if x.segment == "s"}
    assert c["b"].alpha == pytest.approx(0.025)
    assert 0.025 < c["b"].test.p_value < 0.05 and not c["b"].significant


def test_overlapping_interventions_warn():
    iv = _ab(segment="s1", ended_at_ms=10_000)
    others = [
        Intervention("i2", "email blast", 5_000, segment="*"),  # overlaps (everyone)
        Intervention("i3", "other segment", 5_000, segment="s2"),  # other segment
        Intervention("i4", "later", 10_000, segment="s1"),  # starts when iv ends
    ]
    report = analyse(iv, [VariantOutcome("control", "s1", 10, 1), VariantOutcome("b", "s1", 10, 2)],
                     others)
    assert any("'email blast'" in w and "several changes" in w for w in report.warnings)
    assert not any("other segment" in w or "later" in w for w in report.warnings)


def test_no_plan_warns_and_uses_required_size():
    report = analyse(_ab(planned_n_per_variant=0),
                     [VariantOutcome("control", "s", 200, 20), VariantOutcome("b", "s", 200, 30)])
    assert any("no planned sample size" in w for w in report.warnings)
    comp = report.comparisons[0]
    assert comp.required_n_per_variant == sample_size_per_variant(0.1, 0.02)
    assert any("required" in w for w in comp.warnings)


def test_not_an_experiment_is_refused():
    with pytest.raises(ValueError, match="not an A/B test"):
        analyse(Intervention("x", "banner", 0), [])

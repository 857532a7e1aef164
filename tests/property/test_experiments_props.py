"""Properties of the experiment statistics (processors.experiments), on random counts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.experiments import (
    assign_variant,
    sample_size_per_variant,
    two_proportion_ztest,
)


@st.composite
def counts(draw: st.DrawFn) -> tuple[int, int, int, int]:
    n_a = draw(st.integers(1, 10**6))
    n_b = draw(st.integers(1, 10**6))
    return draw(st.integers(0, n_a)), n_a, draw(st.integers(0, n_b)), n_b


@given(counts())
def test_swapping_the_groups_flips_the_sign_only(c: tuple[int, int, int, int]):
    x_a, n_a, x_b, n_b = c
    ab = two_proportion_ztest(x_a, n_a, x_b, n_b)
    ba = two_proportion_ztest(x_b, n_b, x_a, n_a)
    assert 0.0 <= ab.p_value <= 1.0
    assert abs(ab.z + ba.z) < 1e-9 and abs(ab.p_value - ba.p_value) < 1e-12
    assert ab.ci_low <= ab.diff <= ab.ci_high


@given(st.floats(0.01, 0.9), st.floats(0.005, 0.05), st.floats(0.005, 0.05))
def test_a_smaller_effect_needs_more_customers(p: float, mde1: float, mde2: float):
    small, large = sorted((mde1, mde2))
    if p + large >= 1:
        return
    assert sample_size_per_variant(p, small) >= sample_size_per_variant(p, large)


@settings(max_examples=50)
@given(st.text(min_size=1, max_size=20), st.lists(st.text(min_size=1, max_size=8), min_size=2,
                                                  max_size=5, unique=True))
def test_assignment_is_one_of_the_variants_and_stable(customer: str, variants: list[str]):
    v = assign_variant("exp", customer, variants)
    assert v in variants and v == assign_variant("exp", customer, list(variants))

"""The experiment loop: interventions, A/B assignments and the analysis of their outcomes.

Pure: the CLI and the API read and write ClickHouse (``interventions``,
``experiment_assignments``, ``experiment_outcomes``, ``experiment_results``) and call these.

* An :class:`Intervention` records what changed, when, for which segment (and channel); when it
  names an ``experiment`` it is an A/B test with ``variants``, one of them the ``control``.
* :func:`assign_variant` puts a customer in a variant by a hash of (experiment, customer): the
  same customer always gets the same variant, on every worker, without storing anything first.
* :func:`analyse` compares every variant with the control, per segment and over all segments,
  with a two-proportion z-test (pooled standard error for the test, unpooled for the confidence
  interval of the difference), Bonferroni-corrected over the comparisons of one segment, and says
  how many customers per variant the planned minimum detectable effect needs
  (:func:`sample_size_per_variant`). It warns when the data are looked at before the planned
  sample size (peeking inflates false positives) and when other interventions overlap the same
  segment and time (the effect cannot be told apart).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Final

ALL: Final = "*"
_N01: Final = NormalDist()


@dataclass(frozen=True, slots=True)
class Intervention:
    """Something that changed for customers: a campaign, a page, a price, an A/B test."""

    intervention_id: str
    name: str
    started_at_ms: int
    segment: str = ALL
    channel: str = ALL
    description: str = ""
    experiment: str = ""
    variants: tuple[str, ...] = ()
    control: str = ""
    outcome_touchpoints: tuple[str, ...] = ()
    ended_at_ms: int | None = None
    planned_n_per_variant: int = 0
    created_at_ms: int = 0
    created_by: str = ""

    def as_row(self) -> dict[str, Any]:
        return {
            "intervention_id": self.intervention_id,
            "name": self.name,
            "description": self.description,
            "segment": self.segment,
            "channel": self.channel,
            "experiment": self.experiment,
            "variants": list(self.variants),
            "control": self.control,
            "outcome_touchpoints": list(self.outcome_touchpoints),
            "started_at": self.started_at_ms,
            "ended_at": self.ended_at_ms,
            "planned_n_per_variant": self.planned_n_per_variant,
            "created_at": self.created_at_ms,
            "created_by": self.created_by,
        }

    def overlaps(self, other: Intervention) -> bool:
        """Same segment (or either for everyone), same channel (or either for every channel)
        and intersecting time spans (an open end runs forever)."""
        if self.intervention_id == other.intervention_id:
            return False
        if ALL not in (self.segment, other.segment) and self.segment != other.segment:
            return False
        if ALL not in (self.channel, other.channel) and self.channel != other.channel:
            return False
        end_a = self.ended_at_ms if self.ended_at_ms is not None else math.inf
        end_b = other.ended_at_ms if other.ended_at_ms is not None else math.inf
        return self.started_at_ms < end_b and other.started_at_ms < end_a


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: str
    customer_id: str
    variant: str
    segment: str
    assigned_at_ms: int

    def as_row(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "customer_id": self.customer_id,
            "variant": self.variant,
            "segment": self.segment,
            "assigned_at": self.assigned_at_ms,
        }


def assign_variant(
    experiment: str, customer_id: str, variants: Sequence[str],
    weights: Sequence[float] | None = None,
) -> str:
    """The variant of `customer_id` in `experiment`: a stable hash bucket, split by `weights`
    (equal by default)."""
    if len(variants) < 2:
        raise ValueError("an experiment needs at least two variants")
    w = list(weights) if weights is not None else [1.0] * len(variants)
    if len(w) != len(variants) or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError("weights must be one non-negative number per variant, not all zero")
    digest = hashlib.sha256(f"{experiment}\x00{customer_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    total, acc = sum(w), 0.0
    for variant, weight in zip(variants, w, strict=True):
        acc += weight / total
        if u < acc:
            return variant
    return variants[-1]


@dataclass(frozen=True, slots=True)
class ZTest:
    """Two-proportion z-test of rate b against rate a (b - a)."""

    diff: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def two_proportion_ztest(
    x_a: int, n_a: int, x_b: int, n_b: int, *, confidence: float = 0.95
) -> ZTest:
    """Two-sided z-test of H0: p_a = p_b with the pooled standard error; the confidence interval
    of p_b - p_a uses the unpooled one (Wald). z is 0 and p is 1 when the pooled rate is 0 or 1."""
    for x, n in ((x_a, n_a), (x_b, n_b)):
        if n <= 0 or x < 0 or x > n:
            raise ValueError(f"need 0 <= conversions <= customers and customers > 0, got {x}/{n}")
    p_a, p_b = x_a / n_a, x_b / n_b
    diff = p_b - p_a
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        z, p_value = 0.0, 1.0
    else:
        z = diff / se
        p_value = min(1.0, math.erfc(abs(z) / math.sqrt(2)))
    se_u = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    half = _N01.inv_cdf(0.5 + confidence / 2) * se_u
    return ZTest(diff, z, p_value, diff - half, diff + half)


def sample_size_per_variant(
    baseline: float, mde: float, *, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Customers per variant for a two-sided two-proportion z-test to detect an absolute lift
    `mde` over `baseline` with the given power (normal approximation)."""
    if not 0 < baseline < 1:
        raise ValueError(f"the baseline rate must be in (0, 1), got {baseline}")
    p2 = baseline + mde
    if mde == 0 or not 0 < p2 < 1:
        raise ValueError(f"baseline + mde must be in (0, 1) and mde non-zero, got {baseline}+{mde}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError("alpha and power must be in (0, 1)")
    za, zb = _N01.inv_cdf(1 - alpha / 2), _N01.inv_cdf(power)
    p_bar = (baseline + p2) / 2
    num = za * math.sqrt(2 * p_bar * (1 - p_bar)) + zb * math.sqrt(
        baseline * (1 - baseline) + p2 * (1 - p2)
    )
    return math.ceil((num / mde) ** 2)


@dataclass(frozen=True, slots=True)
class VariantOutcome:
    """Customers assigned to a variant in one segment, and how many reached the outcome."""

    variant: str
    segment: str
    n: int
    conversions: int


@dataclass(frozen=True, slots=True)
class Comparison:
    segment: str
    variant: str
    control: str
    n: int
    conversions: int
    control_n: int
    control_conversions: int
    test: ZTest
    alpha: float  # after the Bonferroni correction
    required_n_per_variant: int
    warnings: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.conversions / self.n if self.n else 0.0

    @property
    def control_rate(self) -> float:
        return self.control_conversions / self.control_n if self.control_n else 0.0

    @property
    def significant(self) -> bool:
        return self.test.p_value < self.alpha

    def as_row(self, experiment: str, as_of_ms: int) -> dict[str, Any]:
        return {
            "experiment": experiment,
            "as_of": as_of_ms,
            "segment": self.segment,
            "variant": self.variant,
            "control": self.control,
            "n": self.n,
            "conversions": self.conversions,
            "control_n": self.control_n,
            "control_conversions": self.control_conversions,
            "rate": self.rate,
            "control_rate": self.control_rate,
            "diff": self.test.diff,
            "ci_low": self.test.ci_low,
            "ci_high": self.test.ci_high,
            "z": self.test.z,
            "p_value": self.test.p_value,
            "required_n_per_variant": self.required_n_per_variant,
            "significant": self.significant,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    experiment: str
    comparisons: tuple[Comparison, ...]
    warnings: tuple[str, ...] = field(default=())


def overlapping(target: Intervention, others: Iterable[Intervention]) -> list[Intervention]:
    return sorted(
        (o for o in others if target.overlaps(o)), key=lambda o: (o.started_at_ms, o.name)
    )


def analyse(
    intervention: Intervention,
    outcomes: Iterable[VariantOutcome],
    others: Iterable[Intervention] = (),
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    mde: float = 0.02,
) -> ExperimentReport:
    """Every variant against the control, per segment and over all segments (``"*"``).

    `mde` is the absolute lift the test should detect; with the control's observed rate it gives
    the required customers per variant (used when no planned size was recorded).
    """
    if not intervention.experiment or intervention.control not in intervention.variants:
        raise ValueError(
            f"intervention {intervention.name!r} is not an A/B test (it needs an experiment "
            "name, variants and a control among them)"
        )
    cells: dict[tuple[str, str], list[int]] = {}
    for o in outcomes:
        for segment in (o.segment, ALL):
            cell = cells.setdefault((segment, o.variant), [0, 0])
            cell[0] += o.n
            cell[1] += o.conversions
    warnings: list[str] = []
    overlaps = overlapping(intervention, others)
    if overlaps:
        names = ", ".join(f"{o.name!r}" for o in overlaps)
        warnings.append(
            f"several changes at once: {names} overlap(s) the same segment and time; the "
            "difference between variants also carries their effect if they reach the variants "
            "unevenly"
        )
    unknown = sorted({v for _, v in cells} - set(intervention.variants))
    if unknown:
        warnings.append(f"assignments to variants the intervention does not list: {unknown}")
    planned = intervention.planned_n_per_variant
    treatments = [v for v in intervention.variants if v != intervention.control]
    comparisons: list[Comparison] = []
    segments = sorted({s for s, _ in cells}, key=lambda s: (s != ALL, s))
    for segment in segments:
        control = cells.get((segment, intervention.control))
        if control is None or control[0] == 0:
            warnings.append(f"segment {segment!r}: no customers in the control group yet")
            continue
        a = alpha / max(1, len(treatments))
        for variant in treatments:
            treat = cells.get((segment, variant))
            if treat is None or treat[0] == 0:
                continue
            test = two_proportion_ztest(control[1], control[0], treat[1], treat[0])
            required = _required(control[1] / control[0], mde, a, power)
            target = planned or required
            notes = []
            if target and min(control[0], treat[0]) < target:
                notes.append(
                    f"peeking: {min(control[0], treat[0]):,} of the "
                    f"{'planned' if planned else 'required'} {target:,} customers per variant; "
                    "a p-value read before the planned size overstates significance, wait for "
                    "the full sample"
                )
            comparisons.append(Comparison(
                segment, variant, intervention.control, treat[0], treat[1], control[0],
                control[1], test, a, required, tuple(notes),
            ))
    if not planned:
        warnings.append(
            "no planned sample size was recorded: set planned_n_per_variant before looking, "
            "or every look is a peek"
        )
    return ExperimentReport(intervention.experiment, tuple(comparisons), tuple(warnings))


def _required(baseline: float, mde: float, alpha: float, power: float) -> int:
    try:
        return sample_size_per_variant(baseline, mde, alpha=alpha, power=power)
    except ValueError:  # a 0 % or 100 % control rate: no normal approximation
        return 0

"""River's baselines in `journeymap evaluate`: same examples, test-then-train, every setting."""

from __future__ import annotations

import random

import numpy as np

from online_models.propensity import Labelled
from streams import river_baselines as rb

NAMES = ("a", "b")
DAY_MS = 86_400_000
DEFAULTS = rb.PROPENSITY_SETTINGS["SGD(0.01), l2=0 (River's defaults)"]


def _example(i: int, snapshot_ms: int, labelled_ms: int, y: bool, a: float) -> Labelled:
    return Labelled(f"c{i}", snapshot_ms, labelled_ms, "all", 0.5, y,
                    np.array([a, 1.0]), NAMES)


def test_an_example_is_scored_before_its_own_label_is_learned() -> None:
    """Each label is known 30 days after its snapshot: the first month scores from an
    unlearned model (0.5 exactly), whatever the labels; later ones have learned earlier labels."""
    rng = random.Random(0)
    lab = []
    for i in range(400):
        y = rng.random() < 0.5
        lab.append(_example(i, i * DAY_MS // 4, i * DAY_MS // 4 + 30 * DAY_MS, y,
                            (1.0 if y else -1.0) + rng.gauss(0, 0.5)))
    scores = rb.prequential_scores(lab, DEFAULTS)
    first_month = [p for r, p in zip(lab, scores, strict=True) if r.snapshot_ms < 30 * DAY_MS]
    assert len(first_month) == 120 and set(first_month) == {0.5}
    later = [(p, r.y) for r, p in zip(lab, scores, strict=True) if r.snapshot_ms > 60 * DAY_MS]
    # the feature separates the classes: once labels arrive, the model has learned that
    pos = [p for p, y in later if y]
    neg = [p for p, y in later if not y]
    assert sum(pos) / len(pos) > 0.6 > 0.4 > sum(neg) / len(neg)


def test_a_label_known_at_a_snapshot_is_learned_before_it() -> None:
    lab = [_example(0, 0, 10, True, 1.0), _example(1, 10, 20, True, 1.0)]
    scores = rb.prequential_scores(lab, DEFAULTS)
    assert scores[0] == 0.5 and scores[1] > 0.5


def test_every_setting_reported_on_the_later_half() -> None:
    rng = random.Random(1)
    lab = []
    for i in range(300):
        y = rng.random() < 0.3
        lab.append(_example(i, i * DAY_MS, i * DAY_MS + 5 * DAY_MS, y,
                            (0.5 if y else -0.5) + rng.gauss(0, 1)))
    out = rb.propensity_baselines(lab)
    assert [r["model"] for r in out] == [
        f"StandardScaler | LogisticRegression {name}" for name in rb.PROPENSITY_SETTINGS]
    for r in out:
        assert 0.55 < r["prequential_auc"] <= 1.0
        assert 0.0 < r["mean_score"] < 1.0


def test_one_class_gives_no_auc() -> None:
    lab = [_example(i, i, i + 1, True, 1.0) for i in range(10)]
    assert all(r["prequential_auc"] is None for r in rb.propensity_baselines(lab))

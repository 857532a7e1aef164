"""Lookalikes: close to the top converted customers scores high; bounded; pickles."""

from __future__ import annotations

from online_models.lookalike import LookalikeModel
from tests.unit.test_models_support import final_features, population


def _trained() -> tuple[LookalikeModel, dict[str, dict[str, float]], dict[str, str]]:
    events, truth = population(7, 600)
    feats = final_features(events)
    m = LookalikeModel(max_top=50)
    for cid, f in feats.items():
        m.learn(cid, f)
    return m, feats, truth


def test_lookalikes_of_top_customers_score_higher() -> None:
    m, feats, truth = _trained()
    assert len(m.top) == 50
    # the 50 top spenders are buyers (900 a purchase), so buyers who have not bought look alike
    mean = {}
    for kind in ("buyer", "browser", "app_user"):
        scores = [m.score(f) for c, f in feats.items() if truth[c] == kind]
        mean[kind] = sum(s for s in scores if s is not None) / len(scores)
    assert mean["buyer"] > 0.4 > mean["browser"] and mean["buyer"] > mean["app_user"]
    assert all(0 <= (m.score(f) or 0) <= 1 for f in feats.values())


def test_no_score_before_enough_top_customers() -> None:
    m = LookalikeModel(min_top=20)
    assert m.score({}) is None


def test_round_trip_scores_identically() -> None:
    m, feats, _ = _trained()
    copy = LookalikeModel.restore(m.snapshot())
    assert [copy.score(f) for f in feats.values()] == [m.score(f) for f in feats.values()]

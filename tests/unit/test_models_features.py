"""The feature summary: plain units from a hand-checked journey."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np

from online_models.features import (
    FEATURE_NAMES,
    JOURNEY_STATS,
    START,
    CustomerFeatures,
    Vectorizer,
    features,
    model_vector,
    summary_vector,
)
from processors.events import CHANNELS
from tests.factories import HOUR_MS, MIN_MS, T0_MS, event

# t (min): 0 landing  2 pricing  |3 h|  182 feature_use  184 support_ticket  |20 h|  purchase
STEPS = [
    (0, "landing_page", "web", {}),
    (2, "pricing_page", "web", {}),
    (182, "feature_use", "app", {"properties": {"feature": "export"}}),
    (184, "support_ticket", "support", {}),
    (184 + 20 * 60, "purchase", "web", {"revenue": 120.0}),
]


def _summary() -> CustomerFeatures:
    s = CustomerFeatures()
    for minute, tp, channel, extra in STEPS:
        s.update(event(tp, at_ms=T0_MS + minute * MIN_MS, channel=channel, **extra))
    return s


def test_features_in_plain_units() -> None:
    s = _summary()
    last = T0_MS + (184 + 20 * 60) * MIN_MS
    f = features(s, last + 5 * HOUR_MS)
    assert f["recency_h"] == 5
    assert f["n_events"] == 5 and f["n_sessions"] == 3
    assert f["mean_step_gap_s"] == 120  # two in-session gaps of 2 minutes
    assert math.isclose(f["mean_session_gap_h"], (3 + 20) / 2)
    assert f["revenue"] == 120 and f["n_conversions"] == 1
    assert f["n_support"] == 1 and f["n_features_adopted"] == 1
    assert math.isclose(f["share_web"], 3 / 5) and math.isclose(f["share_app"], 1 / 5)
    assert math.isclose(sum(v for k, v in f.items() if k.startswith("share_")), 1)
    assert list(f) == list(FEATURE_NAMES)


def test_late_event_does_not_move_recency_backwards() -> None:
    s = _summary()
    last = s.last_ts_ms
    s.update(event("blog_post", at_ms=T0_MS + MIN_MS))
    assert s.last_ts_ms == last and s.last_touchpoint == "purchase" and s.n_events == 6


def test_sentiment_mean_and_model_vector() -> None:
    s = _summary()
    s.add_sentiment(-1.0)
    s.add_sentiment(0.5)
    f = features(s, s.last_ts_ms or 0)
    assert f["mean_sentiment"] == -0.25
    v = model_vector(f)
    assert v[FEATURE_NAMES.index("revenue")] == math.log1p(120)
    assert v[FEATURE_NAMES.index("share_web")] == f["share_web"]


def test_summary_pickles() -> None:
    s = _summary()
    t = pickle.loads(pickle.dumps(s))
    assert features(t, T0_MS + 10**9) == features(s, T0_MS + 10**9)


def test_journey_statistics_of_the_hand_checked_journey() -> None:
    s = _summary()
    # moves in event-time order, from the start state
    assert s.transitions == {
        (START, "landing_page"): 1,
        ("landing_page", "pricing_page"): 1,
        ("pricing_page", "feature_use"): 1,
        ("feature_use", "support_ticket"): 1,
        ("support_ticket", "purchase"): 1,
    }
    # step gaps 2 min, 2 min; session gaps 3 h, 20 h; one order of 120
    assert s.n_step_gaps == 2 and math.isclose(s.step_log_sum, 2 * math.log(120))
    assert math.isclose(s.session_log_sq, math.log(3 * 3600) ** 2 + math.log(20 * 3600) ** 2)
    assert s.n_revenue == 1 and math.isclose(s.revenue_log_sum, math.log(120))
    v = Vectorizer()
    idx, val = v.journey(s)
    n_dst = len(v.states)
    cell = {int(i): float(x) for i, x in zip(idx, val, strict=True) if i < v.n_cells}
    # four behaviour moves; the move into the outcome (purchase) is not behaviour
    assert len(cell) == 4 and all(x == 1.0 for x in cell.values())
    assert n_dst * n_dst + v.states.index("landing_page") in cell  # START row is the last
    stats = dict(zip(JOURNEY_STATS, val[-len(JOURNEY_STATS):].tolist(), strict=True))
    assert stats["n_step_gaps"] == 2 and stats["n_session_gaps"] == 2
    assert stats["n_revenue"] == 1


def test_propensity_and_behaviour_vectors_match_their_names() -> None:
    s = _summary()
    v = Vectorizer()
    xp, xb = v.vectors(s)
    assert xb is not None
    assert len(xp) == len(v.propensity_names) and len(xb) == len(v.behaviour_names)
    assert np.array_equal(xp, v.propensity(s)) and np.array_equal(xb, v.behaviour(s))
    named = dict(zip(v.propensity_names, xp.tolist(), strict=True))
    # the last touchpoint (purchase) is an outcome, not a place in the journey: no one-hot
    assert not any(x for k, x in named.items() if k.startswith("last_"))
    assert math.isclose(named["tp_landing_page"], 1 / 4)  # shares of the 4 non-outcome events


def _random_journeys(seed: int, n_customers: int) -> list[list[tuple[int, str, str]]]:
    """Journeys with outcomes, unknown names (past the summary's caps for some), late events
    and every channel: (minute, touchpoint, channel)."""
    rng = random.Random(seed)
    known = list(Vectorizer().touchpoints)
    out = []
    for c in range(n_customers):
        names = known + [f"x{i}" for i in range(90)] if c % 3 == 0 else known
        n = rng.randint(1, 400 if c % 3 == 0 else 30)
        minute = 0
        steps = []
        for _ in range(n):
            minute += rng.choice((1, 3, 20, 200, 3000))
            late = rng.random() < 0.1
            steps.append((minute - 500 if late else minute, rng.choice(names),
                          rng.choice(CHANNELS)))
        out.append(steps)
    return out


def test_counts_kept_per_event_equal_counts_from_the_summary() -> None:
    v = Vectorizer()
    for steps in _random_journeys(1, 12):
        s = CustomerFeatures()
        counts, cells = v.counts(s)
        for minute, tp, channel in steps:
            n_moves = len(s.transitions)
            s.update(event(tp, at_ms=T0_MS + minute * MIN_MS, channel=channel))
            v.count_event(s, counts, cells, tp, channel, n_moves)
            assert (counts, cells) == v.counts(s)


def test_batch_vectors_equal_each_customers_vectors_exactly() -> None:
    v = Vectorizer()
    summaries = []
    for steps in _random_journeys(2, 40):
        s = CustomerFeatures()
        for minute, tp, channel in steps:
            s.update(event(tp, at_ms=T0_MS + minute * MIN_MS, channel=channel,
                           revenue=12.5 if tp == "purchase" else None))
        summaries.append(s)
    counts, cells = zip(*(v.counts(s) for s in summaries), strict=True)
    xp, xb, idx, val, starts = v.batch(summaries, list(counts), list(cells))
    ends = [*starts[1:].tolist(), len(idx)]
    for r, s in enumerate(summaries):
        p, b = v.vectors(s)
        assert np.array_equal(xp[r], p) and np.array_equal(xb[r], b)
        j_idx, j_val = v.journey(s)
        assert np.array_equal(idx[starts[r]:ends[r]], j_idx)
        assert np.array_equal(val[starts[r]:ends[r]], j_val)


def test_summary_vector_is_the_model_vector_of_the_features() -> None:
    s = _summary()
    for now in (T0_MS, T0_MS + 30 * HOUR_MS):
        assert np.array_equal(summary_vector(s, now), model_vector(features(s, now)))
    empty = CustomerFeatures()
    assert np.array_equal(summary_vector(empty, T0_MS), model_vector(features(empty, T0_MS)))


def test_packed_counts_and_states_kept_as_lists_give_the_same_vectors() -> None:
    """`Vectorizer.counts` packs (doubles, 32-bit ints); states kept from before hold lists:
    `count_event` moves both on alike and `batch` gives the same bits from either."""
    from array import array

    v = Vectorizer()
    summaries, packed, listed = [], [], []
    for steps in _random_journeys(5, 30):
        s = CustomerFeatures()
        counts, cells = v.counts(s)
        assert isinstance(counts, array) and counts.typecode == "d"
        assert isinstance(cells, array) and cells.typecode == "i"
        lcounts, lcells = list(counts), list(cells)
        for minute, tp, channel in steps:
            n_moves = len(s.transitions)
            s.update(event(tp, at_ms=T0_MS + minute * MIN_MS, channel=channel))
            v.count_event(s, counts, cells, tp, channel, n_moves)
            v.count_event(s, lcounts, lcells, tp, channel, n_moves)
        assert list(counts) == lcounts and list(cells) == lcells
        summaries.append(s)
        packed.append((counts, cells))
        listed.append((lcounts, lcells))
    a = v.batch(summaries, [c for c, _ in packed], [c for _, c in packed])
    b = v.batch(summaries, [c for c, _ in listed], [c for _, c in listed])
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def test_move_keys_are_shared_and_adopted_starts_as_the_shared_empty_set() -> None:
    a, b = CustomerFeatures(), CustomerFeatures()
    for s in (a, b):
        for tp in ("landing_page", "pricing_page", "landing_page"):
            s.update(event(tp, at_ms=T0_MS))
    assert a.transitions == b.transitions
    for key in a.transitions:
        other = next(k for k in b.transitions if k == key)
        assert other is key  # one tuple for every customer
    assert a.adopted == set() and isinstance(a.adopted, frozenset)
    a.update(event("feature_use", at_ms=T0_MS + MIN_MS, properties={"feature": "export"}))
    assert a.adopted == {"feature_use:export"} and isinstance(a.adopted, set)
    assert b.adopted == set() and isinstance(b.adopted, frozenset)  # not shared once filled
    c = pickle.loads(pickle.dumps(a))
    c.update(event("feature_use", at_ms=T0_MS + 2 * MIN_MS, properties={"feature": "api"}))
    assert len(c.adopted) == 2 and len(a.adopted) == 1
    assert features(a, T0_MS)["n_features_adopted"] == 1.0

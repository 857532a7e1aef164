"""ModelSuite: one call per event; a restored suite continues exactly where it stopped."""

from __future__ import annotations

import copy
import pickle

import pytest

from online_models.checkpoint import dumps, loads
from online_models.features import features
from online_models.segments import SegmentModel
from online_models.suite import CustomerModelState, ModelConfig, ModelSuite
from processors.errors import CheckpointError
from tests.unit.test_models_support import population

MATRIX = {
    "pricing_page": {"conversion": 0.3, "null": 0.7},
    "ad_click": {"pricing_page": 0.6, "null": 0.4},
    "feature_use": {"conversion": 0.1, "null": 0.9},
}


def _suite() -> ModelSuite:
    s = ModelSuite(ModelConfig(drift_warmup=100, segment_reservoir=300))
    s.set_transitions(MATRIX)
    s.learn_sentiment("it keeps crashing", "negative")
    s.learn_sentiment("thanks, works great", "positive")
    return s


def _run(s: ModelSuite, states: dict[str, CustomerModelState], events) -> list:
    out = []
    for e in events:
        st = states.setdefault(e.customer_id, s.new_customer())
        out.append(s.update(e, st))
    return out


def test_restored_suite_gives_the_same_scores_as_the_uninterrupted_one() -> None:
    events, _ = population(11, 300)
    half = len(events) // 2
    s, states = _suite(), {}
    _run(s, states, events[:half])
    restored = ModelSuite.restore(s.snapshot())
    restored_states = pickle.loads(pickle.dumps(states))
    assert _run(restored, restored_states, events[half:]) == _run(s, states, events[half:])
    assert restored.segments.ids and restored.convert.n_labelled > 0


def test_scores_are_computed_before_the_event_is_learned() -> None:
    events, _ = population(12, 200)
    s, states = _suite(), {}
    _run(s, states, events[:-1])
    e = events[-1]
    # the models as they were before the event, scoring the customer after it
    before = copy.deepcopy(s)
    summary = copy.deepcopy(states[e.customer_id].features)
    summary.update(e.event)
    feats = features(summary, e.ts_ms)
    segment = before.segments.assign(feats)
    scores = s.update(e, states[e.customer_id])
    assert scores.segment == segment
    assert scores.p_convert == before.convert.score(feats, segment)[0]
    assert scores.p_churn == before.churn.score(feats, segment)[0]
    assert scores.lookalike == before.lookalike.score(feats)
    # ... and the event was learned afterwards
    assert s.segments.n_updates == before.segments.n_updates + 1


def test_scores_fields_and_alerts_api() -> None:
    events, _ = population(13, 200)
    s, states = _suite(), {}
    scores = _run(s, states, events)
    assert all(0 <= sc.p_convert <= 1 and 0 <= sc.p_churn <= 1 for sc in scores)
    assert {sc.next_best_action for sc in scores if sc.next_best_action} <= set(MATRIX)
    assert any(sc.segment != "all" for sc in scores)
    assert s.alerts_since(0) == [a for sc in scores for a in sc.alerts]
    assert s.profiles() and s.sentiment_summary("segment") == {}


def test_checkpoints_are_checked() -> None:
    data = _suite().snapshot()
    with pytest.raises(CheckpointError, match="holds a ModelSuite"):
        SegmentModel.restore(data)
    with pytest.raises(CheckpointError, match="magic"):
        loads(b"garbage", ModelSuite)
    with pytest.raises(CheckpointError, match="version"):
        loads(data[:4] + bytes([99]) + data[5:], ModelSuite)
    with pytest.raises(CheckpointError, match="corrupt"):
        loads(data[:-50], ModelSuite)
    assert loads(dumps(SegmentModel()), SegmentModel).ids == []

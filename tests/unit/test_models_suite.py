"""ModelSuite: one call per event; a restored suite continues exactly where it stopped."""

from __future__ import annotations

import copy
import pickle
import random

import numpy as np
import pytest

from online_models.checkpoint import dumps, loads
from online_models.propensity import Labelled, top_of
from online_models.segments import SegmentModel
from online_models.suite import CustomerModelState, ModelConfig, ModelSuite
from processors.errors import CheckpointError
from tests.factories import MIN_MS, T0_MS, resolved
from tests.unit.test_models_support import population

MATRIX = {
    "pricing_page": {"conversion": 0.3, "null": 0.7},
    "ad_click": {"pricing_page": 0.6, "null": 0.4},
    "feature_use": {"conversion": 0.1, "null": 0.9},
}


def _suite(**kw) -> ModelSuite:
    s = ModelSuite(
        ModelConfig(drift_warmup=100, segment_reservoir=300, segment_min_events=1, **kw)
    )
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


def _vectors(s: ModelSuite) -> list[list[tuple[str, int, np.ndarray]]]:
    """Each propensity model's pending snapshot vectors, with their customer and time."""
    return [[(cid, snap.ts_ms, snap.x) for cid, snaps in m.pending.items() for snap in snaps]
            for m in (s.convert, s.churn)]


def test_the_snapshot_keeps_each_vector_once_and_shares_it_again() -> None:
    """The two propensity models observe the same vector at a session's end: the snapshot packs
    it once (`VectorPack`) and the restored models share it again, equal to the bit."""
    events, _ = population(11, 300)
    s, states = _suite(), {}
    _run(s, states, events)
    before = _vectors(s)
    shared = {id(x) for _, _, x in before[0]} & {id(x) for _, _, x in before[1]}
    assert before[0] and before[1] and shared
    state = s.__getstate__()
    unique = {id(x) for m in before for _, _, x in m} | {
        id(r[0]) for m in (s.convert, s.churn) for r in m.window}
    assert state["_vectors"].shape[0] == len(unique)
    restored = ModelSuite.restore(s.snapshot())
    after = _vectors(restored)
    for b, a in zip(before, after, strict=True):
        assert [(c, t, x.tobytes()) for c, t, x in b] == [(c, t, x.tobytes()) for c, t, x in a]
    index = {(c, t): x for c, t, x in after[0]}
    again = [x is index[(c, t)] for c, t, x in after[1] if (c, t) in index]
    # shared where they were shared (same customer and time: the same session's end)
    was = {(c, t): x for c, t, x in before[0]}
    assert again == [x is was[(c, t)] for c, t, x in before[1] if (c, t) in was]
    assert any(again)


def test_snapshots_before_the_packed_format_still_restore() -> None:
    """Snapshots before session 20 pickled the suite's slots as they were."""
    events, _ = population(11, 300)
    s, states = _suite(), {}
    _run(s, states, events[:400])
    old = pickle.dumps((None, {name: getattr(s, name) for name in s.__slots__}))
    restored = ModelSuite.__new__(ModelSuite)
    restored.__setstate__(pickle.loads(old))
    states_copy = pickle.loads(pickle.dumps(states))
    assert _run(restored, states_copy, events[400:]) == _run(s, states, events[400:])


def test_scores_are_computed_before_the_event_is_learned() -> None:
    events, _ = population(12, 200)
    s, states = _suite(refresh_s=0), {}  # refresh on every event within a session
    _run(s, states, events)
    # an event that continues its customer's session (a new one would carry the scores of
    # the previous session's end): scored from the summary after it, by the models before it
    last = events[-1]
    e = resolved(last.customer_id, "pricing_page", last.ts_ms + 60_000, user_id="x")
    assert e.customer_id in s.open_sessions
    before = copy.deepcopy(s)
    summary = copy.deepcopy(states[e.customer_id].features)
    summary.update(e.event)
    xp, _ = before.vectorizer.vectors(summary, behaviour=False)
    segment = before.segments.assign_sparse(*before.vectorizer.journey(summary))
    scores = s.update(e, states[e.customer_id])
    assert scores.segment == segment
    assert scores.p_convert == before.convert.score_vector(xp, segment)[0]
    assert scores.p_churn == before.churn.score_vector(xp, segment)[0]
    # ... and the event was learned afterwards: its customer's session is open
    assert s.open_sessions[e.customer_id] is states[e.customer_id]


def test_session_ends_are_scored_in_a_batch_before_they_are_learned() -> None:
    events, _ = population(14, 300)
    s, states = _suite(close_delay_s=10**7), {}  # closed sessions wait for a batch of 64
    _run(s, states, events)
    assert len(s.due) > 10 and len(s.open_sessions) > len(s.due)
    before = copy.deepcopy(s)
    expected = {}
    for cid, state in s.open_sessions.items():
        xp, xb = before.vectorizer.vectors(state.features)
        segment = before.segments.assign_sparse(*before.vectorizer.journey(state.features))
        p, contrib = before.convert.score_vector(xp, segment)
        look = before.lookalike.score_vector(xb) if xb is not None else None
        expected[cid] = (segment, p, before.churn.score_vector(xp, segment)[0], look, contrib)
    open_ = list(s.open_sessions)
    s._advance(s.now_ms + 10**10 + 1)  # event time passes every session's end and the delay
    assert not s.open_sessions and not s.due
    for cid in open_:
        segment, p, p_churn, look, contrib = expected[cid]
        st = states[cid]
        assert st.segment == segment
        assert st.p_convert == pytest.approx(p, abs=1e-12)
        assert st.p_churn == pytest.approx(p_churn, abs=1e-12)
        assert (st.lookalike is None) == (look is None)
        assert st.lookalike == pytest.approx(look, abs=1e-12)
        assert [n for n, _ in st.top_features] == [
            n for n, _ in top_of(before.vectorizer.propensity_names, contrib)
        ]
        # the customer's next event carries these scores even on a copy of its state
        assert s.closed[cid].p_convert == st.p_convert


def test_session_ends_become_examples_and_scores_refresh_on_schedule() -> None:
    #  c: e0 .. +1 min e1 .. +1 min e2 |2 h| e3   (refresh_s 10 min, session gap 30 min)
    #     ^ scored  (cached)  (cached)      ^ new session: previous one is an example
    s = _suite(refresh_s=600, close_batch=1)
    st = s.new_customer()
    t = 1_772_323_200_000
    out = [
        s.update(resolved("c", tp, t + m * 60_000, user_id="c"), st)
        for tp, m in (("landing_page", 0), ("pricing_page", 1), ("blog_post", 2))
    ]
    assert [o.p_convert for o in out] == [0.5] * 3 and st.scored_ms == t
    assert s.convert.n_pending == 0 and "c" in s.open_sessions
    s.update(resolved("c", "login", t + 122 * 60_000, user_id="c"), st)
    assert st.scored_ms == t + 122 * 60_000
    assert s.convert.n_pending == 1 and s.convert.pending["c"][0].ts_ms == t + 2 * 60_000
    # event time passing the session's end (another customer's event) closes it too
    s.update(resolved("d", "blog_post", t + 200 * 60_000, user_id="d"), s.new_customer())
    assert "c" not in s.open_sessions and s.convert.n_pending == 2


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


def _labels(seed: int, n: int, rate: float, fit_at: int, p: float = 0.05) -> list[Labelled]:
    rng = random.Random(seed)
    return [Labelled(f"c{i}", 0, 0, "all", p, rng.random() < rate, np.zeros(1), ("x",), fit_at)
            for i in range(n)]


def _watch(s: ModelSuite, labels: list[Labelled], start: int = 0) -> list:
    alerts = []
    for i, lab in enumerate(labels):
        alert = s._watch_error("convert", lab, T0_MS + (start + i) * MIN_MS)
        if alert is not None:
            alerts.append(alert)
    return alerts


def test_propensity_error_is_watched_per_model_version() -> None:
    #  error of model A (y ~ 5 %, p 0.05) ......... | error of model B (y ~ 25 %, p 0.05)
    #  one model: the error shift is one alert; a refit in between: two models, no alert
    s = ModelSuite(ModelConfig(drift_warmup=1_000, propensity_error_min_fit=1_000))
    alerts = _watch(s, _labels(0, 6_000, 0.05, 5_000) + _labels(1, 6_000, 0.25, 5_000))
    assert [a.metric for a in alerts] == ["propensity_error:convert"]
    assert alerts[0].evidence["after_mean"] > 3 * alerts[0].evidence["before_mean"]
    s = ModelSuite(ModelConfig(drift_warmup=1_000, propensity_error_min_fit=1_000))
    assert _watch(s, _labels(0, 6_000, 0.05, 5_000) + _labels(1, 6_000, 0.25, 15_000)) == []
    assert s.error_versions == {"convert": 15_000}
    track = s.drift.tracks[("propensity_error:convert", "all")]
    assert track.n == 6_000  # the detector restarted at the refit


def test_propensity_error_is_not_watched_before_a_fit_on_enough_labels() -> None:
    s = ModelSuite(ModelConfig(drift_warmup=1_000, propensity_error_min_fit=20_000))
    # the prior (no fit) and a fit on 10,000 labels: not watched, even when the error moves
    assert _watch(s, _labels(0, 6_000, 0.05, 0) + _labels(1, 6_000, 0.25, 10_000)) == []
    assert not s.drift.tracks and not s.error_versions
    # a label scored by the older model after the newer one's first label: skipped
    _watch(s, _labels(2, 10, 0.05, 20_000) + _labels(3, 10, 0.05, 10_000))
    assert s.drift.tracks[("propensity_error:convert", "all")].n == 10


def test_a_restart_keeps_the_cooldown() -> None:
    #  shift -> alert | refit (restart) | another shift within the cooldown: no second alert
    #  (one label a minute: the second shift comes ~5.5 days after the first alert)
    again = _labels(2, 2_000, 0.05, 15_000) + _labels(3, 2_000, 0.25, 15_000)
    n_alerts = []
    for cooldown_s in (7 * 86_400, 3_600):
        s = ModelSuite(ModelConfig(drift_warmup=1_000, propensity_error_min_fit=1_000,
                                   drift_cooldown_s=cooldown_s))
        first = _watch(s, _labels(0, 6_000, 0.05, 5_000) + _labels(1, 6_000, 0.25, 5_000))
        assert len(first) == 1
        n_alerts.append(len(_watch(s, again, start=12_000)))
    assert n_alerts == [0, 1]  # suppressed by the 7-day cooldown; alerted under a 1-hour one


def test_new_customers_counts_start_at_zero_and_stay_the_summarys() -> None:
    """`new_customer` starts the packed counts at zero; after any events they are what
    `Vectorizer.counts` gives from the summary, as for a state whose counts came from it
    (None, as in states kept from before them), and both give the same scores."""
    events, _ = population(13, 150)
    a, b = _suite(), _suite()
    fresh: dict[str, CustomerModelState] = {}
    legacy: dict[str, CustomerModelState] = {}
    for e in events:
        if e.customer_id not in legacy:
            legacy[e.customer_id] = CustomerModelState(b.new_customer().features)
            assert legacy[e.customer_id].counts is None
    assert _run(a, fresh, events) == _run(b, legacy, events)
    for cid, st in fresh.items():
        counts, cells = a.vectorizer.counts(st.features)
        assert st.counts == counts and st.cells == cells
        assert list(legacy[cid].counts) == list(counts)


def test_reservoirs_keep_rows_of_their_own_not_views_of_a_batch(monkeypatch) -> None:
    events, _ = population(14, 300)
    s, states = _suite(close_batch=8), {}
    closed = []
    real = ModelSuite._close_many

    def spy(self: ModelSuite, cids: list[str], at_ms: int) -> None:
        closed.extend(cids)
        real(self, cids, at_ms)

    monkeypatch.setattr(ModelSuite, "_close_many", spy)
    _run(s, states, events)
    assert len(closed) > 50
    rows = s.segments.res_rows + s.segments.short_rows
    assert rows and all(i.base is None and v.base is None for i, v in rows)

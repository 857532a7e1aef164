"""Segments of short histories: assigned with the segment shares of customers with as many
events (learned from a reservoir of them), not the shares among the long histories."""

from __future__ import annotations

import dataclasses
import pickle
import random

import numpy as np
import pytest

from online_models.features import FEATURE_NAMES, CustomerFeatures
from online_models.segments import SegmentModel, fit_weights, hashed_id, n_events_of
from tests.factories import MIN_MS, T0_MS, event
from tests.unit.test_models_segments import VEC, _learn, _model, journey_summary, population


def test_event_count_is_read_from_the_statistics() -> None:
    rng = random.Random(3)
    for n in (1, 2, 3, 4, 7, 20):
        s = journey_summary(rng, "reader", n)
        _, val = VEC.journey(s)
        assert int(n_events_of(val, np.array([len(val)]))[0]) == s.n_events == n
    # sessions split by the session id too, not only by the gap
    s = CustomerFeatures()
    s.update(event("blog_post", at_ms=T0_MS, session_id="a"))
    s.update(event("blog_post", at_ms=T0_MS + MIN_MS, session_id="b"))
    s.update(event("docs_page", at_ms=T0_MS + 2 * MIN_MS, session_id="b"))
    _, val = VEC.journey(s)
    assert int(n_events_of(val, np.array([len(val)]))[0]) == 3


def test_fit_weights_by_hand() -> None:
    # 30 rows only component 0 explains, 10 only component 1: Laplace-smoothed shares
    loglik = np.array([[0.0, -60.0]] * 30 + [[-60.0, 0.0]] * 10)
    assert np.exp(fit_weights(loglik)) == pytest.approx([31 / 42, 11 / 42], abs=1e-9)
    # rows no component tells apart say nothing: the weights stay where EM starts, even
    assert np.exp(fit_weights(np.zeros((20, 3)))) == pytest.approx([1 / 3] * 3, abs=1e-12)


def _short_people(seed: int, n: int, share_reader: float) -> list:
    """Customers with 1-2 events, mostly readers."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = "reader" if rng.random() < share_reader else rng.choice(("builder", "buyer"))
        out.append((f"short{seed}-{i}", kind, journey_summary(rng, kind, rng.randint(1, 2))))
    return out


@pytest.fixture(scope="module")
def fitted() -> tuple[SegmentModel, SegmentModel]:
    """The same mixture learned on long histories of three kinds in equal shares, with and
    without short-history weights; the short customers it has seen are 80 % readers."""
    models = []
    for short_events in (5, 0):
        model = _model(short_events=short_events, min_short_rows=20)
        _learn(model, population(1, 900))
        assert model.mixture is not None and model.mixture.k == 3
        for cid, _, s in _short_people(2, 1500, 0.8):
            model.learn_short(cid, *VEC.journey(s))
        model.refit_short()
        models.append(model)
    return models[0], models[1]


def _majority(model: SegmentModel, people: list, kind: str) -> str:
    """The segment most customers of `kind` are assigned to."""
    labs = [model.assign_sparse(*VEC.journey(s)) for _, k, s in people if k == kind]
    return max(set(labs), key=labs.count)


def _n_right(model: SegmentModel, people: list) -> int:
    """Customers assigned to their kind's majority segment."""
    seg = {k: _majority(model, people, k) for k in {k for _, k, _ in people}}
    return sum(model.assign_sparse(*VEC.journey(s)) == seg[k] for _, k, s in people)


def test_short_customers_get_the_weights_of_their_length(fitted) -> None:
    model, plain = fitted
    assert plain.short_log_weights is None
    w = model.short_log_weights
    assert w is not None and w.shape == (4, 3)
    # the readers' segment is the heaviest for 1 and 2 events
    people = _short_people(5, 600, 0.8)
    j = model.ids.index(_majority(model, population(1, 900), "reader"))
    assert np.argmax(w[0]) == j and np.argmax(w[1]) == j
    assert np.exp(model.mixture.log_weights[j]) < 0.45  # long histories: a third each
    # 3 and 4 events: no such customers seen, the mixture's weights
    assert np.array_equal(w[2], model.mixture.log_weights)
    assert np.array_equal(w[3], model.mixture.log_weights)
    # with the right prior, fewer short customers land outside their kind's segment
    assert _n_right(model, people) > _n_right(plain, people)


def test_every_assignment_path_uses_the_same_prior(fitted) -> None:
    model, _ = fitted
    m = model.mixture
    rng = random.Random(9)
    people = [journey_summary(rng, kind, n) for kind in ("reader", "buyer", "builder")
              for n in (1, 2, 3, 6, 12)]
    rows = [VEC.journey(s) for s in people]
    one = [model.assign_sparse(i, v) for i, v in rows]
    assert model.assign_many(rows) == one
    for (i, v), s, lab in zip(rows, people, one, strict=True):
        prior = model.short_log_weights[s.n_events - 1] if s.n_events < 5 else m.log_weights
        joint = m.theta[:, i] @ v + prior
        assert lab == model.ids[int(joint.argmax())]
        post = model.posterior(i, v)
        expect = np.exp(joint - joint.max()) / np.exp(joint - joint.max()).sum()
        assert [post[x] for x in model.ids] == pytest.approx(expect.tolist(), rel=1e-9)


def test_a_customer_leaves_the_short_reservoir_when_it_grows() -> None:
    model = _model(short_events=5, short_reservoir_size=50)
    rng = random.Random(4)
    cid_of = {}
    for i in range(200):
        cid_of[hashed_id(f"c{i}")] = f"c{i}"
        model.learn_short(f"c{i}", *VEC.journey(journey_summary(rng, "reader", 2)))
    assert len(model.short_keys) == 50 and model.n_short == 200
    for key in list(model.short_index)[:10]:
        model.learn_sparse(cid_of[key], *VEC.journey(journey_summary(rng, "reader", 6)),
                           lambda: np.zeros(len(FEATURE_NAMES)))
        assert key not in model.short_index
    assert len(model.short_keys) == 40 == len(model.short_rows) == len(model.short_index)
    assert all(model.short_keys[slot] == key for key, slot in model.short_index.items())


def test_checkpoint_from_before_short_histories_still_loads(fitted) -> None:
    """A model pickled before these fields (slots pickle by name: they are simply missing)
    keeps assigning with the mixture's weights and learning as before."""
    _, plain = fitted
    names = [f.name for f in dataclasses.fields(SegmentModel)]
    new_fields = names[names.index("short_events"):]
    _, slots = plain.__getstate__()
    old_slots = {k: v for k, v in slots.items() if k not in new_fields}
    old = pickle.loads(pickle.dumps(plain))
    for name in new_fields:
        delattr(old, name)
    assert old_slots.keys() == {n for n in names if hasattr(old, n)}
    assert not hasattr(old, "short_log_weights")
    rng = random.Random(11)
    rows = [VEC.journey(journey_summary(rng, "buyer", n)) for n in (1, 2, 8)]
    assert [old.assign_sparse(i, v) for i, v in rows] == [plain.assign_sparse(i, v)
                                                         for i, v in rows]
    assert old.assign_many(rows) == plain.assign_many(rows)
    old.learn_short("new", *rows[0])  # no short histories in an old model: nothing happens
    assert not hasattr(old, "short_index")
    old.learn_sparse("new", *rows[2], lambda: np.zeros(len(FEATURE_NAMES)))
    assert old.n_updates == plain.n_updates + 1


def test_suite_events_carry_the_short_prior_and_drift_counts_them_under_the_mixtures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On simulated customers: a short history's events carry its segment under the shares of
    customers with as many events, and the drift detectors count them under the mixture's own
    weights (which do not move as the population matures); long histories: one label."""
    from online_models.drift import DriftMonitor
    from online_models.suite import ModelConfig, ModelSuite
    from streams.evaluate import simulated

    data = simulated(3000, 7, days=60)
    suite = ModelSuite(ModelConfig(seed=0))
    states: dict = {}
    seen: list[str] = []
    real = DriftMonitor.update

    def spy(self, metric, segment, *args, **kwargs):
        if metric == "conversion_rate":
            seen.append(segment)
        return real(self, metric, segment, *args, **kwargs)

    monkeypatch.setattr(DriftMonitor, "update", spy)
    n_short_differ = 0
    for e in data.events:
        st = states.get(e.customer_id)
        if st is None:
            st = states[e.customer_id] = suite.new_customer()
        seen.clear()
        scores = suite.update(e, st)
        assert scores.segment == st.segment
        assert seen == ["all"] + ([st.watch_segment] if st.watch_segment != "all" else [])
        n_short_differ += st.watch_segment != st.segment
    assert suite.segments.short_log_weights is not None
    assert n_short_differ > 100
    # the scores of the sessions closed last: one label for long histories, two for some short
    closed = list(suite.closed.values())
    long = [c for c in closed if c.n_events >= suite.config.segment_min_events]
    assert long and all(c.watch_segment == c.segment for c in long)
    assert any(c.watch_segment != c.segment for c in closed if c not in long)


def test_both_assignments_from_one_product_are_the_two_assignments(fitted) -> None:
    model, plain = fitted
    rng = random.Random(10)
    people = [journey_summary(rng, kind, n) for kind in ("reader", "buyer", "builder")
              for n in (1, 2, 3, 4, 6, 12) for _ in range(4)]
    rows = [VEC.journey(s) for s in people]
    for m in (model, plain):
        short = [m.assign_sparse(i, v) for i, v in rows]
        weights = [m.assign_sparse(i, v, short=False) for i, v in rows]
        assert [m.assign_both(i, v) for i, v in rows] == list(zip(short, weights, strict=True))
        idx = np.concatenate([i for i, _ in rows])
        val = np.concatenate([v for _, v in rows])
        starts = np.cumsum([0] + [len(i) for i, _ in rows[:-1]])
        assert m.assign_flat_both(idx, val, starts) == (
            m.assign_flat(idx, val, starts), m.assign_flat(idx, val, starts, short=False))
        assert m.assign_flat(idx, val, starts) == short
    assert any(a != b for a, b in (model.assign_both(i, v) for i, v in rows))

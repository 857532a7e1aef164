"""Segments: a mixture of Markov chains recovers journey types, k from the data, stable ids."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
from sklearn.metrics import adjusted_rand_score

from online_models.features import FEATURE_NAMES, START, CustomerFeatures, Vectorizer
from online_models.segments import N_STATS, SegmentModel, posteriors
from tests.factories import MIN_MS, T0_MS, event

VEC = Vectorizer()
# Three journey types: what follows what, how long between steps, how often a session goes on.
TYPES = {
    "reader": ({"blog_post": {"blog_post": 0.5, "landing_page": 0.3, "social_visit": 0.2},
                "landing_page": {"blog_post": 0.6, "pricing_page": 0.4},
                "social_visit": {"blog_post": 0.7, "landing_page": 0.3},
                "pricing_page": {"blog_post": 0.8, "landing_page": 0.2}}, 60, 0.4),
    "builder": ({"docs_page": {"app_open": 0.4, "feature_use": 0.4, "docs_page": 0.2},
                 "app_open": {"feature_use": 0.8, "docs_page": 0.2},
                 "feature_use": {"feature_use": 0.5, "docs_page": 0.3, "app_open": 0.2}}, 120, 0.8),
    "buyer": ({"pricing_page": {"email_click": 0.5, "ad_click": 0.3, "pricing_page": 0.2},
               "email_click": {"pricing_page": 0.7, "ad_click": 0.3},
               "ad_click": {"pricing_page": 0.8, "email_click": 0.2}}, 30, 0.6),
    "support": ({"support_ticket": {"support_chat": 0.6, "review": 0.4},
                 "support_chat": {"support_ticket": 0.7, "review": 0.3},
                 "review": {"support_ticket": 0.5, "support_chat": 0.5}}, 300, 0.5),
}


def journey_summary(rng: random.Random, kind: str, n_events: int) -> CustomerFeatures:
    """One customer of `kind`: a Markov walk, log-normal step gaps, sessions hours apart."""
    matrix, step_s, stay = TYPES[kind]
    tp = rng.choice(sorted(matrix))
    t = T0_MS + rng.randrange(10**6) * 1000
    s = CustomerFeatures()
    for _ in range(n_events):
        s.update(event(tp, at_ms=t))
        row = matrix[tp]
        tp = rng.choices(sorted(row), [row[k] for k in sorted(row)])[0]
        if rng.random() < stay:
            t += int(1000 * step_s * math.exp(0.8 * rng.gauss(0, 1)))
        else:
            t += int(1000 * 3600 * 20 * math.exp(rng.gauss(0, 1))) + 31 * MIN_MS
    return s


def population(seed: int, n: int, kinds: tuple[str, ...] = ("reader", "builder", "buyer")):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        out.append((f"c{seed}-{i}", kind, journey_summary(rng, kind, rng.randint(5, 15))))
    return out


def _model(**kw) -> SegmentModel:
    kw = {"reservoir_size": 900, "first_eval_after": 600, "k_min": 2, "k_max": 6, "seed": 1, **kw}
    return SegmentModel(n_dst=len(VEC.states), **kw)


def _learn(model: SegmentModel, people) -> list:
    changes = []
    for cid, _, s in people:
        change = model.learn_sparse(cid, *VEC.journey(s), lambda: np.zeros(len(FEATURE_NAMES)))
        if change is not None:
            changes.append(change)
    return changes


def _labels(model: SegmentModel, people) -> list[str]:
    return [model.assign_sparse(*VEC.journey(s)) for _, _, s in people]


def test_mixture_recovers_journey_types_and_chooses_k() -> None:
    people = population(1, 900)
    model = _model()
    _learn(model, people)
    assert len(model.ids) == 3
    held_out = population(2, 300)
    ari = adjusted_rand_score([k for _, k, _ in held_out], _labels(model, held_out))
    assert ari > 0.95


def test_log_likelihood_is_linear_in_the_journey_statistics() -> None:
    # the statistics vector times theta equals the log-likelihood computed event by event
    people = population(3, 600)
    model = _model()
    _learn(model, people)
    m = model.mixture
    assert m is not None
    n_dst = len(VEC.states)
    n_cells = (n_dst + 1) * n_dst
    g = m.theta[:, n_cells:].reshape(m.k, 3, 3)
    var = -0.5 / g[:, :, 2]
    mu = g[:, :, 1] * var
    log_stay = g[:, 0, 0] + 0.5 * np.log(var[:, 0]) + mu[:, 0] ** 2 / (2 * var[:, 0])
    log_break = g[:, 1, 0] + 0.5 * np.log(var[:, 1]) + mu[:, 1] ** 2 / (2 * var[:, 1])
    state_of = {s: i for i, s in enumerate(VEC.states)}
    for _, _, s in people[:20]:
        direct = np.zeros(m.k)
        for (src, dst), c in s.transitions.items():
            i = n_dst if src == START else state_of[src]
            direct += c * m.theta[:, i * n_dst + state_of[dst]]
        for j, (n, s1, s2, log_p) in enumerate((
            (s.n_step_gaps, s.step_log_sum, s.step_log_sq, log_stay),
            (s.n_sessions - 1, s.session_log_sum, s.session_log_sq, log_break),
        )):
            # n log p + sum over gaps of log N(l; mu, var), without the 2 pi constant
            direct += n * log_p - n * 0.5 * np.log(var[:, j]) - (
                s2 - 2 * mu[:, j] * s1 + n * mu[:, j] ** 2
            ) / (2 * var[:, j])
        idx, val = VEC.journey(s)
        assert np.allclose(m.theta[:, idx] @ val, direct)
        assert len(idx) == len(s.transitions) + N_STATS


def test_ids_are_stable_when_refitted_and_a_new_cluster_gets_a_new_id() -> None:
    model = _model(refit_every=300)
    _learn(model, population(4, 900))
    probes = population(5, 90)
    before = _labels(model, probes)
    assert len(model.ids) == 3 and model.next_id == 4
    # more customers of the same types, refits on the way, and a forced re-evaluation
    changes = _learn(model, population(6, 900))
    changes.append(model.reevaluate())
    assert changes and all(not c.new and not c.retired for c in changes)
    assert _labels(model, probes) == before
    # a fourth type appears: exactly one new id, the old ones keep their customers
    changes = _learn(model, population(7, 1800, ("reader", "builder", "buyer", "support")))
    changes = [c for c in (*changes, model.reevaluate()) if c is not None]
    minted = [i for c in changes for i in c.new]
    assert len(model.ids) == 4 and len(minted) == 1
    assert not any(c.retired for c in changes)
    assert _labels(model, probes) == before
    newcomers = population(8, 40, ("support",))
    assert set(_labels(model, newcomers)) == set(minted)


def test_pickle_round_trip_assigns_and_learns_identically() -> None:
    model = _model()
    _learn(model, population(9, 900))
    copy = SegmentModel.restore(model.snapshot())
    probes = population(10, 200)
    assert _labels(copy, probes) == _labels(model, probes)
    copy2 = pickle.loads(pickle.dumps(model))
    more = population(11, 700)
    _learn(model, more)
    _learn(copy2, more)
    assert model.mixture is not None and copy2.mixture is not None
    assert np.array_equal(copy2.mixture.theta, model.mixture.theta)


def test_profiles_and_posteriors() -> None:
    model = _model()
    _learn(model, population(12, 900))
    profiles = model.profiles()
    assert len(profiles) == 3
    assert abs(sum(p.sample_share for p in profiles) - 1) < 1e-9
    assert all(len(p.examples) == 5 for p in profiles)
    _, _, s = population(13, 1)[0]
    post = model.posterior(*VEC.journey(s))
    assert set(post) == set(model.ids) and abs(sum(post.values()) - 1) < 1e-9
    resp, ll = posteriors(np.array([[0.0, math.log(3.0)]]))
    assert np.allclose(resp, [[0.25, 0.75]]) and math.isclose(ll[0], math.log(4.0))


def test_posteriors_are_numpys_row_reductions_bit_for_bit() -> None:
    """`posteriors` reduces a column at a time: the same bits as numpy's row reductions."""
    from online_models.segments import _row_sums

    def reference(joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top = joint.max(axis=1, keepdims=True)
        e = np.exp(joint - top)
        total = e.sum(axis=1, keepdims=True)
        return e / total, (np.log(total) + top)[:, 0]

    rng = np.random.default_rng(11)
    for k in range(1, 25):
        for scale in (0.5, 20.0, 400.0):
            joint = rng.normal(scale=scale, size=(int(rng.integers(1, 3000)), k)) - 80.0
            want, got = reference(joint), posteriors(joint)
            assert want[0].tobytes() == got[0].tobytes()
            assert want[1].tobytes() == got[1].tobytes()
            e = rng.random(joint.shape) * scale
            assert _row_sums(e).tobytes() == e.sum(axis=1).tobytes()

"""Propensity: delayed labels, test-then-train, calibration, explanations, pickling."""

from __future__ import annotations

import dataclasses
import math
import pickle
import random

import numpy as np

from online_models.propensity import (
    PropensityModel,
    VectorPack,
    fit_logistic,
    top_contributions,
)
from tests.factories import DAY_MS, T0_MS

HORIZON = 7 * DAY_MS


def _feats(x: float, noise: float = 0.0) -> dict[str, float]:
    return {"share_web": x, "share_app": noise}


def _model(**kw) -> PropensityModel:
    return PropensityModel(
        outcomes=frozenset({"purchase"}), horizon_ms=HORIZON, snapshot_every_ms=DAY_MS, **kw
    )


def test_both_labels_are_released_when_the_horizon_passes() -> None:
    #  a: snapshot t0 .. purchase t0+1d .......... horizon t0+7d -> positive (released here)
    #  b: snapshot t0 ............................ horizon t0+7d -> negative (released here)
    m = _model()
    m.observe("a", T0_MS, _feats(1.0), "all", 0.5)
    m.observe("b", T0_MS, _feats(0.0), "all", 0.5)
    m.observe("a", T0_MS + 1000, _feats(1.0), "all", 0.5)  # within snapshot_every: not kept
    assert m.n_pending == 2 and m.n_labelled == 0
    assert m.outcome("a", T0_MS + DAY_MS) == []  # known, but not released before the horizon
    assert m.expire(T0_MS + HORIZON) == [] and m.n_labelled == 0
    released = m.expire(T0_MS + HORIZON + 1)
    assert sorted((lab.customer_id, lab.y) for lab in released) == [("a", True), ("b", False)]
    assert all(lab.labelled_ms == T0_MS + HORIZON + 1 for lab in released)
    assert m.n_pending == 0 and m.n_labelled == 2 and m.order == type(m.order)()


def test_outcome_after_the_horizon_is_a_negative() -> None:
    m = _model()
    m.observe("a", T0_MS, _feats(1.0), "all", 0.5)
    m.outcome("a", T0_MS + HORIZON + 1)
    (lab,) = m.expire(T0_MS + HORIZON + 2)
    assert lab.y is False


def test_pending_is_bounded() -> None:
    m = _model(max_pending=10, max_per_customer=2)
    for i in range(50):
        m.observe(f"c{i % 5}", T0_MS + i * DAY_MS, _feats(0.5), "all", 0.5)
    assert m.n_pending <= 10 and all(len(v) <= 2 for v in m.pending.values())
    assert m.n_dropped == 50 - m.n_pending


def _stream(seed: int, n: int):
    """True model: logit = -2 + 3 x; one customer per example, labelled after a day."""
    rng = random.Random(seed)
    for i in range(n):
        x = rng.random()
        p = 1 / (1 + math.exp(-(-2 + 3 * x)))
        yield i, x, rng.random() < p, p


def _run(m: PropensityModel, seed: int, n: int) -> list[tuple[float, bool, float]]:
    """(score, label, true probability) of every example, in snapshot order."""
    out = []
    truth = {}
    for i, x, y, p in _stream(seed, n):
        t = T0_MS + i * 60_000
        cid = f"c{i}"
        score, _ = m.score(_feats(x, random.Random(i).random()), "all")
        m.observe(cid, t, _feats(x, random.Random(i).random()), "all", score)
        truth[cid] = (y, p)
        if y:
            m.outcome(cid, t + 1000)
        for lab in m.expire(t):
            out.append((lab.snapshot_ms, lab.p, lab.y, truth[lab.customer_id][1]))
    out.extend(  # the horizon passes for every open snapshot
        (lab.snapshot_ms, lab.p, lab.y, truth[lab.customer_id][1])
        for lab in m.expire(T0_MS + n * 60_000 + HORIZON + 1)
    )
    return [(p, y, true_p) for _, p, y, true_p in sorted(out)]


def test_scores_are_the_ones_given_before_learning_and_calibrated() -> None:
    m = _model()
    records = _run(m, 0, 30_000)
    late = records[len(records) // 2 :]
    # calibration: in every decile of score, the mean score is close to the observed rate
    late.sort()
    for k in range(10):
        chunk = late[k * len(late) // 10 : (k + 1) * len(late) // 10]
        mean_p = sum(p for p, _, _ in chunk) / len(chunk)
        rate = sum(y for _, y, _ in chunk) / len(chunk)
        assert abs(mean_p - rate) < 0.06, (k, mean_p, rate)
    # and close to the true probabilities
    assert sum(abs(p - t) for p, _, t in late) / len(late) < 0.05
    contrib = m.score(_feats(1.0, 0.5), "all")[1]
    assert top_contributions(contrib, 1)[0][0] == "share_web"
    assert top_contributions(contrib, 1)[0][1] > 0


def test_test_then_train_the_recorded_score_is_the_score_before_the_label() -> None:
    m = _model()
    _run(m, 1, 2_000)
    p_before, _ = m.score(_feats(0.9), "all")
    fit = m.fit
    m.observe("z", T0_MS + 10**9, _feats(0.9), "all", p_before)
    m.outcome("z", T0_MS + 10**9 + 1)
    assert m.fit is fit and m.score(_feats(0.9), "all")[0] == p_before  # nothing learned yet
    (lab,) = m.expire(T0_MS + 10**9 + HORIZON + 1)
    assert lab.p == p_before and lab.y is True


def test_refit_matches_offline_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4))
    y = (rng.random(3000) < 1 / (1 + np.exp(-(x @ [1.5, -1.0, 0.0, 0.5] - 1)))).astype(float)
    fit = fit_logistic(x, y, l2=1e-4)
    ref = LogisticRegression(C=1 / (1e-4 * len(x))).fit((x - fit.mean) / fit.std, y)
    assert np.allclose(fit.w, ref.coef_[0], atol=1e-3) and abs(fit.b - ref.intercept_[0]) < 1e-3
    # a warm start from another fit converges to the same optimum
    warm = fit_logistic(x * 3 + 1, y, l2=1e-4, warm=fit)
    assert np.allclose(warm.w, fit.w, atol=1e-4)


def test_newton_stops_when_the_loss_no_longer_falls_at_the_same_optimum() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 5))
    y = (rng.random(2000) < 1 / (1 + np.exp(-(x @ [1.0, -2.0, 0.5, 0.0, 3.0])))).astype(float)
    steps: list[int] = []
    solve = np.linalg.solve

    def counted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        steps.append(1)
        return solve(a, b)

    np.linalg.solve = counted
    try:
        tight = fit_logistic(x, y, l2=1e-3, tol=0.0)
        n_tight = len(steps)
        steps.clear()
        early = fit_logistic(x, y, l2=1e-3)
    finally:
        np.linalg.solve = solve
    assert len(steps) < n_tight  # the last, useless Newton step is skipped
    assert np.allclose(early.w, tight.w, atol=1e-4) and abs(early.b - tight.b) < 1e-4


def test_segment_model_takes_over_when_it_has_enough_labels() -> None:
    m = _model(min_segment_labels=200)
    rng = random.Random(0)
    for i in range(800):
        seg = "s1" if i % 2 else "s2"
        cid = f"c{i}"
        m.observe(cid, T0_MS + i, _feats(0.5, rng.random()), seg, 0.5)
        if rng.random() < (0.8 if seg == "s1" else 0.2):
            m.outcome(cid, T0_MS + i + 1)
    m.expire(T0_MS + HORIZON + 10**6)
    m.refit()
    assert set(m.segment_fits) == {"s1", "s2"}
    assert m.score(_feats(0.5), "s1")[0] > 0.5 > m.score(_feats(0.5), "s2")[0]
    assert m.score(_feats(0.5), "s9")[0] == m.score(_feats(0.5), "all")[0]


def test_restored_model_scores_and_learns_identically() -> None:
    m = _model()
    _run(m, 2, 3_000)
    copy = PropensityModel.restore(m.snapshot())
    probes = [_feats(x / 10, x / 20) for x in range(11)]
    assert [copy.score(f, "all") for f in probes] == [m.score(f, "all") for f in probes]
    assert _run(copy, 3, 500) == _run(m, 3, 500)
    assert [copy.score(f, "all") for f in probes] == [m.score(f, "all") for f in probes]


def test_labels_carry_the_version_of_the_model_that_scored_them() -> None:
    #  snapshots before the first fit ........ fit (at 100 labels) ........ snapshots after
    #  fit_at 0 (the 0.5 prior)                                              fit_at 100
    m = _model(first_fit_after=100)
    for i in range(100):
        m.observe(f"c{i}", T0_MS + i, _feats(i % 2), "all", 0.5)
        if i % 2:
            m.outcome(f"c{i}", T0_MS + i + 1)
    m.observe("late", T0_MS + 200, _feats(1.0), "all", 0.5)
    first = m.expire(T0_MS + 150 + HORIZON)
    assert len(first) == 100 and {lab.fit_at for lab in first} == {0}
    assert m.fit is not None and m.fit_at == 100
    m.observe("next", T0_MS + 300, _feats(1.0), "all", m.score(_feats(1.0), "all")[0])
    later = m.expire(T0_MS + 400 + HORIZON)
    # "late" was scored before the fit, "next" by the model fitted on 100 labels
    assert [(lab.customer_id, lab.fit_at) for lab in later] == [("late", 0), ("next", 100)]


def _packed_model() -> PropensityModel:
    """A model with a full window, several customers with several pending snapshots (some
    labelled positive already), and segments."""
    m = _model(max_per_customer=3, fit_window=50, first_fit_after=20)
    rng = random.Random(5)
    for i in range(400):
        cid = f"c{i % 37}"
        m.observe(cid, T0_MS + i * DAY_MS // 12, np.array([rng.random(), rng.random() - 0.5]),
                  f"s{i % 3}", rng.random())
        if rng.random() < 0.3:
            m.outcome(cid, T0_MS + i * DAY_MS // 12 + 1)
        m.expire(T0_MS + i * DAY_MS // 12)
    assert len(m.window) == 50 and m.n_pending > 40 and m.fit is not None
    assert max(len(snaps) for snaps in m.pending.values()) > 1
    return m


def _same_model(a: PropensityModel, b: PropensityModel) -> None:
    """Every field equal, the vectors to the bit, the window's bound and the snapshot types."""
    assert b.window.maxlen == a.window.maxlen
    assert len(b.window) == len(a.window)
    for (xa, ya, sa), (xb, yb, sb) in zip(a.window, b.window, strict=True):
        assert xa.tobytes() == xb.tobytes() and xb.dtype == xa.dtype and (ya, sa) == (yb, sb)
    assert list(b.pending) == list(a.pending)
    for cid, snaps in a.pending.items():
        assert [(s.ts_ms, s.x.tobytes(), s.segment, s.p, s.y, s.fit_at) for s in snaps] == [
            (s.ts_ms, s.x.tobytes(), s.segment, s.p, s.y, s.fit_at) for s in b.pending[cid]]
        assert all(type(s) is type(snaps[0]) for s in b.pending[cid])
    for name in ("names", "order", "n_pending", "n_labelled", "n_positive", "n_fits", "fit_at",
                 "next_fit_at", "n_dropped"):
        assert getattr(b, name) == getattr(a, name), name


def test_a_checkpoint_packs_the_vectors_and_restores_them_to_the_bit() -> None:
    m = _packed_model()
    state = m.__getstate__()
    vectors = {id(x) for x, _, _ in m.window} | {
        id(snap.x) for snaps in m.pending.values() for snap in snaps}
    assert state["_vectors"].shape == (len(vectors), 2)  # each vector once, as a row
    assert len(state["window"][2]) == 50 and len(state["pending"][3]) == m.n_pending
    copy = PropensityModel.restore(m.snapshot())
    _same_model(m, copy)
    # each row is an array of its own, not a view that keeps the packed matrix alive
    assert all(x.base is None for x, _, _ in copy.window)
    # and both go on alike
    for i in range(400, 500):
        for model in (m, copy):
            t = T0_MS + i * DAY_MS // 12
            model.observe(f"c{i % 41}", t, np.array([0.1 * (i % 7), 0.2]), "s1", 0.4)
            model.expire(t)
    _same_model(m, copy)
    probe = np.array([0.3, 0.1])
    assert copy.score_vector(probe, "s1", explain=False) == m.score_vector(probe, "s1",
                                                                           explain=False)


def test_checkpoints_of_the_unpacked_format_still_restore() -> None:
    """Earlier checkpoints pickled the model's slots as they were: ``(None, {field: value})``."""
    m = _packed_model()
    old = pickle.dumps((None, {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}))
    copy = PropensityModel.__new__(PropensityModel)
    copy.__setstate__(pickle.loads(old))
    _same_model(m, copy)


def test_vectors_that_do_not_stack_are_pickled_as_they_are() -> None:
    m = _packed_model()
    first = next(iter(m.pending.values()))[0]
    first.x = np.array([1, 2, 3], dtype=np.int64)  # another shape and type than the rest
    state = m.__getstate__()
    assert isinstance(state["pending"], dict)  # not packed
    copy = pickle.loads(pickle.dumps(m))
    _same_model(m, copy)


def test_a_vector_pack_adds_nothing_from_a_list_with_one_that_does_not_fit() -> None:
    pack = VectorPack()
    a, b, c = np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])
    assert pack.rows([a, b, a]) == [0, 1, 0]
    assert pack.rows([c, b, np.array([1, 2])]) is None  # int64: the list is not packed
    assert pack.rows([c, np.array([1.0, 2.0, 3.0])]) is None  # another length
    assert pack.rows([c, a]) == [2, 0]  # c was not kept by the refused lists
    matrix = pack.with_matrix({})["_vectors"]
    assert matrix.tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]] and matrix.dtype == np.float64
    assert VectorPack().with_matrix({})["_vectors"].shape == (0, 0)

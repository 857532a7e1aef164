"""Segments: k chosen from the data, ids stable while clusters move, pickling round trip."""

from __future__ import annotations

import pickle

import numpy as np

from online_models.features import FEATURE_NAMES as _PLAIN
from online_models.segments import Reclustering, SegmentModel, kmeans, silhouette
from tests.unit.test_models_support import final_features, population

NAMES = ("a", "b")


def _blobs(rng: np.random.Generator, centers: list[tuple[float, float]], n: int):
    for i in range(n):
        c = centers[i % len(centers)]
        yield i % len(centers), {"a": c[0] + rng.normal(0, 0.3), "b": c[1] + rng.normal(0, 0.3)}


def _model(**kw) -> SegmentModel:
    return SegmentModel(names=NAMES, reservoir_size=600, first_eval_after=600, seed=1, **kw)


def test_silhouette_prefers_the_true_k() -> None:
    rng = np.random.default_rng(0)
    x = np.array([[f["a"], f["b"]] for _, f in _blobs(rng, [(0, 0), (5, 0), (0, 5), (5, 5)], 400)])
    scores = {k: silhouette(x, kmeans(x, k, np.random.default_rng(k))[1]) for k in range(2, 7)}
    assert max(scores, key=scores.__getitem__) == 4


def _learn(model: SegmentModel, rng, centers, n: int, offset: int = 0) -> list[Reclustering]:
    changes = []
    for i, (_, f) in enumerate(_blobs(rng, centers, n)):
        # segments read only `names` ("a", "b"); the plain features are there for profiles
        change = model.learn(f"cust{(offset + i) % 900}", {**dict.fromkeys(_PLAIN, 0.0), **f})
        if change is not None:
            changes.append(change)
    return changes


def test_k_from_data_and_ids_stable_when_clusters_move() -> None:
    rng = np.random.default_rng(1)
    centers = [(0.0, 0.0), (6.0, 0.0), (0.0, 6.0)]
    model = _model()
    _learn(model, rng, centers, 900)
    assert len(model.ids) == 3
    probes = [{"a": c[0], "b": c[1]} for c in centers]
    before = [model.assign(p) for p in probes]
    assert len(set(before)) == 3
    # every cluster drifts by ~1 unit, and the order the data arrives in changes
    moved = [(1.0, 0.5), (7.0, -0.5), (-0.5, 7.0)]
    for _ in range(3):
        _learn(model, rng, moved[::-1], 900, offset=0)
        model.reevaluate()
    after = [model.assign({"a": c[0], "b": c[1]}) for c in moved]
    assert after == before
    assert model.next_id == 4  # no id was ever minted after the first fit


def test_a_new_cluster_gets_a_new_id_and_old_ids_stay() -> None:
    rng = np.random.default_rng(2)
    model = _model(switch_margin=0.0)
    _learn(model, rng, [(0, 0), (6, 0), (0, 6)], 900)
    old = {model.assign({"a": 0, "b": 0}), model.assign({"a": 6, "b": 0})}
    changes = _learn(model, rng, [(0, 0), (6, 0), (0, 6), (12, 12)], 2400, offset=900)
    assert changes and changes[-1].k_after == 4
    minted = [i for c in changes for i in c.new]
    assert len(minted) == 1 and not any(c.retired for c in changes)
    assert {model.assign({"a": 0, "b": 0}), model.assign({"a": 6, "b": 0})} == old
    assert model.assign({"a": 12, "b": 12}) == minted[0]


def test_pickle_round_trip_assigns_identically() -> None:
    rng = np.random.default_rng(3)
    model = _model()
    _learn(model, rng, [(0, 0), (6, 0), (0, 6)], 900)
    copy = SegmentModel.restore(model.snapshot())
    probes = [{"a": float(a), "b": float(b)} for a in range(-2, 9, 2) for b in range(-2, 9, 2)]
    assert [copy.assign(p) for p in probes] == [model.assign(p) for p in probes]
    copy2 = pickle.loads(pickle.dumps(model))
    _learn(model, np.random.default_rng(9), [(1, 1)], 300)
    _learn(copy2, np.random.default_rng(9), [(1, 1)], 300)
    assert np.array_equal(copy2.centroids, model.centroids)


def test_segments_recover_behaviour_types_with_profiles() -> None:
    events, truth = population(5, 600)
    feats = final_features(events)
    model = SegmentModel(reservoir_size=600, first_eval_after=600, seed=0)
    for cid, f in feats.items():
        model.learn(cid, f)
    labels = {cid: model.assign(f) for cid, f in feats.items()}
    # each true type lands (almost entirely) in one segment of its own
    for kind in {"browser", "app_user", "buyer"}:
        segs = [labels[c] for c, k in truth.items() if k == kind]
        top = max(set(segs), key=segs.count)
        assert segs.count(top) / len(segs) > 0.9
    profiles = model.profiles()
    assert abs(sum(p.sample_share for p in profiles) - 1) < 1e-9
    buyer_seg = max(profiles, key=lambda p: p.centroid["share_ads"])
    assert buyer_seg.conversion_rate > 0.5 and len(buyer_seg.examples) == 5

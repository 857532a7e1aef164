"""River's own models as measured baselines for `journeymap evaluate`, on our models' data.

Where our models replace River's (propensity: an exact L2 logistic regression refitted by Newton;
segments: a mixture of Markov chains), these say by how much, on exactly the same inputs:

* propensity: `preprocessing.StandardScaler() | linear_model.LogisticRegression(...)` learns the
  labelled conversion examples our propensity model made (the same feature vectors and labels),
  in the same test-then-train order: each example is scored at its snapshot time by the model as
  it is then, and learned when its label became known (`labelled_ms`; a label known at a moment
  is learned before a snapshot of the same moment). Several optimizer / L2 settings, all reported.
  The AUC is over the same later half (by snapshot time) as ours. One model for all customers
  (ours adds per-segment models once a segment has 2,000 labels).
* segments: `cluster.KMeans` (and `cluster.DBSTREAM`) over each customer's behaviour vector
  (`Vectorizer.behaviour`: square roots of touchpoint shares and weighted log rhythm, the metric
  our k-means used before the mixture), learned once per customer with >= 5 events (the ones our
  segments learn from) in the order of their last events, then every customer assigned; ARI by
  number of events next to ours and the Bayes ceiling. KMeans is given the true number of
  segments (ours chooses k itself).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from river import cluster, compose, linear_model, optim, preprocessing

from online_models.propensity import Labelled
from online_models.suite import ModelSuite
from streams import segment_ceiling as ceil

RICH_EVENTS = 5

# name -> a fresh River pipeline
PROPENSITY_SETTINGS: dict[str, Callable[[], compose.Pipeline]] = {
    "SGD(0.01), l2=0 (River's defaults)": lambda: preprocessing.StandardScaler()
    | linear_model.LogisticRegression(),
    "SGD(0.05), l2=1e-3": lambda: preprocessing.StandardScaler()
    | linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-3),
    "Adam(0.01), l2=1e-4": lambda: preprocessing.StandardScaler()
    | linear_model.LogisticRegression(optimizer=optim.Adam(0.01), l2=1e-4),
}


def prequential_scores(lab: Sequence[Labelled],
                       make: Callable[[], compose.Pipeline]) -> list[float]:
    """P(convert) of each example from a fresh River model, scored at its snapshot time before
    learning it at its label time (labels known at a moment are learned before its snapshots)."""
    model = make()
    xs = [r.x for r in lab]
    order = sorted([(r.snapshot_ms, 1, i) for i, r in enumerate(lab)]
                   + [(r.labelled_ms, 0, i) for i, r in enumerate(lab)])
    p = [0.0] * len(lab)
    for _, score, i in order:
        if score:
            p[i] = model.predict_proba_one(xs[i]).get(True, 0.0)
        else:
            model.learn_one(xs[i], bool(lab[i].y))
    return p


def propensity_baselines(lab: Sequence[Labelled]) -> list[dict[str, Any]]:
    """Prequential AUC of each River setting on the later half of `lab` (sorted by snapshot)."""
    from sklearn.metrics import roc_auc_score

    half = len(lab) // 2
    yte = [bool(r.y) for r in lab[half:]]
    out = []
    for name, make in PROPENSITY_SETTINGS.items():
        t0 = time.process_time()
        p = prequential_scores(lab, make)
        cpu = time.process_time() - t0
        auc = float(roc_auc_score(yte, p[half:])) if len(set(yte)) == 2 else None
        out.append({"model": f"StandardScaler | LogisticRegression {name}",
                    "prequential_auc": auc, "mean_score": sum(p[half:]) / max(len(yte), 1),
                    "us_per_example": cpu / max(len(lab), 1) * 1e6})
    return out


def segment_baselines(suite: ModelSuite, states: dict[str, Any], last_seen: dict[str, int],
                      true_segment: dict[str, str], k: int) -> list[dict[str, Any]]:
    """ARI (all customers and by events) of River's clusterers over the behaviour vectors."""
    vec = suite.vectorizer
    names = vec.behaviour_names
    cids = sorted(states)
    n_events = {c: states[c].features.n_events for c in cids}
    xs = {c: dict(zip(names, vec.behaviour(states[c].features).tolist(), strict=True))
          for c in cids}
    learn = sorted((c for c in cids if n_events[c] >= RICH_EVENTS), key=last_seen.__getitem__)
    makers: dict[str, Callable[[], Any]] = {
        f"KMeans(k={k}) (River's defaults but k)": lambda: cluster.KMeans(n_clusters=k, seed=0),
        f"StandardScaler | KMeans(k={k})":
            lambda: preprocessing.StandardScaler() | cluster.KMeans(n_clusters=k, seed=0),
    }
    for seed in (0, 1, 2):
        makers[f"StandardScaler | KMeans(k={k}, halflife=0.05), seed {seed}"] = (
            functools.partial(_scaled_kmeans, k, 0.05, seed))
    makers["DBSTREAM(clustering_threshold=0.5)"] = lambda: cluster.DBSTREAM(0.5)
    out = []
    for name, make in makers.items():
        model = make()
        t0 = time.process_time()
        for c in learn:
            model.learn_one(xs[c])
        pred = {c: str(model.predict_one(xs[c])) for c in cids}
        cpu = time.process_time() - t0
        ari = ceil.ari_by_bucket(true_segment, pred, n_events, cids)
        out.append({"model": name, "ari": {b: v["ari"] for b, v in ari.items()},
                    "n_clusters": len(set(pred.values())), "cpu_s": cpu})
    return out


def _scaled_kmeans(k: int, halflife: float, seed: int) -> compose.Pipeline:
    return preprocessing.StandardScaler() | cluster.KMeans(n_clusters=k, halflife=halflife,
                                                           seed=seed)

"""Behavioural segments: online k-means with stable ids and a data-chosen number of segments.

Between re-evaluations every customer update moves its nearest centroid a little (mini-batch
k-means with a capped step count, so centroids keep tracking). On a schedule (after 1k, 2k, 4k ...
updates, then every `max_eval_every`) the model re-clusters a reservoir sample of customers for
k = k_min..k_max, keeps the smallest k within `parsimony` of the best silhouette (a k other than
the current one must win by `switch_margin`), and matches the new centroids to the old ones
(Hungarian matching on centroid distance) so a segment keeps its id while it moves. Only a
genuinely new cluster gets a new id.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from online_models.checkpoint import Snapshotting
from online_models.features import BEHAVIOUR_FEATURES, FEATURE_NAMES, LOG_FEATURES, model_vector

UNASSIGNED = "all"


def hashed_id(customer_id: str) -> str:
    """A short stable hash of a customer id: what segment profiles show as examples."""
    return hashlib.blake2b(customer_id.encode(), digest_size=8).hexdigest()


def kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, *, n_init: int = 3, n_iter: int = 50
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means with k-means++ seeding: (centroids, labels, inertia), best of n_init."""
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    sq = (x * x).sum(axis=1)
    for _ in range(n_init):
        centers = np.empty((k, x.shape[1]))
        centers[0] = x[rng.integers(len(x))]
        d2 = ((x - centers[0]) ** 2).sum(axis=1)
        for j in range(1, k):
            total = d2.sum()
            idx = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
            centers[j] = x[idx]
            d2 = np.minimum(d2, ((x - centers[j]) ** 2).sum(axis=1))
        labels = np.zeros(len(x), dtype=np.int64)
        for it in range(n_iter):
            dist = sq[:, None] - 2 * x @ centers.T + (centers * centers).sum(axis=1)[None, :]
            new_labels = dist.argmin(axis=1)
            if it > 0 and np.array_equal(new_labels, labels):
                break
            labels = new_labels
            for j in range(k):
                members = x[labels == j]
                centers[j] = members.mean(axis=0) if len(members) else x[rng.integers(len(x))]
        inertia = float(((x - centers[labels]) ** 2).sum())
        if best is None or inertia < best[2]:
            best = (centers.copy(), labels.copy(), inertia)
    assert best is not None
    return best


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (Euclidean); 0 for a single cluster."""
    ks = np.unique(labels)
    if len(ks) < 2:
        return 0.0
    sq = (x * x).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] - 2 * x @ x.T + sq[None, :], 0.0))
    mean_to = np.stack([dist[:, labels == j].mean(axis=1) for j in ks], axis=1)
    counts = np.array([(labels == j).sum() for j in ks])
    own = np.searchsorted(ks, labels)
    n_own = counts[own]
    a = mean_to[np.arange(len(x)), own] * n_own / np.maximum(n_own - 1, 1)
    mean_to[np.arange(len(x)), own] = np.inf
    b = mean_to.min(axis=1)
    s = np.where(n_own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


@dataclass(frozen=True, slots=True)
class Reclustering:
    """What one re-evaluation changed: analysts and drift detectors need to know."""

    n_updates: int
    k_before: int
    k_after: int
    kept: tuple[str, ...]
    new: tuple[str, ...]
    retired: tuple[str, ...]
    silhouettes: dict[int, float]


@dataclass(frozen=True, slots=True)
class SegmentProfile:
    """One segment in plain units, for analysts."""

    segment: str
    size: int
    sample_share: float
    centroid: dict[str, float]
    conversion_rate: float
    examples: tuple[str, ...]


@dataclass(slots=True)
class SegmentModel(Snapshotting):
    """Online clustering of customers' behaviour vectors into segments with stable ids."""

    k_min: int = 3
    k_max: int = 10
    reservoir_size: int = 2000
    min_customers: int = 200
    first_eval_after: int = 1000
    max_eval_every: int = 100_000
    switch_margin: float = 0.02
    parsimony: float = 0.02
    max_step_count: int = 2000
    silhouette_sample: int = 1000
    seed: int = 0
    names: tuple[str, ...] = BEHAVIOUR_FEATURES
    standardize: bool = True
    # state
    n_updates: int = 0
    n_customers: int = 0
    n_evals: int = 0
    next_eval_at: int = 0
    next_id: int = 1
    ids: list[str] = field(default_factory=list)
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    step_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale_std: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sizes: dict[str, int] = field(default_factory=dict)
    res_keys: list[str] = field(default_factory=list)
    res_index: dict[str, int] = field(default_factory=dict)
    res_x: np.ndarray = field(init=False)
    res_plain: np.ndarray = field(init=False)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if not 2 <= self.k_min <= self.k_max:
            raise ValueError(f"need 2 <= k_min <= k_max, got {self.k_min}..{self.k_max}")
        self.res_x = np.zeros((self.reservoir_size, len(self.names)))
        if not self.standardize:
            self.scale_mean, self.scale_std = np.zeros(len(self.names)), np.ones(len(self.names))
        self.res_plain = np.zeros((self.reservoir_size, len(FEATURE_NAMES)))
        self.rng = random.Random(self.seed)
        self.next_eval_at = self.first_eval_after

    # -- scoring ---------------------------------------------------------------------------
    def vector(self, feats: dict[str, float]) -> np.ndarray:
        return model_vector(feats, self.names)

    def assign(self, feats: dict[str, float]) -> str:
        """The segment id of a customer with these features (`"all"` before the first fit)."""
        return self.assign_vector(self.vector(feats))

    # -- learning --------------------------------------------------------------------------
    def assign_vector(self, x: np.ndarray) -> str:
        """`assign` for a vector already in the model's space (see `names`)."""
        if not self.ids:
            return UNASSIGNED
        z = (x - self.scale_mean) / self.scale_std if self.standardize else x
        return self.ids[int(((self.centroids - z) ** 2).sum(axis=1).argmin())]

    def learn(self, customer_id: str, feats: dict[str, float]) -> Reclustering | None:
        """Learn from one customer's current features; may re-cluster on the schedule."""
        return self.learn_vector(
            customer_id, self.vector(feats), lambda: model_vector(feats, FEATURE_NAMES)
        )

    def learn_vector(
        self, customer_id: str, x: np.ndarray, plain: Callable[[], np.ndarray]
    ) -> Reclustering | None:
        """`learn` for a vector in the model's space; `plain()` gives the customer's
        `model_vector(features, FEATURE_NAMES)` for profiles (called only when sampled)."""
        key = hashed_id(customer_id)
        slot = self.res_index.get(key)
        if slot is None:
            self.n_customers += 1
            if len(self.res_keys) < self.reservoir_size:
                slot = len(self.res_keys)
                self.res_keys.append(key)
                self.res_index[key] = slot
            else:
                j = self.rng.randrange(self.n_customers)
                if j < self.reservoir_size:
                    slot = j
                    del self.res_index[self.res_keys[slot]]
                    self.res_keys[slot] = key
                    self.res_index[key] = slot
        if slot is not None:
            self.res_x[slot] = x
            self.res_plain[slot] = plain()
        if self.ids:
            z = (x - self.scale_mean) / self.scale_std if self.standardize else x
            j = int(((self.centroids - z) ** 2).sum(axis=1).argmin())
            self.step_counts[j] = min(self.step_counts[j] + 1, self.max_step_count)
            self.centroids[j] += (z - self.centroids[j]) / self.step_counts[j]
        self.n_updates += 1
        if self.n_updates >= self.next_eval_at:
            return self.reevaluate()
        return None

    def move(self, old: str, new: str) -> None:
        """A customer's segment changed from `old` to `new`: keep the sizes."""
        if old == new:
            return
        if old in self.sizes:
            self.sizes[old] = max(0, self.sizes[old] - 1)
        if new != UNASSIGNED:
            self.sizes[new] = self.sizes.get(new, 0) + 1

    def reevaluate(self) -> Reclustering | None:
        """Re-cluster the reservoir for every k, keep the best, carry ids over to moved clusters."""
        interval = min(max(self.next_eval_at, self.first_eval_after), self.max_eval_every)
        self.next_eval_at = self.n_updates + interval
        n = len(self.res_keys)
        if n < max(self.min_customers, self.k_max * 5):
            return None
        self.n_evals += 1
        rng = np.random.default_rng([self.seed, self.n_evals])
        x = self.res_x[:n]
        if self.standardize:
            mean = x.mean(axis=0)
            std = x.std(axis=0)
            std = np.where(std > 1e-9, std, 1.0)
        else:  # the vectors come in a metric of their own (see features.Vectorizer.behaviour)
            mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
        z = (x - mean) / std
        sample = rng.choice(n, size=min(n, self.silhouette_sample), replace=False)
        fits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        scores: dict[int, float] = {}
        for k in range(self.k_min, min(self.k_max, n - 1) + 1):
            centers, labels, _ = kmeans(z, k, rng)
            fits[k] = (centers, labels)
            scores[k] = silhouette(z[sample], labels[sample])
        # Parsimony: the smallest k within `parsimony` of the best silhouette (splitting a real
        # segment in two often costs almost nothing in silhouette).
        top = max(scores.values())
        best_k = min(k for k, v in scores.items() if v >= top - self.parsimony)
        k_before = len(self.ids)
        if k_before in scores and scores[best_k] < scores[k_before] + self.switch_margin:
            best_k = k_before
        centers, labels = fits[best_k]
        new_ids: list[str] = [""] * best_k
        kept: list[str] = []
        if self.ids:
            old_plain = self.centroids * self.scale_std + self.scale_mean
            old_z = (old_plain - mean) / std
            cost = ((old_z[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                new_ids[c] = self.ids[r]
                kept.append(self.ids[r])
        fresh: list[str] = []
        for j in range(best_k):
            if not new_ids[j]:
                new_ids[j] = f"s{self.next_id}"
                self.next_id += 1
                fresh.append(new_ids[j])
        retired = tuple(i for i in self.ids if i not in kept)
        for old in retired:
            self.sizes.pop(old, None)
        self.ids = new_ids
        self.centroids = centers.copy()
        self.step_counts = np.minimum(
            np.bincount(labels, minlength=best_k).astype(np.float64), self.max_step_count
        )
        self.scale_mean, self.scale_std = mean, std
        return Reclustering(
            n_updates=self.n_updates,
            k_before=k_before,
            k_after=best_k,
            kept=tuple(kept),
            new=tuple(fresh),
            retired=retired,
            silhouettes=scores,
        )

    # -- reading ---------------------------------------------------------------------------
    def profiles(self, n_examples: int = 5) -> list[SegmentProfile]:
        """Each segment in plain units, from the reservoir sample (back-transformed means)."""
        n = len(self.res_keys)
        if not self.ids or n == 0:
            return []
        z = self.res_x[:n]
        if self.standardize:
            z = (z - self.scale_mean) / self.scale_std
        d2 = ((z[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        labels = d2.argmin(axis=1)
        conv = FEATURE_NAMES.index("n_conversions")
        out = []
        for j, seg in enumerate(self.ids):
            members = np.flatnonzero(labels == j)
            plain = self.res_plain[members]
            centroid: dict[str, float] = {}
            for i, name in enumerate(FEATURE_NAMES):
                col = plain[:, i] if len(members) else np.zeros(1)
                # model_vector stored log1p of heavy-tailed features: report plain units
                value = float(np.expm1(col).mean()) if name in LOG_FEATURES else float(col.mean())
                centroid[name] = round(value, 4)
            nearest = members[np.argsort(d2[members, j])[:n_examples]]
            out.append(
                SegmentProfile(
                    segment=seg,
                    size=self.sizes.get(seg, 0),
                    sample_share=len(members) / n,
                    centroid=centroid,
                    conversion_rate=float((plain[:, conv] > 0).mean()) if len(members) else 0.0,
                    examples=tuple(self.res_keys[i] for i in nearest),
                )
            )
        return out


"""Lookalikes: how much a customer behaves like the highest-value converted customers (0..1).

The model keeps the `max_top` converted customers with the most revenue (bounded) and their
behaviour vectors (outcome features excluded, so a new customer can score high before buying).
The score is exp(-ln 2 · d / d_ref): d is the mean standardized distance to the `k` nearest top
customers, d_ref the same distance among the top customers themselves, so a customer as close
as a typical top customer scores 0.5 and an exact lookalike 1.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from online_models.checkpoint import Snapshotting
from online_models.features import BEHAVIOUR_FEATURES, RunningScaler, model_vector
from online_models.threads import one_blas_thread


@dataclass(slots=True)
class LookalikeModel(Snapshotting):
    """Similarity to the top converted customers by revenue, over a bounded set."""

    max_top: int = 500
    k: int = 10
    min_top: int = 20
    names: tuple[str, ...] = BEHAVIOUR_FEATURES
    # Standardize with running moments (plain features); off for vectors already in a metric
    # space (features.Vectorizer.behaviour), which also spares the per-customer scaler update.
    standardize: bool = True
    scaler: RunningScaler = field(init=False)
    refresh_every: int = 500
    top: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)
    n_changes: int = 0
    _heap: list[tuple[float, str]] = field(default_factory=list)
    _cache: tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.scaler = RunningScaler(len(self.names))

    def score(self, feats: dict[str, float]) -> float | None:
        """0..1 similarity to the top customers; None until `min_top` of them are known."""
        if len(self.top) < self.min_top:
            return None
        return self.score_vector(model_vector(feats, self.names))

    def score_vector(self, x: np.ndarray) -> float | None:
        """`score` for a behaviour vector in the order of `names`."""
        if len(self.top) < self.min_top:
            return None
        points, d_ref, mean, std, sq = self._points()
        z = (x - mean) / std if self.standardize else x
        # |p - z|² = |p|² - 2 p·z + |z|²: one matrix-vector product for all top customers
        d2 = sq - 2.0 * (points @ z)
        k = min(self.k, len(d2))
        near = np.partition(d2, k - 1)[:k]
        d_k = float(np.sqrt(np.maximum(near + float(z @ z), 0.0)).sum()) / k
        return math.exp(-math.log(2) * d_k / d_ref)

    def score_many(self, x: np.ndarray) -> list[float | None]:
        """`score_vector` for the rows of `x` at once."""
        if len(self.top) < self.min_top:
            return [None] * len(x)
        points, d_ref, mean, std, sq = self._points()
        z = (x - mean) / std if self.standardize else x
        d2 = sq[:, None] - 2.0 * (points @ z.T)  # (top, rows)
        k = min(self.k, len(points))
        near = np.partition(d2, k - 1, axis=0)[:k] + (z * z).sum(axis=1)[None, :]
        d_k = np.sqrt(np.maximum(near, 0.0)).sum(axis=0) / k
        return np.exp(-math.log(2) * d_k / d_ref).tolist()

    def learn(self, customer_id: str, feats: dict[str, float]) -> None:
        """Every customer moves the scaler; a converted one may enter the top set."""
        x = model_vector(feats, self.names)
        self.scaler.learn(x)
        if feats.get("n_conversions", 0.0) > 0:
            self.learn_top(customer_id, x, feats.get("revenue", 0.0))

    def learn_top(self, customer_id: str, x: np.ndarray, revenue: float) -> None:
        """A converted customer with this revenue may enter the top set (x: in `names` order)."""
        if revenue <= 0:
            return
        if customer_id in self.top or len(self.top) < self.max_top:
            self.top[customer_id] = (revenue, x)
            heapq.heappush(self._heap, (revenue, customer_id))
            self.n_changes += 1
            return
        low = self._lowest()
        if revenue > self.top[low][0]:
            del self.top[low]
            self.top[customer_id] = (revenue, x)
            heapq.heappush(self._heap, (revenue, customer_id))
            self.n_changes += 1

    def _lowest(self) -> str:
        # a lazy min-heap of (revenue, customer): entries of replaced customers are skipped
        heap = self._heap
        if len(heap) > 4 * self.max_top:  # too many stale entries: rebuild
            heap[:] = [(r, c) for c, (r, _) in self.top.items()]
            heapq.heapify(heap)
        while heap and (heap[0][1] not in self.top or self.top[heap[0][1]][0] != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][1]

    def _points(self) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray]:
        # Points and the query share the scale frozen in the cache; it is rebuilt after
        # `refresh_every` changes to the top set, sooner while it is small (O(n²): not always).
        if self._cache is None or self.n_changes >= min(self.refresh_every, len(self._cache[0])):
            self.n_changes = 0
            raw = np.stack([x for _, x in self.top.values()])
            if self.standardize:
                mean, std = self.scaler.mean.copy(), self.scaler.std
            else:
                mean, std = np.zeros(raw.shape[1]), np.ones(raw.shape[1])
            points = (raw - mean) / std
            with one_blas_thread():
                sq = (points * points).sum(axis=1)
                d = np.sqrt(np.maximum(sq[:, None] - 2 * points @ points.T + sq[None, :], 0.0))
            np.fill_diagonal(d, np.inf)
            k = min(self.k, len(points) - 1)
            d_ref = float(np.partition(d, k - 1, axis=1)[:, :k].mean())
            self._cache = (points, max(d_ref, 1e-9), mean, std, (points * points).sum(axis=1))
        return self._cache

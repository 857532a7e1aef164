"""Conversion and churn propensity: online logistic regression with delayed labels.

A customer's feature snapshot is kept as *pending* (with the score it got) until its label is
known: positive when the outcome happens within `horizon_ms`, negative when the horizon passes
first. Only then does the model learn from it, so every score is computed before the model has
seen the example's label (test-then-train), and the (score, label) pairs are a prequential record.
Pending snapshots are bounded: at most one per customer per `snapshot_every_ms`, at most
`max_per_customer` per customer and `max_pending` in all (the oldest is dropped and counted).

The global model is always trained; a segment gets its own model, used once it has learned from
`min_segment_labels` examples. Standard scaling + logistic loss keeps scores calibrated, and makes
`weight × standardized value` an honest per-feature contribution.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from river import linear_model, optim, preprocessing

from online_models.checkpoint import Snapshotting
from online_models.features import transformed


@dataclass(frozen=True, slots=True)
class Labelled:
    """One example whose label became known: the prequential record of the model."""

    customer_id: str
    snapshot_ms: int
    labelled_ms: int
    segment: str
    p: float
    y: bool
    x: dict[str, float]  # the model inputs of the snapshot (for offline comparisons)


@dataclass(slots=True)
class _Pending:
    ts_ms: int
    x: dict[str, float]
    segment: str
    p: float


def _new_lr(learning_rate: float, l2: float) -> linear_model.LogisticRegression:
    return linear_model.LogisticRegression(
        optimizer=optim.SGD(learning_rate), l2=l2, intercept_lr=learning_rate
    )


@dataclass(slots=True)
class PropensityModel(Snapshotting):
    """P(outcome within `horizon_ms` | features now), learned online from delayed labels."""

    outcomes: frozenset[str]
    horizon_ms: int
    snapshot_every_ms: int = 86_400_000
    max_per_customer: int = 8
    max_pending: int = 200_000
    min_segment_labels: int = 2_000
    learning_rate: float = 0.02
    l2: float = 1e-4
    excluded: frozenset[str] = frozenset()
    scaler: preprocessing.StandardScaler = field(default_factory=preprocessing.StandardScaler)
    model: linear_model.LogisticRegression = field(init=False)
    segment_models: dict[str, linear_model.LogisticRegression] = field(default_factory=dict)
    segment_labels: dict[str, int] = field(default_factory=dict)
    pending: dict[str, list[_Pending]] = field(default_factory=dict)
    order: deque[tuple[int, str]] = field(default_factory=deque)
    n_pending: int = 0
    n_dropped: int = 0
    n_labelled: int = 0
    n_positive: int = 0

    def __post_init__(self) -> None:
        self.model = _new_lr(self.learning_rate, self.l2)

    def _x(self, feats: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in transformed(feats).items() if k not in self.excluded}

    def _model_for(self, segment: str) -> linear_model.LogisticRegression:
        if self.segment_labels.get(segment, 0) >= self.min_segment_labels:
            return self.segment_models[segment]
        return self.model

    def score(self, feats: dict[str, float], segment: str) -> tuple[float, dict[str, float]]:
        """(probability, contribution per feature) for a customer, without learning anything."""
        x = self._x(feats)
        xs = self.scaler.transform_one(x)
        model = self._model_for(segment)
        p = float(model.predict_proba_one(xs)[True])
        weights = model.weights  # a fresh dict per access in River: read it once
        contrib = {k: weights.get(k, 0.0) * v for k, v in xs.items()}
        return p, contrib

    def observe(
        self, customer_id: str, ts_ms: int, feats: dict[str, float], segment: str, p: float
    ) -> None:
        """Keep a snapshot of the customer (with its score) until its label is known."""
        snaps = self.pending.get(customer_id)
        if snaps and ts_ms - snaps[-1].ts_ms < self.snapshot_every_ms:
            return
        x = self._x(feats)
        self.scaler.learn_one(x)  # on snapshots only: the scale of what the model learns from
        if snaps is None:
            snaps = self.pending[customer_id] = []
        if len(snaps) >= self.max_per_customer:
            snaps.pop(0)
            self.n_pending -= 1
            self.n_dropped += 1
        snaps.append(_Pending(ts_ms, x, segment, p))
        self.order.append((ts_ms, customer_id))
        self.n_pending += 1
        while self.n_pending > self.max_pending:
            self._drop_oldest()

    def outcome(self, customer_id: str, ts_ms: int) -> list[Labelled]:
        """The outcome happened: the customer's snapshots within the horizon are positives."""
        snaps = self.pending.pop(customer_id, None)
        if not snaps:
            return []
        self.n_pending -= len(snaps)
        out = []
        for snap in snaps:
            positive = ts_ms - snap.ts_ms <= self.horizon_ms
            out.append(self._learn(customer_id, snap, positive, ts_ms))
        return out

    def expire(self, now_ms: int) -> list[Labelled]:
        """Snapshots whose horizon has passed by `now_ms` (event time) become negatives."""
        out: list[Labelled] = []
        while self.order and self.order[0][0] + self.horizon_ms < now_ms:
            ts_ms, customer_id = self.order.popleft()
            snaps = self.pending.get(customer_id)
            if not snaps or snaps[0].ts_ms != ts_ms:
                continue  # already labelled by an outcome or dropped
            snap = snaps.pop(0)
            if not snaps:
                del self.pending[customer_id]
            self.n_pending -= 1
            out.append(self._learn(customer_id, snap, False, now_ms))
        return out

    def _drop_oldest(self) -> None:
        ts_ms, customer_id = self.order.popleft()
        snaps = self.pending.get(customer_id)
        if snaps and snaps[0].ts_ms == ts_ms:
            snaps.pop(0)
            if not snaps:
                del self.pending[customer_id]
            self.n_pending -= 1
            self.n_dropped += 1

    def _learn(self, customer_id: str, snap: _Pending, y: bool, now_ms: int) -> Labelled:
        xs = self.scaler.transform_one(snap.x)
        self.model.learn_one(xs, y)
        seg = snap.segment
        if seg not in self.segment_models:
            self.segment_models[seg] = _new_lr(self.learning_rate, self.l2)
        self.segment_models[seg].learn_one(xs, y)
        self.segment_labels[seg] = self.segment_labels.get(seg, 0) + 1
        self.n_labelled += 1
        self.n_positive += int(y)
        return Labelled(customer_id, snap.ts_ms, now_ms, seg, snap.p, y, snap.x)


def top_contributions(contrib: dict[str, float], n: int = 3) -> tuple[tuple[str, float], ...]:
    """The `n` features that move a score most, signed (positive raises the probability)."""
    ranked = sorted(contrib.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:n]
    return tuple((k, round(v, 4)) for k, v in ranked)

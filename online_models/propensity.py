"""Conversion and churn propensity: logistic regression learned from delayed, fairly timed labels.

An example is a customer's feature snapshot at a defined moment (the suite takes one at each
session end), kept *pending* with the score it got then. Its label is decided by what happens in
the `horizon_ms` after it (positive if the outcome happens, else negative) and, so that the
training set is never skewed towards the quickly known positives, **both labels are released
together when the horizon has passed**. Only then does the model learn from it: every recorded
score was computed before its label was known (test-then-train), and the (score, label) pairs
are a fair prequential record. Pending snapshots are bounded (`max_per_customer`, `max_pending`;
the oldest is dropped and counted).

Learning is exact and cheap: released examples go to a bounded window (`fit_window`) and the
model is refitted by a few warm-started Newton steps (L2-regularized logistic loss on
standardized inputs) on a doubling schedule, then every `refit_every` labels. A segment gets its
own model once it has `min_segment_labels` examples in the window. Logistic loss keeps scores
calibrated; `weight × standardized value` is an honest per-feature contribution.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields

import numpy as np

from online_models.checkpoint import Snapshotting
from online_models.features import LOG_FEATURES
from online_models.frozen import maker
from online_models.slots import slot_values
from online_models.threads import one_blas_thread


@dataclass(frozen=True, slots=True)
class Labelled:
    """One example whose label became known: the prequential record of the model."""

    customer_id: str
    snapshot_ms: int
    labelled_ms: int
    segment: str
    p: float
    y: bool
    vector: np.ndarray  # the model inputs of the snapshot, in the order of `names`
    names: tuple[str, ...]
    # the version of the model that gave `p`: the labels its fit had learned from (0: no fit
    # yet, p is the 0.5 prior). Errors of different versions are errors of different models.
    fit_at: int = 0

    @property
    def x(self) -> dict[str, float]:
        """The model inputs by name (for offline comparisons)."""
        return dict(zip(self.names, self.vector.tolist(), strict=False))


_new_labelled = maker(Labelled)


@dataclass(slots=True)
class _Pending:
    ts_ms: int
    x: np.ndarray
    segment: str
    p: float
    y: bool = False
    fit_at: int = 0  # `Labelled.fit_at`


@dataclass(slots=True)
class LogisticFit:
    """A fitted L2 logistic regression on standardized inputs: plain arrays, pickles."""

    mean: np.ndarray
    std: np.ndarray
    w: np.ndarray
    b: float
    # the same model on raw inputs (w / std, and the intercept and offsets it implies)
    w_raw: np.ndarray = field(init=False)
    b_raw: float = field(init=False)
    offset: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.w_raw = self.w / self.std
        self.offset = self.mean * self.w_raw
        self.b_raw = self.b - float(self.offset.sum())

    def logit(self, x: np.ndarray) -> float:
        return float(x @ self.w_raw) + self.b_raw

    def contributions(self, x: np.ndarray) -> np.ndarray:
        return x * self.w_raw - self.offset


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    l2: float,
    warm: LogisticFit | None = None,
    n_iter: int = 8,
    tol: float = 1e-8,
) -> LogisticFit:
    """Newton's method on the mean logistic loss + l2/2 |w|² (intercept not penalized).

    A warm start (the previous fit, on a window that mostly overlaps) is near the optimum, where
    Newton converges quadratically: one or two steps, then the step-size test stops it. It also
    stops once a step lowered the loss by less than `tol`: Newton converges quadratically, so
    what is left is far smaller still, and another step (a Hessian over every row) would move
    the scores by ~1e-5 at most.
    """
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    d = z.shape[1]
    theta = np.zeros(d)
    if warm is not None and len(warm.w) == d - 1:
        # the warm weights were for the old standardization: carry them over to the new one
        theta[:-1] = warm.w_raw * std
        theta[-1] = warm.b_raw + float(mean @ warm.w_raw)
    else:
        rate = min(max(float(y.mean()), 1e-4), 1 - 1e-4)
        theta[-1] = math.log(rate / (1 - rate))
    reg = np.full(d, l2)
    reg[-1] = 0.0
    n = len(x)

    def loss(t: np.ndarray) -> tuple[float, np.ndarray]:
        m = z @ t
        value = np.logaddexp(0.0, m).mean() - (y * m).mean() + 0.5 * (reg * t * t).sum()
        return float(value), m

    current, margin = loss(theta)
    for _ in range(n_iter):
        p = 1.0 / (1.0 + np.exp(-np.clip(margin, -30, 30)))
        grad = z.T @ (p - y) / n + reg * theta
        hess = (z * (p * (1 - p))[:, None]).T @ z / n + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        # Damped Newton: halve the step until the loss goes down (a warm start from another
        # scaling, or near-separable data, can make the full step overshoot).
        for _ in range(20):
            candidate = theta - step
            value, m = loss(candidate)
            if value <= current:
                break
            step = step / 2
        else:
            break
        gain = current - value
        theta, current, margin = candidate, value, m
        if gain < tol or float(np.abs(step).max()) < 1e-6:
            break
    return LogisticFit(mean, std, theta[:-1].copy(), float(theta[-1]))


@dataclass(slots=True)
class PropensityModel(Snapshotting):
    """P(outcome within `horizon_ms` | features at a snapshot), learned from delayed labels.

    Inputs are vectors in the order of `names` (`score_vector`, `observe` with an array), or
    dicts of plain features (`score`, `observe` with a dict: log1p of heavy-tailed ones; the
    names are fixed by the first dict when not given).
    """

    outcomes: frozenset[str]
    horizon_ms: int
    snapshot_every_ms: int = 0
    max_per_customer: int = 8
    max_pending: int = 200_000
    min_segment_labels: int = 2_000
    # a segment's own model must lower the log loss on its newest labels by this share (a
    # model on a fraction of the data has to be clearly better to be worth its variance)
    segment_margin: float = 0.02
    l2: float = 1e-3
    fit_window: int = 20_000
    first_fit_after: int = 100
    # half the window: each label is in two fits (at 5,000, four, every accuracy figure of
    # `journeymap evaluate` was the same and refits cost twice as much)
    refit_every: int = 10_000
    names: tuple[str, ...] = ()
    fit: LogisticFit | None = None
    segment_fits: dict[str, LogisticFit] = field(default_factory=dict)
    window: deque[tuple[np.ndarray, bool, str]] = field(init=False)
    pending: dict[str, list[_Pending]] = field(default_factory=dict)
    order: deque[tuple[int, str]] = field(default_factory=deque)
    next_fit_at: int = 0
    n_pending: int = 0
    n_dropped: int = 0
    n_labelled: int = 0
    n_positive: int = 0
    n_fits: int = 0
    fit_at: int = 0  # labels learned when the models now scoring were fitted (0: none yet)

    def __post_init__(self) -> None:
        self.window = deque(maxlen=self.fit_window)
        self.next_fit_at = self.first_fit_after

    # -- pickling (checkpoints) ------------------------------------------------------------
    def __getstate__(self) -> dict[str, object]:
        """The fields, with the vectors of the window and of the pending snapshots as rows of
        one matrix (`VectorPack`): pickled one by one, tens of thousands of small arrays (and a
        `_Pending` each) made the two propensity models most of a checkpoint's models snapshot
        (bench/bench_checkpoint.py). Restored by :meth:`__setstate__` equal to the bit."""
        pack = VectorPack()
        return pack.with_matrix(self.packed_state(pack))

    def __setstate__(self, state: dict[str, object] | tuple[None, dict[str, object]]) -> None:
        """:meth:`__getstate__`'s state, or the default ``(None, fields)`` of the checkpoints
        before session 20."""
        self.unpack_state(*VectorPack.split(state))

    def packed_state(self, pack: VectorPack) -> dict[str, object]:
        """The fields, the window's and the pending snapshots' vectors replaced by their rows in
        `pack` (shared with another model packed into it: the suite's two propensity models
        observe the same vector objects). A field whose vectors do not all fit the pack is kept
        as it is."""
        state = slot_values(self, _FIELDS)
        rows = pack.rows([r[0] for r in self.window])
        if rows is not None:
            state["window"] = (_PACKED, self.window.maxlen, rows,
                               [r[1] for r in self.window], [r[2] for r in self.window])
        snaps = [snap for snaps in self.pending.values() for snap in snaps]
        rows = pack.rows([snap.x for snap in snaps])
        if rows is not None:
            state["pending"] = (
                _PACKED, list(self.pending), [len(v) for v in self.pending.values()], rows,
                [snap.ts_ms for snap in snaps], [snap.segment for snap in snaps],
                [snap.p for snap in snaps], [snap.y for snap in snaps],
                [getattr(snap, "fit_at", 0) for snap in snaps],
            )
        return state

    def unpack_state(self, state: dict[str, object], vectors: list[np.ndarray]) -> None:
        """Set the fields of :meth:`packed_state`'s `state`; `vectors` are the pack's rows."""
        for name, value in state.items():
            setattr(self, name, value)
        window = state.get("window")
        if isinstance(window, tuple) and window[:1] == (_PACKED,):
            _, maxlen, rows, ys, segs = window
            self.window = deque(zip([vectors[i] for i in rows], ys, segs, strict=True),
                                maxlen=maxlen)
        pending = state.get("pending")
        if isinstance(pending, tuple) and pending[:1] == (_PACKED,):
            _, cids, counts, rows, ts, segs, ps, ys, fit_ats = pending
            snaps = iter([
                _Pending(t, vectors[i], seg, p, y, fit_at)
                for t, i, seg, p, y, fit_at in zip(ts, rows, segs, ps, ys, fit_ats, strict=True)
            ])
            self.pending = {cid: [next(snaps) for _ in range(k)]
                            for cid, k in zip(cids, counts, strict=True)}

    # -- inputs ----------------------------------------------------------------------------
    def _vector(self, feats: dict[str, float] | np.ndarray) -> np.ndarray:
        if isinstance(feats, np.ndarray):
            return feats
        if not self.names:
            self.names = tuple(sorted(feats))
        return np.fromiter(
            (
                math.log1p(feats.get(k, 0.0)) if k in LOG_FEATURES else feats.get(k, 0.0)
                for k in self.names
            ),
            dtype=np.float64,
            count=len(self.names),
        )

    def _fit_for(self, segment: str) -> LogisticFit | None:
        return self.segment_fits.get(segment) or self.fit

    # -- scoring ---------------------------------------------------------------------------
    def score_vector(
        self, x: np.ndarray, segment: str, *, explain: bool = True
    ) -> tuple[float, np.ndarray | None]:
        """(probability, contribution per input or None if not `explain`) without learning;
        0.5 and None before a fit."""
        fit = self._fit_for(segment)
        if fit is None:
            return 0.5, None
        z = fit.logit(x)
        p = 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))
        return p, fit.contributions(x) if explain else None

    def score_many(
        self, x: np.ndarray, segments: list[str], *, explain: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """`score_vector` for the rows of `x` at once: (probabilities, contributions or None,
        whether each row had a fitted model)."""
        p = np.full(len(x), 0.5)
        fitted = np.zeros(len(x), dtype=bool)
        contrib = np.zeros_like(x) if explain else None
        rows_of: dict[str, list[int]] = {}
        for i, seg in enumerate(segments):
            rows_of.setdefault(seg, []).append(i)
        for seg, rows in rows_of.items():
            fit = self._fit_for(seg)
            if fit is None:
                continue
            xs = x[rows]
            z = np.clip(xs @ fit.w_raw + fit.b_raw, -30.0, 30.0)
            p[rows] = 1.0 / (1.0 + np.exp(-z))
            fitted[rows] = True
            if contrib is not None:
                contrib[rows] = xs * fit.w_raw - fit.offset
        return p, contrib, fitted

    def score(self, feats: dict[str, float], segment: str) -> tuple[float, dict[str, float]]:
        """(probability, contribution per feature) for a customer, without learning anything."""
        x = self._vector(feats)
        p, contrib = self.score_vector(x, segment)
        if contrib is None:
            return p, dict.fromkeys(self.names, 0.0)
        return p, dict(zip(self.names, contrib.tolist(), strict=True))

    # -- delayed labels --------------------------------------------------------------------
    def observe(
        self,
        customer_id: str,
        ts_ms: int,
        feats: dict[str, float] | np.ndarray,
        segment: str,
        p: float,
    ) -> None:
        """Keep a snapshot of the customer (with its score) until its label is known."""
        snaps = self.pending.get(customer_id)
        if snaps and ts_ms - snaps[-1].ts_ms < self.snapshot_every_ms:
            return
        x = self._vector(feats)
        if snaps is None:
            snaps = self.pending[customer_id] = []
        if len(snaps) >= self.max_per_customer:
            snaps.pop(0)
            self.n_pending -= 1
            self.n_dropped += 1
        snaps.append(_Pending(ts_ms, x, segment, p, fit_at=getattr(self, "fit_at", 0)))
        self.order.append((ts_ms, customer_id))
        self.n_pending += 1
        while self.n_pending > self.max_pending:
            self._drop_oldest()

    def outcome(self, customer_id: str, ts_ms: int) -> list[Labelled]:
        """The outcome happened: snapshots within the horizon before it become positives.

        Nothing is learned or returned yet: the labels are released by `expire` when each
        snapshot's horizon has passed, like the negatives (equal delay for both labels).
        """
        for snap in self.pending.get(customer_id, ()):
            if 0 <= ts_ms - snap.ts_ms <= self.horizon_ms:
                snap.y = True
        return []

    def expire(self, now_ms: int) -> list[Labelled]:
        """Snapshots whose horizon has passed by `now_ms` (event time): learned, returned."""
        out: list[Labelled] = []
        while self.order and self.order[0][0] + self.horizon_ms < now_ms:
            ts_ms, customer_id = self.order.popleft()
            snaps = self.pending.get(customer_id)
            if not snaps or snaps[0].ts_ms != ts_ms:
                continue  # dropped
            snap = snaps.pop(0)
            if not snaps:
                del self.pending[customer_id]
            self.n_pending -= 1
            out.append(self._learn(customer_id, snap, now_ms))
        if self.n_labelled >= self.next_fit_at:
            self.refit()
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

    def _learn(self, customer_id: str, snap: _Pending, now_ms: int) -> Labelled:
        self.window.append((snap.x, snap.y, snap.segment))
        self.n_labelled += 1
        self.n_positive += int(snap.y)
        return _new_labelled(
            customer_id, snap.ts_ms, now_ms, snap.segment, snap.p, snap.y, snap.x, self.names,
            getattr(snap, "fit_at", 0),  # snapshots pickled before versions: unknown, 0
        )

    # -- fitting ---------------------------------------------------------------------------
    def refit(self) -> None:
        """Refit the global and per-segment models on the window (warm-started Newton)."""
        with one_blas_thread():
            self._refit()

    def _refit(self) -> None:
        self.next_fit_at = self.n_labelled + min(max(self.n_labelled, 1), self.refit_every)
        if len(self.window) < 2:
            return
        x = np.stack([r[0] for r in self.window])
        y = np.fromiter((r[1] for r in self.window), dtype=np.float64, count=len(self.window))
        if y.min() == y.max():
            return
        self.fit = fit_logistic(x, y, self.l2, self.fit)
        self.n_fits += 1
        self.fit_at = self.n_labelled
        segs = np.array([r[2] for r in self.window])
        for seg in np.unique(segs):
            rows = np.flatnonzero(segs == seg)
            if not self._segment_helps(x, y, rows, str(seg)):
                self.segment_fits.pop(str(seg), None)
                continue
            self.segment_fits[str(seg)] = fit_logistic(
                x[rows], y[rows], self.l2, self.segment_fits.get(str(seg))
            )

    def _segment_helps(
        self, x: np.ndarray, y: np.ndarray, rows: np.ndarray, segment: str
    ) -> bool:
        """Whether the data support a segment's own model: enough labels of both kinds, and a
        model fitted on its older 80 % has a log loss on its newer 20 % lower by
        `segment_margin` than the global model's (which has seen those: it is favoured).
        The check's fit starts from the segment's current model, else the global one: the
        optimum is the same (the loss is convex), Newton gets there in fewer steps."""
        if len(rows) < self.min_segment_labels or y[rows].min() == y[rows].max():
            return False
        cut = int(len(rows) * 0.8)
        train, test = rows[:cut], rows[cut:]
        if y[train].min() == y[train].max() or self.fit is None:
            return False
        own = fit_logistic(x[train], y[train], self.l2, self.segment_fits.get(segment) or self.fit)

        def log_loss(fit: LogisticFit) -> float:
            z = np.clip(x[test] @ fit.w_raw + fit.b_raw, -30, 30)
            return float(np.mean(np.logaddexp(0.0, z) - y[test] * z))

        return log_loss(own) < (1.0 - self.segment_margin) * log_loss(self.fit)


_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PropensityModel))
_PACKED = "packed rows v1"  # marks a field that `packed_state` packed
_VECTORS = "_vectors"  # the pack's matrix in a state of `__getstate__`
_F64 = np.dtype(np.float64)


class VectorPack:
    """Float64 vectors of one length, each once (by identity), to be pickled as one matrix."""

    __slots__ = ("_at", "_n", "_rows")

    def __init__(self) -> None:
        self._at: dict[int, int] = {}
        self._rows: list[np.ndarray] = []  # (holds them: their ids stay theirs)
        self._n: int | None = None

    def rows(self, vectors: list[np.ndarray]) -> list[int] | None:
        """The row of each vector, added as needed; None (and nothing added) when one of them
        is not a float64 vector of the pack's length (only the vectors not in the pack yet are
        looked at: a shared vector once)."""
        n = self._n if self._n is not None else (len(vectors[0]) if vectors else 0)
        at, kept = self._at, self._rows
        start = len(kept)
        shape = (n,)
        out = []
        for v in vectors:
            i = at.get(id(v))
            if i is None:
                # (numpy's float64 dtype is one object: `is` spares a comparison per vector;
                # an equal dtype that is another object only makes the field go unpacked)
                if type(v) is not np.ndarray or v.dtype is not _F64 or v.shape != shape:
                    for w in kept[start:]:
                        del at[id(w)]
                    del kept[start:]
                    return None
                i = at[id(v)] = len(kept)
                kept.append(v)
            out.append(i)
        self._n = n
        return out

    def with_matrix(self, state: dict[str, object]) -> dict[str, object]:
        """`state` with the vectors added, one row each in the order of their rows."""
        rows, n = self._rows, self._n or 0
        # (all float64 of length n: one concatenation, no per-row views as np.stack makes)
        state[_VECTORS] = (np.concatenate(rows).reshape(len(rows), n) if rows
                           else np.empty((0, n)))
        return state

    @staticmethod
    def split(
        state: dict[str, object] | tuple[None, dict[str, object]],
    ) -> tuple[dict[str, object], list[np.ndarray]]:
        """A state of `with_matrix`, or the default ``(None, fields)`` one of a slotted object
        pickled before session 20: (the fields, the pack's vectors by row). Each vector is an
        array of its own (views would keep the whole matrix alive while any one row is held)."""
        if isinstance(state, tuple):
            state = state[1]
        matrix = state.pop(_VECTORS, None)
        return state, [row.copy() for row in matrix] if isinstance(matrix, np.ndarray) else []


def top_contributions(contrib: dict[str, float], n: int = 3) -> tuple[tuple[str, float], ...]:
    """The `n` features that move a score most, signed (positive raises the probability)."""
    ranked = sorted(contrib.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:n]
    return tuple((k, round(v, 4)) for k, v in ranked)


def top_of(
    names: tuple[str, ...], contrib: np.ndarray | None, n: int = 3
) -> tuple[tuple[str, float], ...]:
    """`top_contributions` for a contribution vector in the order of `names`."""
    if contrib is None:
        return ()
    # largest |contribution| first; ties in input order (a stable sort: deterministic)
    idx = np.argsort(-np.abs(contrib), kind="stable")[:n].tolist()
    values = contrib.tolist()
    return tuple((names[i], round(values[i], 4)) for i in idx)


def top_many(
    names: tuple[str, ...], contrib: np.ndarray | None, fitted: np.ndarray, n: int = 3
) -> list[tuple[tuple[str, float], ...]]:
    """`top_of` for every row of a contribution matrix (rows without a model get ())."""
    if contrib is None:
        return [()] * len(fitted)
    top = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :n]
    values = np.take_along_axis(contrib, top, axis=1).tolist()  # only the n kept per row
    return [
        tuple([(names[i], round(v, 4)) for i, v in zip(o, vs, strict=True)]) if f else ()
        for o, vs, f in zip(top.tolist(), values, fitted.tolist(), strict=True)
    ]

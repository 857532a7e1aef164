"""Behavioural segments: a mixture of Markov chains, with stable ids and k chosen from the data.

A customer's journey is a sequence of moves between touchpoints with gaps in between. Each
segment is a generative model of it: first-order move probabilities (from a start state), the
chance that the next step stays in the session, log-normal step gaps and session gaps, and
log-normal order values. A customer's log-likelihood under a segment is then *linear* in a sparse
vector of its own sufficient statistics (`Vectorizer.journey`: move counts, gap and revenue
counts, sums of logs and of squared logs), so assigning a customer is one sparse dot product and
fitting is EM with sparse matrix products (Dirichlet-smoothed moves, shrunk gap variances).

Learning: customers are sampled into a reservoir (their latest statistics at each session end).
On a schedule (after 1k, 2k, 4k ... updates, then every `max_eval_every`) EM is run for
k = k_min..k_max from k-means starts and the smallest k within `parsimony` of the lowest BIC
is kept (a different k than the current must win by `switch_margin` per customer); in between,
every `refit_every` updates, the current mixture is refitted warm. New components are matched to
the old ones by the customers they share (Hungarian matching on the reservoir), so a segment
keeps its id while it moves; only a genuinely new cluster gets a new id.

Short histories (fewer than `short_events` events, which the mixture does not learn from) are
assigned with the segment shares *of customers with that many events* as the prior, not the
mixture's weights (the shares among long histories): a second reservoir keeps short customers'
latest statistics, and on every change of the mixture (only then: a short customer's segment
changes when everyone's may, which the drift detectors account for) the weights per event count
are refitted by EM with the segments held fixed. A customer's
event count is read from its own statistics vector (1 + step gaps + session gaps).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix

from online_models.checkpoint import Snapshotting
from online_models.features import FEATURE_NAMES, LOG_FEATURES
from online_models.threads import one_blas_thread

UNASSIGNED = "all"
N_STATS = 9  # per-customer statistics after the move cells: see features.JOURNEY_STATS
MIN_VAR = 0.05  # floor of a log-gap variance (a segment of identical gaps is not certain)


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


@dataclass(frozen=True, slots=True)
class Mixture:
    """Fitted parameters: log-likelihood of a statistics vector = `theta @ phi + log_weights`."""

    theta: np.ndarray  # (k, n_cells + N_STATS)
    log_weights: np.ndarray  # (k,)
    loglik: float  # total over the customers it was fitted on
    n_params: int

    @property
    def k(self) -> int:
        return len(self.log_weights)

    def joint(self, phi: csr_matrix) -> np.ndarray:
        """(n, k) log p(customer, segment) for the rows of `phi`."""
        return np.asarray(phi @ self.theta.T) + self.log_weights

    def bic(self, n: int) -> float:
        return -2.0 * self.loglik + self.n_params * float(np.log(max(n, 2)))


def posteriors(joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(responsibilities, log-likelihood per row) from joint log-probabilities.

    The same values as `top = joint.max(axis=1)`, `e = exp(joint - top)`, `e / e.sum(axis=1)`,
    `log(e.sum(axis=1)) + top`, bit for bit, but with the short rows (k <= 20 segments) reduced
    a column at a time: numpy's reductions along a short row pay their set-up per row (~4x the
    time for k = 3, n = 4,000, and EM calls this on every iteration). See `_row_sums`.
    """
    k = joint.shape[1]
    top = joint[:, 0].copy()
    for j in range(1, k):  # max is exact in any order
        np.maximum(top, joint[:, j], out=top)
    e = np.exp(joint - top[:, None])
    total = _row_sums(e)
    return e / total[:, None], np.log(total) + top


def _row_sums(e: np.ndarray) -> np.ndarray:
    """`e.sum(axis=1)` of an (n, k) array, bit for bit, added a column at a time.

    numpy adds each contiguous row with its pairwise sum: under 8 elements one after another,
    from 8 in eight running sums (elements j, j+8, j+16 ... in sum j), which are then combined
    as ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)), and the last k % 8 elements added
    one by one (numpy's `pairwise_sum`, rows shorter than its 128-element blocks). The same
    additions in the same order here, on whole columns (test_models_segments checks it against
    numpy for k = 1..24: a numpy that changed its order would fail there).
    """
    cols = [e[:, j] for j in range(e.shape[1])]
    n = len(cols)
    if n < 8:
        acc = cols[0].copy()
        for c in cols[1:]:
            acc += c
        return acc
    r = [c.copy() for c in cols[:8]]
    i = 8
    while i < n - n % 8:
        for j in range(8):
            r[j] += cols[i + j]
        i += 8
    acc = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for c in cols[i:]:
        acc += c
    return acc


@dataclass(frozen=True, slots=True)
class _Pooled:
    """What every component is shrunk towards: the population's moves and gaps."""

    moves: np.ndarray  # (n_src, n_dst) row probabilities, never exactly 0
    means: np.ndarray  # (3,) mean log step gap, session gap, revenue
    variances: np.ndarray  # (3,)
    n_free: int  # free move probabilities: sum over rows of (observed destinations - 1)


def _pooled(phi: csr_matrix, n_dst: int) -> _Pooled:
    col = np.asarray(phi.sum(axis=0))[0]
    n_cells = len(col) - N_STATS
    counts = col[:n_cells].reshape(-1, n_dst)
    moves = (counts + 0.01) / (counts.sum(axis=1, keepdims=True) + 0.01 * n_dst)
    st = col[n_cells:].reshape(3, 3)
    n = np.maximum(st[:, 0], 1.0)
    means = st[:, 1] / n
    variances = np.maximum(st[:, 2] / n - means**2, MIN_VAR)
    n_free = int(np.maximum((counts > 0).sum(axis=1) - 1, 0).sum())
    return _Pooled(moves, means, variances, n_free)


def m_step(
    phi_t: csr_matrix,
    resp: np.ndarray,
    pooled: _Pooled,
    *,
    move_prior: float = 1.0,
    gap_prior: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(theta, log_weights) maximizing the expected log-likelihood under the responsibilities.

    Moves: Dirichlet-smoothed towards the pooled row (`move_prior` pseudo-moves per row); gap
    and revenue normals: shrunk towards the pooled mean and variance (`gap_prior` pseudo-gaps);
    the stay-in-session chance: Laplace-smoothed.
    """
    k = resp.shape[1]
    n_src, n_dst = pooled.moves.shape
    s = np.asarray(phi_t @ resp).T  # (k, D) expected statistics per component
    n_cells = n_src * n_dst
    c = s[:, :n_cells].reshape(k, n_src, n_dst)
    p = (c + move_prior * pooled.moves) / (c.sum(axis=2, keepdims=True) + move_prior)
    theta = np.empty((k, n_cells + N_STATS))
    theta[:, :n_cells] = np.log(p).reshape(k, n_cells)
    st = s[:, n_cells:].reshape(k, 3, 3)
    n, s1, s2 = st[:, :, 0], st[:, :, 1], st[:, :, 2]
    m0, mu0, v0 = gap_prior, pooled.means, pooled.variances
    mu = (s1 + m0 * mu0) / (n + m0)
    var = np.maximum((s2 + m0 * (v0 + mu0**2)) / (n + m0) - mu**2, MIN_VAR)
    stay = (n[:, 0] + 1.0) / (n[:, 0] + n[:, 1] + 2.0)
    base = -0.5 * np.log(var) - mu**2 / (2 * var)
    base[:, 0] += np.log(stay)
    base[:, 1] += np.log1p(-stay)
    g = theta[:, n_cells:].reshape(k, 3, 3)
    g[:, :, 0] = base
    g[:, :, 1] = mu / var
    g[:, :, 2] = -0.5 / var
    weights = (resp.sum(axis=0) + 1.0) / (len(resp) + k)
    return theta, np.log(weights)


def em(
    phi: csr_matrix,
    pooled: _Pooled,
    resp: np.ndarray,
    *,
    n_iter: int = 100,
    tol: float = 1e-6,
    phi_t: csr_matrix | None = None,
) -> tuple[Mixture, np.ndarray]:
    """EM from initial responsibilities: the fitted mixture and the final responsibilities.

    `phi_t`: `phi.T.tocsr()` when the caller has it (one per re-evaluation, not per run)."""
    if phi_t is None:
        phi_t = phi.T.tocsr()
    k = resp.shape[1]
    last = -np.inf
    mixture = None
    for _ in range(n_iter):
        theta, logw = m_step(phi_t, resp, pooled)
        resp, ll_rows = posteriors(np.asarray(phi @ theta.T) + logw)
        ll = float(ll_rows.sum())
        mixture = Mixture(theta, logw, ll, k * (pooled.n_free + 7) + k - 1)
        if ll - last <= tol * abs(ll):
            break
        last = ll
    assert mixture is not None
    return mixture, resp


def start_features(phi: csr_matrix, n_dst: int) -> np.ndarray:
    """A dense view of each row for k-means starts: Hellinger destination shares, gaps."""
    n_cells = phi.shape[1] - N_STATS
    to_dst = csr_matrix(
        (np.ones(n_cells), (np.arange(n_cells), np.arange(n_cells) % n_dst)),
        shape=(phi.shape[1], n_dst),
    )
    dst = np.asarray((phi @ to_dst).todense())
    shares = np.sqrt(dst / np.maximum(dst.sum(axis=1, keepdims=True), 1.0))
    st = np.asarray(phi[:, n_cells:].todense())
    step = np.where(st[:, 0] > 0, st[:, 1] / np.maximum(st[:, 0], 1), np.log(90.0))
    session = np.where(st[:, 3] > 0, st[:, 4] / np.maximum(st[:, 3], 1), np.log(86_400.0))
    stay = (st[:, 0] + 1) / (st[:, 0] + st[:, 3] + 2)
    return np.column_stack([shares, 0.2 * step, 0.2 * session, stay])


@dataclass(frozen=True, slots=True)
class _Derived:
    """What every fit on one reservoir matrix needs, computed once for all of them (pure
    functions of the matrix: the same values as computing them in each fit)."""

    pooled: _Pooled
    x: np.ndarray  # start_features
    phi_t: csr_matrix  # phi.T.tocsr()


def derive(phi: csr_matrix, n_dst: int) -> _Derived:
    return _Derived(_pooled(phi, n_dst), start_features(phi, n_dst), phi.T.tocsr())


def fit_mixture(
    phi: csr_matrix,
    n_dst: int,
    k: int,
    rng: np.random.Generator,
    *,
    n_init: int = 2,
    derived: _Derived | None = None,
) -> tuple[Mixture, np.ndarray]:
    """The best of `n_init` EM runs for `k` segments, each started from a k-means partition.

    `derived`: what `derive(phi, n_dst)` gives, when the caller fits several k on one `phi`."""
    d = derived if derived is not None else derive(phi, n_dst)
    best: tuple[Mixture, np.ndarray] | None = None
    for _ in range(n_init):
        _, labels, _ = kmeans(d.x, k, rng, n_init=1, n_iter=20)
        resp = np.full((len(labels), k), 0.1 / max(k - 1, 1))
        resp[np.arange(len(labels)), labels] = 0.9
        fit = em(phi, d.pooled, resp, phi_t=d.phi_t)
        if best is None or fit[0].loglik > best[0].loglik:
            best = fit
    assert best is not None
    return best


def _split(resp: np.ndarray, j: int, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Responsibilities with segment `j` cut in two by 2-means over its customers' features."""
    members = np.flatnonzero(resp.argmax(axis=1) == j)
    out = np.hstack([resp, np.zeros((len(resp), 1))])
    if len(members) < 4:
        return out
    _, labels, _ = kmeans(x[members], 2, rng, n_init=1, n_iter=20)
    moved = members[labels == 1]
    out[moved, -1] = out[moved, j]
    out[moved, j] = 0.0
    return out


def _merge(resp: np.ndarray, j: int) -> np.ndarray:
    """Responsibilities without segment `j` (its customers go where they fit next best)."""
    out = np.delete(resp, j, axis=1)
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.maximum(total, 1e-300), 1.0 / out.shape[1])


def _sample_slot(
    keys: list[str],
    index: dict[str, int],
    rows: list[tuple[np.ndarray, np.ndarray]],
    size: int,
    n_seen: int,
    rng: random.Random,
    key: str,
    row: tuple[np.ndarray, np.ndarray],
) -> int | None:
    """Reservoir sampling of the `n_seen`-th new key: a free slot while there is one, else a
    random slot with probability size / n_seen (its key evicted); None when not sampled."""
    if len(keys) < size:
        keys.append(key)
        rows.append(row)
        index[key] = len(keys) - 1
        return len(keys) - 1
    j = rng.randrange(n_seen)
    if j >= size:
        return None
    del index[keys[j]]
    keys[j] = key
    index[key] = j
    return j


def _owned(idx: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A row to keep: views (of a batch of sessions, `ModelSuite._close_many`) are copied, or
    each kept row would keep its whole batch alive; arrays of their own are kept as they are."""
    return (idx if idx.base is None else idx.copy(), val if val.base is None else val.copy())


def n_events_of(val: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Events of each row whose statistics end at `ends` (`Vectorizer.journey` puts the
    N_STATS last: each event after the first is a step gap or a session gap)."""
    return 1 + val[ends - N_STATS] + val[ends - N_STATS + 3]


def fit_weights(loglik: np.ndarray, *, n_iter: int = 100, tol: float = 1e-6) -> np.ndarray:
    """Log mixture weights maximizing the likelihood of rows with fixed components' (n, k)
    log-likelihoods (EM on the weights alone, Laplace-smoothed as in `m_step`)."""
    n, k = loglik.shape
    logw = np.full(k, -np.log(k))
    for _ in range(n_iter):
        resp, _ = posteriors(loglik + logw)
        new = np.log((resp.sum(axis=0) + 1.0) / (n + k))
        if np.abs(new - logw).max() < tol:
            return new
        logw = new
    return logw


@dataclass(frozen=True, slots=True)
class Reclustering:
    """What one re-evaluation changed: analysts and drift detectors need to know."""

    n_updates: int
    k_before: int
    k_after: int
    kept: tuple[str, ...]
    new: tuple[str, ...]
    retired: tuple[str, ...]
    bic: dict[int, float]
    # per kept id: the share of its reservoir customers (before) that now belong elsewhere
    moved: dict[str, float] = field(default_factory=dict)


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
    """Online mixture of Markov chains over customers' journeys, with stable segment ids.

    Inputs are sparse statistics vectors `(indices, values)` from `Vectorizer.journey` with
    `n_dst` destination states (the layout: `n_dst + 1` sources x `n_dst` cells, then N_STATS).
    """

    n_dst: int = 22
    k_min: int = 3
    k_max: int = 10
    reservoir_size: int = 4000
    min_customers: int = 200
    first_eval_after: int = 1000
    max_eval_every: int = 100_000
    refit_every: int = 5_000
    # the smallest k within `parsimony` BIC per reservoir customer of the best (a real segment
    # split in two, or one that drifted, costs little BIC); a k other than the current one must
    # win by `switch_margin` per customer
    parsimony: float = 0.05
    switch_margin: float = 0.02
    min_overlap: float = 0.3  # share of a new component's customers an old id must hold to carry
    seed: int = 0
    # state
    n_updates: int = 0
    n_customers: int = 0
    n_evals: int = 0
    n_refits: int = 0
    version: int = 0  # one more on every change of the mixture
    next_eval_at: int = 0
    next_refit_at: int = 0
    next_id: int = 1
    ids: list[str] = field(default_factory=list)
    mixture: Mixture | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    res_keys: list[str] = field(default_factory=list)
    res_index: dict[str, int] = field(default_factory=dict)
    res_rows: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    res_plain: np.ndarray = field(init=False)
    rng: random.Random = field(init=False)
    # Short histories (a checkpoint pickled before these has none of them: see `getattr`s).
    # Customers with 1..short_events-1 events are assigned with their own weights (0: off).
    short_events: int = 0
    short_reservoir_size: int = 4000
    min_short_rows: int = 50  # fewer customers with an event count: the mixture's weights
    # their latest statistics (reservoir) and log weights per event count
    n_short: int = 0
    n_short_updates: int = 0
    short_keys: list[str] = field(default_factory=list)
    short_index: dict[str, int] = field(default_factory=dict)
    short_rows: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    short_log_weights: np.ndarray | None = None  # (short_events - 1, k): row n-1 for n events
    # its own generator: the long histories' reservoir (and so the mixture) stays as without
    short_rng: random.Random | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.k_min <= self.k_max:
            raise ValueError(f"need 2 <= k_min <= k_max, got {self.k_min}..{self.k_max}")
        self.res_plain = np.zeros((self.reservoir_size, len(FEATURE_NAMES)))
        self.rng = random.Random(self.seed)
        self.next_eval_at = self.first_eval_after
        self.next_refit_at = self.first_eval_after

    @property
    def dim(self) -> int:
        return (self.n_dst + 1) * self.n_dst + N_STATS

    # -- scoring ---------------------------------------------------------------------------
    def assign_sparse(self, idx: np.ndarray, val: np.ndarray, *, short: bool = True) -> str:
        """The segment of a customer with these statistics (`"all"` before the first fit).

        `short=False`: with the mixture's weights whatever the history's length."""
        m = self.mixture
        if m is None:
            return UNASSIGNED
        prior = self._prior(val) if short else m.log_weights
        return self.ids[int((m.theta[:, idx] @ val + prior).argmax())]

    def assign_both(self, idx: np.ndarray, val: np.ndarray) -> tuple[str, str]:
        """(`assign_sparse(idx, val)`, `assign_sparse(idx, val, short=False)`) from one
        product of the statistics with the segments (the same values as two)."""
        m = self.mixture
        if m is None:
            return UNASSIGNED, UNASSIGNED
        base = m.theta[:, idx] @ val
        return (self.ids[int((base + self._prior(val)).argmax())],
                self.ids[int((base + m.log_weights).argmax())])

    def assign_many(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
        """`assign_sparse` for many customers at once (one sparse matrix product)."""
        if self.mixture is None:
            return [UNASSIGNED] * len(rows)
        idx = np.concatenate([i for i, _ in rows])
        val = np.concatenate([v for _, v in rows])
        starts = np.zeros(len(rows), dtype=np.int64)
        np.cumsum([len(i) for i, _ in rows[:-1]], out=starts[1:])
        return self.assign_flat(idx, val, starts)

    def assign_flat(
        self, idx: np.ndarray, val: np.ndarray, starts: np.ndarray, *, short: bool = True
    ) -> list[str]:
        """`assign_many` for rows concatenated (`Vectorizer.batch`): row r is
        `idx[starts[r]:starts[r + 1]]`, `val[...]` (never empty)."""
        if self.mixture is None:
            return [UNASSIGNED] * len(starts)
        base = self._flat_products(idx, val, starts)
        return self._best(base, self._flat_priors(val, starts) if short else None)

    def assign_flat_both(
        self, idx: np.ndarray, val: np.ndarray, starts: np.ndarray
    ) -> tuple[list[str], list[str]]:
        """(`assign_flat(...)`, `assign_flat(..., short=False)`) from one product of the rows
        with the segments (the same values as two)."""
        if self.mixture is None:
            return [UNASSIGNED] * len(starts), [UNASSIGNED] * len(starts)
        base = self._flat_products(idx, val, starts)
        return self._best(base, self._flat_priors(val, starts)), self._best(base, None)

    def _flat_products(self, idx: np.ndarray, val: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """(k, rows): sum_j theta[:, idx_j] * val_j per row, without building a sparse matrix."""
        assert self.mixture is not None
        return np.add.reduceat(self.mixture.theta[:, idx] * val, starts, axis=1)

    def _flat_priors(self, val: np.ndarray, starts: np.ndarray) -> np.ndarray | None:
        """(k, rows) log weights per row with the short-history weights (None: none learned,
        the mixture's for every row)."""
        assert self.mixture is not None
        weights = getattr(self, "short_log_weights", None)
        if weights is None:
            return None
        ends = np.append(starts[1:], len(val))
        n = n_events_of(val, ends).astype(np.int64)
        priors = np.where((n < self.short_events)[:, None],
                          weights[np.clip(n - 1, 0, len(weights) - 1)], self.mixture.log_weights)
        return priors.T

    def _best(self, base: np.ndarray, priors: np.ndarray | None) -> list[str]:
        """The segment of each column of `base` + its log weights (the mixture's if None)."""
        assert self.mixture is not None
        joint = base + (self.mixture.log_weights[:, None] if priors is None else priors)
        return [self.ids[j] for j in joint.argmax(axis=0).tolist()]

    def posterior(self, idx: np.ndarray, val: np.ndarray) -> dict[str, float]:
        """P(segment | journey) for every segment id."""
        m = self.mixture
        if m is None:
            return {UNASSIGNED: 1.0}
        resp, _ = posteriors((m.theta[:, idx] @ val + self._prior(val))[None, :])
        return dict(zip(self.ids, resp[0].tolist(), strict=True))

    def _prior(self, val: np.ndarray) -> np.ndarray:
        """Log segment weights for a customer with statistics `val` (see the module doc)."""
        assert self.mixture is not None
        short = getattr(self, "short_log_weights", None)  # None in checkpoints before them
        if short is not None:
            n = int(n_events_of(val, np.array([len(val)]))[0])
            if n < self.short_events:
                return short[max(n, 1) - 1]
        return self.mixture.log_weights

    # -- learning --------------------------------------------------------------------------
    def learn_sparse(
        self,
        customer_id: str,
        idx: np.ndarray,
        val: np.ndarray,
        plain: Callable[[], np.ndarray],
    ) -> Reclustering | None:
        """Learn from one customer's current statistics; may refit on the schedule.

        `plain()` gives the customer's `model_vector(features, FEATURE_NAMES)` for profiles
        (called only when the customer is in the reservoir)."""
        key = hashed_id(customer_id)
        if key in getattr(self, "short_index", ()):
            self._drop_short(key)
        slot = self.res_index.get(key)
        row = None
        if slot is None:
            self.n_customers += 1
            row = _owned(idx, val)
            slot = _sample_slot(self.res_keys, self.res_index, self.res_rows,
                                self.reservoir_size, self.n_customers, self.rng, key, row)
        if slot is not None:
            self.res_rows[slot] = row if row is not None else _owned(idx, val)
            self.res_plain[slot] = plain()  # what profiles show, as of this session end
        self.n_updates += 1
        if self.n_updates >= self.next_eval_at:
            with one_blas_thread():
                return self.reevaluate()
        if self.n_updates >= self.next_refit_at and self.mixture is not None:
            with one_blas_thread():
                return self.refit()
        return None

    def learn_short(self, customer_id: str, idx: np.ndarray, val: np.ndarray) -> None:
        """Keep the latest statistics of a customer with fewer than `short_events` events (a
        reservoir sample of them); refit the weights per event count on the schedule."""
        if not getattr(self, "short_events", 0):  # off, or a checkpoint from before them
            return
        key = hashed_id(customer_id)
        slot = self.short_index.get(key)
        row = None
        if slot is None:
            self.n_short += 1
            if self.short_rng is None:
                self.short_rng = random.Random(self.seed ^ 0x5EED)
            row = _owned(idx, val)
            slot = _sample_slot(self.short_keys, self.short_index, self.short_rows,
                                self.short_reservoir_size, self.n_short, self.short_rng, key,
                                row)
        if slot is not None:
            self.short_rows[slot] = row if row is not None else _owned(idx, val)
        self.n_short_updates += 1

    def _drop_short(self, key: str) -> None:
        """A short customer grew into the mixture's own reservoir: out of the short one."""
        slot = self.short_index.pop(key)
        last = len(self.short_keys) - 1
        if slot != last:
            self.short_keys[slot] = self.short_keys[last]
            self.short_rows[slot] = self.short_rows[last]
            self.short_index[self.short_keys[slot]] = slot
        self.short_keys.pop()
        self.short_rows.pop()

    def refit_short(self) -> None:
        """Weights per event count for short histories, by EM with the segments held fixed."""
        if not getattr(self, "short_events", 0):
            return
        m = self.mixture
        if m is None or not self.short_rows:
            return
        phi = self._matrix(self.short_rows)
        loglik = np.asarray(phi @ m.theta.T)
        n = np.array([1 + v[-N_STATS] + v[-N_STATS + 3] for _, v in self.short_rows],
                     dtype=np.int64)
        out = np.tile(m.log_weights, (self.short_events - 1, 1))
        for count in range(1, self.short_events):
            rows = n == count
            if rows.sum() >= self.min_short_rows:
                out[count - 1] = fit_weights(loglik[rows])
        self.short_log_weights = out
        self.version += 1

    def move(self, old: str, new: str) -> None:
        """A customer's segment changed from `old` to `new`: keep the sizes."""
        if old == new:
            return
        if old in self.sizes:
            self.sizes[old] = max(0, self.sizes[old] - 1)
        if new != UNASSIGNED:
            self.sizes[new] = self.sizes.get(new, 0) + 1

    def _phi(self) -> csr_matrix:
        return self._matrix(self.res_rows)

    def _matrix(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> csr_matrix:
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(i) for i, _ in rows], out=indptr[1:])
        return csr_matrix(
            (np.concatenate([v for _, v in rows]), np.concatenate([i for i, _ in rows]), indptr),
            shape=(len(rows), self.dim),
        )

    def refit(self) -> Reclustering | None:
        """Refit the current mixture on the reservoir, warm-started from its responsibilities."""
        self.next_refit_at = self.n_updates + self.refit_every
        if self.mixture is None:
            return None
        phi = self._phi()
        old_joint = self.mixture.joint(phi)
        resp, _ = posteriors(old_joint)
        mixture, resp = em(phi, _pooled(phi, self.n_dst), resp, n_iter=30)
        self.n_refits += 1
        return self._adopt(phi, mixture, resp, {mixture.k: mixture.bic(phi.shape[0])},
                           old_joint)

    def reevaluate(self) -> Reclustering | None:
        """Fit k = k_min..k_max on the reservoir, keep the lowest BIC, carry ids over."""
        interval = min(max(self.next_eval_at, self.first_eval_after), self.max_eval_every)
        self.next_eval_at = self.n_updates + interval
        self.next_refit_at = self.n_updates + self.refit_every
        n = len(self.res_keys)
        if n < max(self.min_customers, self.k_max * 5):
            return None
        self.n_evals += 1
        rng = np.random.default_rng([self.seed, self.n_evals])
        phi = self._phi()
        k_now = len(self.ids)
        # The first evaluation compares every k; later ones the neighbours of the current k
        # (the population changes slowly, and EM for every k on every evaluation is costly).
        ks = (
            range(self.k_min, self.k_max + 1)
            if not k_now
            else range(max(self.k_min, k_now - 1), min(self.k_max, k_now + 1) + 1)
        )
        derived = derive(phi, self.n_dst)
        fits = {k: fit_mixture(phi, self.n_dst, k, rng, n_init=1 if k_now else 2,
                               derived=derived) for k in ks}
        old_joint = None
        if self.mixture is not None:
            # The current mixture competes as itself (refitted warm), split (each of its two
            # largest segments in two) and merged (its smallest segment dropped): starts much
            # closer to the optimum than a fresh k-means start.
            old_joint = self.mixture.joint(phi)
            resp, _ = posteriors(old_joint)
            starts = [(k_now, resp)]
            order = np.argsort(-resp.sum(axis=0), kind="stable")
            if k_now + 1 in fits:
                starts += [(k_now + 1, _split(resp, int(j), derived.x, rng)) for j in order[:2]]
            if k_now - 1 in fits:
                starts.append((k_now - 1, _merge(resp, int(order[-1]))))
            for k, start in starts:
                fit = em(phi, derived.pooled, start, n_iter=50, phi_t=derived.phi_t)
                if fit[0].loglik > fits[k][0].loglik:
                    fits[k] = fit
        bic = {k: f[0].bic(n) for k, f in fits.items()}
        top = min(bic.values())
        best_k = min(k for k, v in bic.items() if v <= top + self.parsimony * n)
        if k_now in bic and bic[best_k] > bic[k_now] - self.switch_margin * n:
            best_k = k_now
        mixture, resp = fits[best_k]
        return self._adopt(phi, mixture, resp, bic, old_joint)

    def _adopt(
        self,
        phi: csr_matrix,
        mixture: Mixture,
        resp: np.ndarray,
        bic: dict[int, float],
        old_joint: np.ndarray | None = None,
    ) -> Reclustering:
        """Take `mixture` on, carrying ids over. `old_joint`: `self.mixture.joint(phi)` of the
        mixture being replaced, when the caller computed it already."""
        new_labels = resp.argmax(axis=1)
        k = mixture.k
        new_ids = [""] * k
        kept: list[str] = []
        moved: dict[str, float] = {}
        if self.mixture is not None:
            if old_joint is None:
                old_joint = self.mixture.joint(phi)
            old_labels = old_joint.argmax(axis=1)
            overlap = np.zeros((len(self.ids), k))
            np.add.at(overlap, (old_labels, new_labels), 1.0)
            rows, cols = linear_sum_assignment(-overlap)
            new_size = np.bincount(new_labels, minlength=k)
            old_size = overlap.sum(axis=1)
            for r, c in zip(rows, cols, strict=True):
                if overlap[r, c] >= self.min_overlap * max(new_size[c], 1):
                    new_ids[c] = self.ids[r]
                    kept.append(self.ids[r])
                    moved[self.ids[r]] = 1.0 - overlap[r, c] / max(old_size[r], 1.0)
        fresh: list[str] = []
        for j in range(k):
            if not new_ids[j]:
                new_ids[j] = f"s{self.next_id}"
                self.next_id += 1
                fresh.append(new_ids[j])
        retired = tuple(i for i in self.ids if i not in kept)
        for old in retired:
            self.sizes.pop(old, None)
        k_before = len(self.ids)
        self.ids = new_ids
        self.mixture = mixture
        self.version += 1
        self.refit_short()
        return Reclustering(
            n_updates=self.n_updates,
            k_before=k_before,
            k_after=k,
            kept=tuple(kept),
            new=tuple(fresh),
            retired=retired,
            bic=bic,
            moved=moved,
        )

    # -- reading ---------------------------------------------------------------------------
    def profiles(self, n_examples: int = 5) -> list[SegmentProfile]:
        """Each segment in plain units, from the reservoir sample (back-transformed means)."""
        n = len(self.res_keys)
        if self.mixture is None or n == 0:
            return []
        resp, _ = posteriors(self.mixture.joint(self._phi()))
        labels = resp.argmax(axis=1)
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
            surest = members[np.argsort(-resp[members, j], kind="stable")[:n_examples]]
            out.append(
                SegmentProfile(
                    segment=seg,
                    size=self.sizes.get(seg, 0),
                    sample_share=len(members) / n,
                    centroid=centroid,
                    conversion_rate=float((plain[:, conv] > 0).mean()) if len(members) else 0.0,
                    examples=tuple(self.res_keys[i] for i in surest),
                )
            )
        return out

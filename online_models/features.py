"""Per-customer behaviour features: a small running summary and a pure feature extractor.

`CustomerFeatures` is plain data (ints, floats, a dict, a small set) that the journey processor
can keep per customer; `features(summary, now_ms)` turns it into named floats in plain units
(hours, counts, shares, currency). The models see `model_vector(...)`: the same values with
heavy-tailed counts log-transformed, in the fixed order of `FEATURE_NAMES`.
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections.abc import Iterable, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from online_models.slots import tuple_state
from processors.events import CHANNELS, TouchpointEvent

HOUR_MS: Final = 3_600_000
OTHER: Final = "other"  # touchpoints outside the vocabulary are counted under this name
DAY_MS: Final = 86_400_000
MAX_ADOPTED: Final = 64  # distinct app features remembered per customer (bounded state)
ADOPTION_TOUCHPOINTS: Final = frozenset({"feature_use", "onboarding_complete"})
MAX_TOUCHPOINTS: Final = 64  # distinct touchpoint names counted per customer (bounded state)
MAX_TRANSITIONS: Final = 256  # distinct (src, dst) pairs counted per customer (bounded state)
START: Final = "^"  # the source of a customer's first touchpoint in `transitions`
# The touchpoints the models know by name (the default funnel and the simulator use these);
# others count as OTHER. ModelConfig.touchpoints overrides it.
DEFAULT_TOUCHPOINTS: Final[tuple[str, ...]] = (
    "landing_page", "blog_post", "pricing_page", "docs_page", "signup", "login", "trial_start",
    "purchase", "subscription_cancelled", "app_open", "feature_use", "onboarding_complete",
    "email_open", "email_click", "support_ticket", "support_chat", "demo_request", "sales_call",
    "ad_click", "social_visit", "review",
)
ACCOUNT_TOUCHPOINTS: Final = frozenset({"signup", "login"})
NEGATIVE_SCORE: Final = -0.5  # a text scored at or below this counts as negative

# Per-customer statistics after the move cells in `Vectorizer.journey` (n, sum log, sum log^2).
JOURNEY_STATS: Final[tuple[str, ...]] = (
    "n_step_gaps", "step_log_sum", "step_log_sq", "n_session_gaps", "session_log_sum",
    "session_log_sq", "n_revenue", "revenue_log_sum", "revenue_log_sq",
)
CHANNEL_FEATURES: Final = tuple(f"share_{c}" for c in CHANNELS)
FEATURE_NAMES: Final[tuple[str, ...]] = (
    "recency_h",
    "tenure_d",
    "n_events",
    "n_sessions",
    "events_per_session",
    "mean_step_gap_s",
    "mean_session_gap_h",
    "revenue",
    "n_conversions",
    "n_features_adopted",
    "n_support",
    "mean_sentiment",
    *CHANNEL_FEATURES,
)
# Counts, durations and money are heavy-tailed: the models see log1p of them.
LOG_FEATURES: Final = frozenset(
    {
        "recency_h",
        "tenure_d",
        "n_events",
        "n_sessions",
        "events_per_session",
        "mean_step_gap_s",
        "mean_session_gap_h",
        "revenue",
        "n_conversions",
        "n_features_adopted",
        "n_support",
    }
)
_LOG_MASK: Final = tuple(name in LOG_FEATURES for name in FEATURE_NAMES)
_LOG_AT: Final = tuple(i for i, is_log in enumerate(_LOG_MASK) if is_log)
# Outcome features say what happened, not how the customer behaves: kept out of behaviour models.
OUTCOME_FEATURES: Final = frozenset({"revenue", "n_conversions"})
BEHAVIOUR_FEATURES: Final[tuple[str, ...]] = tuple(
    f for f in FEATURE_NAMES if f not in OUTCOME_FEATURES and f != "recency_h"
)


@tuple_state
@dataclass(slots=True)
class CustomerFeatures:
    """A running behaviour summary of one customer, updated one event at a time."""

    session_gap_ms: int = 30 * 60 * 1000
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    last_touchpoint: str | None = None
    last_session_id: str | None = None
    n_events: int = 0
    n_sessions: int = 0
    step_gap_sum_ms: int = 0
    n_step_gaps: int = 0
    session_gap_sum_ms: int = 0
    revenue: float = 0.0
    n_conversions: int = 0
    n_churns: int = 0
    n_support: int = 0
    sentiment_sum: float = 0.0
    n_sentiment: int = 0
    channel_counts: dict[str, int] = field(default_factory=dict)
    # distinct app features used; the shared empty frozenset until the first (an empty set is
    # 216 bytes, and most customers adopt none), then a set of its own
    adopted: set[str] | frozenset[str] = frozenset()
    touchpoint_counts: dict[str, int] = field(default_factory=dict)
    n_negative: int = 0  # texts scored below NEGATIVE_SCORE (a churn signal)
    # Sufficient statistics of the journey as a Markov chain with log-normal gaps (segments):
    # (src, dst) move counts in event-time order, and sums of log gaps / log revenue and squares.
    transitions: dict[tuple[str, str], int] = field(default_factory=dict)
    step_log_sum: float = 0.0
    step_log_sq: float = 0.0
    session_log_sum: float = 0.0
    session_log_sq: float = 0.0
    n_revenue: int = 0
    revenue_log_sum: float = 0.0
    revenue_log_sq: float = 0.0

    def update(
        self,
        event: TouchpointEvent,
        *,
        conversion: frozenset[str] = frozenset({"purchase"}),
        churn: frozenset[str] = frozenset({"subscription_cancelled"}),
    ) -> None:
        """Fold one event in. Late events count, but never move `last_ts_ms` backwards."""
        ts = event.ts_ms
        tp_now = event.touchpoint
        if self.last_ts_ms is None or self.first_ts_ms is None:
            self.first_ts_ms = ts
            self.n_sessions = 1
            self._move(START, tp_now)
        else:
            gap = max(0, ts - self.last_ts_ms)
            new_session = gap > self.session_gap_ms or (
                event.session_id is not None
                and self.last_session_id is not None
                and event.session_id != self.last_session_id
            )
            lg = math.log(gap / 1000) if gap > 1000 else 0.0  # log seconds, floor 1 s
            if new_session:
                self.n_sessions += 1
                self.session_gap_sum_ms += gap
                self.session_log_sum += lg
                self.session_log_sq += lg * lg
            else:
                self.step_gap_sum_ms += gap
                self.n_step_gaps += 1
                self.step_log_sum += lg
                self.step_log_sq += lg * lg
            if ts >= self.last_ts_ms and self.last_touchpoint is not None:
                self._move(self.last_touchpoint, tp_now)
            self.first_ts_ms = min(self.first_ts_ms, ts)
        if self.last_ts_ms is None or ts >= self.last_ts_ms:
            self.last_ts_ms = ts
            self.last_touchpoint = event.touchpoint
            self.last_session_id = event.session_id
        self.n_events += 1
        self.channel_counts[event.channel] = self.channel_counts.get(event.channel, 0) + 1
        if event.revenue is not None:
            self.revenue += event.revenue
            if event.revenue > 0:
                lr = math.log(event.revenue)
                self.n_revenue += 1
                self.revenue_log_sum += lr
                self.revenue_log_sq += lr * lr
        if event.touchpoint in conversion:
            self.n_conversions += 1
        if event.touchpoint in churn:
            self.n_churns += 1
        if event.channel == "support":
            self.n_support += 1
        tp_counts = self.touchpoint_counts
        tp = event.touchpoint if event.touchpoint in tp_counts or len(tp_counts) < MAX_TOUCHPOINTS \
            else OTHER
        tp_counts[tp] = tp_counts.get(tp, 0) + 1
        if event.touchpoint in ADOPTION_TOUCHPOINTS and len(self.adopted) < MAX_ADOPTED:
            name = event.touchpoint
            if event.properties and isinstance(event.properties.get("feature"), str):
                name = f"{name}:{event.properties['feature']}"
            adopted = self.adopted
            if not isinstance(adopted, set):
                adopted = self.adopted = set(adopted)
            adopted.add(name)

    def _move(self, src: str, dst: str) -> None:
        moves = self.transitions
        key = (src, dst)
        if key not in moves:
            if len(moves) >= MAX_TRANSITIONS:
                key = (OTHER, OTHER)
            key = _shared_move(key)
        moves[key] = moves.get(key, 0) + 1

    def add_sentiment(self, score: float) -> None:
        """Record the sentiment of one of the customer's texts (-1 negative .. +1 positive)."""
        self.sentiment_sum += score
        self.n_sentiment += 1
        if score <= NEGATIVE_SCORE:
            self.n_negative += 1


# One tuple per distinct (src, dst) move, shared by every customer's `transitions` instead of a
# 56-byte tuple (and its strings) per customer and move: the same keys, equal and hashed alike.
# Bounded: past MAX_SHARED_MOVES distinct moves (touchpoint names are the producers'), new ones
# are kept per customer as before.
MAX_SHARED_MOVES: Final = 65_536
_SHARED_MOVES: dict[tuple[str, str], tuple[str, str]] = {}


def _shared_move(key: tuple[str, str]) -> tuple[str, str]:
    shared = _SHARED_MOVES.get(key)
    if shared is None:
        if len(_SHARED_MOVES) >= MAX_SHARED_MOVES:
            return key
        shared = _SHARED_MOVES[key] = key
    return shared


def features(summary: CustomerFeatures, now_ms: int) -> dict[str, float]:
    """Named features in plain units as of `now_ms` (event time, never the wall clock)."""
    return dict(zip(FEATURE_NAMES, _feature_values(summary, now_ms), strict=True))


def summary_vector(summary: CustomerFeatures, now_ms: int) -> np.ndarray:
    """`model_vector(features(summary, now_ms))` without the dict in between."""
    values = _feature_values(summary, now_ms)
    log1p = math.log1p
    for i in _LOG_AT:  # in place: the same values as a pass over the mask, a third cheaper
        values[i] = log1p(values[i])
    return np.array(values)


def _feature_values(summary: CustomerFeatures, now_ms: int) -> list[float]:
    """The values of `features` in the order of FEATURE_NAMES."""
    last = summary.last_ts_ms if summary.last_ts_ms is not None else now_ms
    first = summary.first_ts_ms if summary.first_ts_ms is not None else now_ms
    n = summary.n_events
    n_session_gaps = max(summary.n_sessions - 1, 0)
    out = [
        max(0, now_ms - last) / HOUR_MS,
        max(0, last - first) / DAY_MS,
        float(n),
        float(summary.n_sessions),
        n / summary.n_sessions if summary.n_sessions else 0.0,
        summary.step_gap_sum_ms / summary.n_step_gaps / 1000 if summary.n_step_gaps else 0.0,
        summary.session_gap_sum_ms / n_session_gaps / HOUR_MS if n_session_gaps else 0.0,
        summary.revenue,
        float(summary.n_conversions),
        float(len(summary.adopted)),
        float(summary.n_support),
        summary.sentiment_sum / summary.n_sentiment if summary.n_sentiment else 0.0,
    ]
    cc = summary.channel_counts
    out.extend([cc.get(channel, 0) / n if n else 0.0 for channel in CHANNELS])
    return out


def transformed(feats: dict[str, float]) -> dict[str, float]:
    """The model view of plain features: log1p of the heavy-tailed ones."""
    return {k: math.log1p(v) if k in LOG_FEATURES else v for k, v in feats.items()}


def model_vector(feats: dict[str, float], names: tuple[str, ...] = FEATURE_NAMES) -> np.ndarray:
    """`transformed(feats)` as a float vector in the order of `names`."""
    log1p = math.log1p
    return np.array([log1p(feats[k]) if k in LOG_FEATURES else feats[k] for k in names],
                    dtype=np.float64)


@dataclass(slots=True)
class RunningScaler:
    """Per-dimension running mean and variance (Welford): standardizes vectors online."""

    dim: int
    n: int = 0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.dim)
        self.m2 = np.zeros(self.dim)

    def learn(self, x: np.ndarray) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> np.ndarray:
        if self.n < 2:
            return np.ones(self.dim)
        std = np.sqrt(self.m2 / (self.n - 1))
        return np.where(std > 1e-9, std, 1.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


# Fallbacks for a customer with no gap of a kind yet (typical values, not zeros: a missing gap
# is not a zero-second gap).
DEFAULT_STEP_GAP_S: Final = 90.0
DEFAULT_SESSION_GAP_H: Final = 24.0


@dataclass(frozen=True, slots=True)
class Vectorizer:
    """Fixed-order numpy views of a summary for the models, built without per-feature dicts.

    `propensity(summary)`: the propensity inputs (log1p counts and gaps, sentiment, channel and
    touchpoint shares, whether the customer has an account, and the last touchpoint one-hot:
    where a journey stands is most of what decides its next steps).
    `behaviour(summary)`: the segment space, a metric in which distances mean something without
    per-dimension scaling: Hellinger coordinates (sqrt of touchpoint shares) for *what* a customer
    does, and weighted logs of the step and session gaps and session length for *how*.
    """

    touchpoints: tuple[str, ...] = DEFAULT_TOUCHPOINTS
    outcomes: frozenset[str] = frozenset({"purchase", "subscription_cancelled"})
    rhythm_weight: float = 0.4
    propensity_names: tuple[str, ...] = field(init=False)
    behaviour_names: tuple[str, ...] = field(init=False)
    # the journey space of the segment mixture: move cells (src x dst), then JOURNEY_STATS
    states: tuple[str, ...] = field(init=False)
    n_cells: int = field(init=False)
    # the incremental per-customer counts (`counts`, `count_event`): touchpoint counts in the
    # order of the actions, then channel counts in the order of CHANNELS
    n_counts: int = field(init=False)
    _actions: tuple[str, ...] = field(init=False)
    _index: dict[str, int] = field(init=False)
    _cell: dict[tuple[str, str], int] = field(init=False)
    _state: dict[str, int] = field(init=False)
    _count_of: dict[str, int] = field(init=False)
    _channel_of: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        actions = (*(t for t in self.touchpoints if t not in self.outcomes), OTHER)
        set_ = object.__setattr__
        set_(self, "_actions", actions)
        set_(self, "_index", {t: i for i, t in enumerate(actions)})
        set_(self, "propensity_names", (
            "tenure_d", "n_events", "n_sessions", "events_per_session", "mean_step_gap_s",
            "mean_session_gap_h", "n_features_adopted", "n_support", "n_negative",
            "mean_sentiment", "has_account", *CHANNEL_FEATURES,
            *(f"tp_{t}" for t in actions), *(f"last_{t}" for t in actions),
        ))
        states = (*self.touchpoints, OTHER)
        set_(self, "states", states)
        set_(self, "n_cells", (len(states) + 1) * len(states))
        set_(self, "_state", {t: i for i, t in enumerate(states)})
        set_(self, "_cell", {
            (src, dst): i * len(states) + j
            for i, src in enumerate((*states, START)) for j, dst in enumerate(states)
        })
        set_(self, "behaviour_names", (
            *(f"sqrt_tp_{t}" for t in actions), "log_step_gap", "log_session_gap",
            "log_events_per_session",
        ))
        count_of = {t: i for i, t in enumerate(actions)}
        count_of.update(dict.fromkeys(self.outcomes, -1))
        set_(self, "_count_of", count_of)
        set_(self, "_channel_of", {c: len(actions) + j for j, c in enumerate(CHANNELS)})
        set_(self, "n_counts", len(actions) + len(CHANNELS))

    def _shares(self, summary: CustomerFeatures) -> list[float]:
        shares = [0.0] * len(self._actions)
        index = self._index
        other = index[OTHER]
        outcomes = self.outcomes
        n = 0
        for tp, c in summary.touchpoint_counts.items():
            if tp not in outcomes:
                shares[index.get(tp, other)] += c
                n += c
        if n:
            return [v / n for v in shares]
        return shares

    def _gaps(self, s: CustomerFeatures) -> tuple[float, float]:
        step_s = s.step_gap_sum_ms / s.n_step_gaps / 1000 if s.n_step_gaps else DEFAULT_STEP_GAP_S
        n_session_gaps = s.n_sessions - 1
        session_h = (
            s.session_gap_sum_ms / n_session_gaps / HOUR_MS
            if n_session_gaps > 0
            else DEFAULT_SESSION_GAP_H
        )
        return step_s, session_h

    def propensity(self, s: CustomerFeatures) -> np.ndarray:
        return self.vectors(s, behaviour=False)[0]

    def behaviour(self, s: CustomerFeatures) -> np.ndarray:
        shares = self._shares(s)
        return np.array(self._behaviour(s, shares, *self._gaps(s)))

    def vectors(
        self, s: CustomerFeatures, *, behaviour: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(propensity, behaviour or None): both from one pass over the summary."""
        xp, xb = self.rows(s, behaviour=behaviour)
        return np.array(xp), (np.array(xb) if xb is not None else None)

    def rows(
        self, s: CustomerFeatures, *, behaviour: bool = True
    ) -> tuple[list[float], list[float] | None]:
        """`vectors` as plain lists."""
        step_s, session_h = self._gaps(s)
        head = self._head(s, step_s, session_h)
        n = s.n_events
        cc = s.channel_counts
        if n:
            head.extend([cc.get(c, 0) / n for c in CHANNELS])
        else:
            head.extend([0.0] * len(CHANNELS))
        shares = self._shares(s)
        head.extend(shares)
        last_tp = [0.0] * len(self._actions)
        i = self._last_index(s)
        if i >= 0:
            last_tp[i] = 1.0
        head.extend(last_tp)
        xb = self._behaviour(s, shares, step_s, session_h) if behaviour else None
        return head, xb

    def _head(self, s: CustomerFeatures, step_s: float, session_h: float) -> list[float]:
        """The propensity inputs before the channel shares."""
        log1p = math.log1p
        n = s.n_events
        first = s.first_ts_ms if s.first_ts_ms is not None else 0
        last = s.last_ts_ms if s.last_ts_ms is not None else first
        n_sessions = s.n_sessions
        return [
            log1p((last - first) / DAY_MS),
            log1p(n),
            log1p(n_sessions),
            log1p(n / n_sessions if n_sessions else 0.0),
            log1p(step_s),
            log1p(session_h),
            log1p(len(s.adopted)),
            log1p(s.n_support),
            log1p(s.n_negative),
            s.sentiment_sum / s.n_sentiment if s.n_sentiment else 0.0,
            0.0 if s.touchpoint_counts.keys().isdisjoint(ACCOUNT_TOUCHPOINTS) else 1.0,
        ]

    def _last_index(self, s: CustomerFeatures) -> int:
        """The action index of the last touchpoint (-1: none, or an outcome)."""
        if s.last_touchpoint is None or s.last_touchpoint in self.outcomes:
            return -1
        return self._index.get(s.last_touchpoint, self._index[OTHER])

    # -- incremental per-customer counts ---------------------------------------------------
    def counts(self, s: CustomerFeatures) -> tuple[array[float], array[int]]:
        """A customer's counts from its summary: (touchpoint and channel counts in the order
        of `n_counts`, the journey cell of each of `s.transitions` in its order, -1 for moves
        into outcomes). Kept per customer and moved on by `count_event`, they make the model
        vectors of a batch of customers a few matrix operations (`batch`) instead of a pass
        over each customer's dicts. Packed arrays (doubles, 32-bit ints): a list would hold a
        24-byte float object per non-zero count and a 28-byte int per cell past 256 besides its
        8-byte pointers (~0.5 kB per customer); states kept from before hold lists, which
        `count_event` and `batch` take alike."""
        out = [0.0] * self.n_counts
        for tp, c in s.touchpoint_counts.items():
            i = self._count_index(tp)
            if i >= 0:
                out[i] += c
        for ch, c in s.channel_counts.items():
            j = self._channel_of.get(ch)
            if j is not None:
                out[j] += c
        return array("d", out), array("i", [self.cell_of(key) for key in s.transitions])

    def count_event(
        self, s: CustomerFeatures, counts: MutableSequence[float], cells: MutableSequence[int],
        touchpoint: str, channel: str, n_moves_before: int,
    ) -> None:
        """Move `counts` on by the event `s` has just absorbed (O(1)): `n_moves_before` is
        `len(s.transitions)` before it (a new move key is the last)."""
        tp = touchpoint if touchpoint in s.touchpoint_counts else OTHER  # the summary's cap
        i = self._count_of.get(tp)
        if i is None:
            i = self._count_index(tp)
        if i >= 0:
            counts[i] += 1.0
        j = self._channel_of.get(channel)
        if j is not None:
            counts[j] += 1.0
        if len(s.transitions) != n_moves_before:
            cells.append(self.cell_of(next(reversed(s.transitions))))

    def _count_index(self, tp: str) -> int:
        return -1 if tp in self.outcomes else self._index.get(tp, self._index[OTHER])

    def cell_of(self, key: tuple[str, str]) -> int:
        """The journey cell of a (src, dst) move; -1 for a move into an outcome."""
        if key[1] in self.outcomes:
            return -1  # what a customer does, not what came of it (nor conversion drift)
        i = self._cell.get(key)
        if i is None:  # a name outside the vocabulary: counted as OTHER
            src, dst = key
            n_dst = len(self.states)
            other = n_dst - 1
            si = n_dst if src == START else self._state.get(src, other)
            i = si * n_dst + self._state.get(dst, other)
        return i

    def batch(
        self,
        summaries: list[CustomerFeatures],
        counts: Sequence[Sequence[float]],
        cells: Sequence[Sequence[int]],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Model inputs of many customers at once, equal to `rows` and `journey` of each:
        (propensity rows, behaviour rows, then the journeys concatenated: indices, values and
        the start of each customer's part)."""
        heads: list[list[float]] = []
        rhythm: list[list[float]] = []
        last = []
        stats_at = list(range(self.n_cells, self.n_cells + len(JOURNEY_STATS)))
        idx_parts: list[Iterable[int]] = []
        val_parts: list[Iterable[float]] = []
        for s, cs in zip(summaries, cells, strict=True):
            step_s, session_h = self._gaps(s)
            heads.append(self._head(s, step_s, session_h))
            rhythm.append(self._rhythm(s, step_s, session_h))
            last.append(self._last_index(s))
            idx_parts.append(cs)
            idx_parts.append(stats_at)
            val_parts.append(s.transitions.values())
            val_parts.append(_journey_stats(s))
        n_rows = len(summaries)
        n_actions = len(self._actions)
        raw = np.array(counts)
        tp = raw[:, :n_actions]
        n_tp = tp.sum(axis=1, keepdims=True)
        shares = np.divide(tp, n_tp, out=np.zeros_like(tp), where=n_tp > 0)
        n = np.array([float(s.n_events) for s in summaries])[:, None]
        ch = raw[:, n_actions:]
        channels = np.divide(ch, n, out=np.zeros_like(ch), where=n > 0)
        last_tp = np.zeros((n_rows, n_actions))
        has_last = np.array(last) >= 0
        last_tp[np.flatnonzero(has_last), np.array(last)[has_last]] = 1.0
        xp = np.hstack([np.array(heads), channels, shares, last_tp])
        xb = np.hstack([np.sqrt(shares), np.array(rhythm)])
        chain = itertools.chain.from_iterable
        idx = np.fromiter(chain(idx_parts), dtype=np.int64)
        val = np.fromiter(chain(val_parts), dtype=np.float64, count=len(idx))
        keep = idx >= 0
        n_stats = len(stats_at)
        # the length of each customer's part (never 0: the stats are kept)
        lengths = [len(cs) - cs.count(-1) + n_stats for cs in cells]
        starts = np.fromiter(itertools.accumulate(lengths[:-1], initial=0), dtype=np.int64,
                             count=n_rows)
        return xp, xb, idx[keep], val[keep], starts

    def _behaviour(
        self, s: CustomerFeatures, shares: list[float], step_s: float, session_h: float
    ) -> list[float]:
        sqrt = math.sqrt
        return [*(sqrt(v) for v in shares), *self._rhythm(s, step_s, session_h)]

    def _rhythm(self, s: CustomerFeatures, step_s: float, session_h: float) -> list[float]:
        """The *how* of the behaviour space: weighted logs of gaps and session length."""
        w = self.rhythm_weight
        log = math.log
        return [
            w * log(max(step_s, 1.0)),
            w * log(max(session_h, 0.5)),
            w * log(s.n_events / s.n_sessions if s.n_sessions else 1.0),
        ]

    def journey(self, s: CustomerFeatures) -> tuple[np.ndarray, np.ndarray]:
        """The customer's sufficient statistics for the segment mixture, as a sparse vector.

        (indices, values): move counts in cells `src * len(states) + dst` (unknown names are
        OTHER; moves into outcomes are left out: behaviour, not what came of it), then at
        `n_cells` + 0..8 the JOURNEY_STATS (gap and revenue count, sum of logs, sum of squared
        logs). Every segment's log-likelihood is linear in it.
        """
        idx: list[int] = []
        val: list[float] = []
        for key, c in s.transitions.items():
            i = self.cell_of(key)
            if i >= 0:
                idx.append(i)
                val.append(float(c))
        base = self.n_cells
        idx.extend(range(base, base + len(JOURNEY_STATS)))
        val.extend(_journey_stats(s))
        return np.array(idx, dtype=np.int64), np.array(val)


def _journey_stats(s: CustomerFeatures) -> tuple[float, ...]:
    """The values of JOURNEY_STATS for a summary."""
    return (
        float(s.n_step_gaps), s.step_log_sum, s.step_log_sq,
        float(max(s.n_sessions - 1, 0)), s.session_log_sum, s.session_log_sq,
        float(s.n_revenue), s.revenue_log_sum, s.revenue_log_sq,
    )

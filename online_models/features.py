"""Per-customer behaviour features: a small running summary and a pure feature extractor.

`CustomerFeatures` is plain data (ints, floats, a dict, a small set) that the journey processor
can keep per customer; `features(summary, now_ms)` turns it into named floats in plain units
(hours, counts, shares, currency). The models see `model_vector(...)`: the same values with
heavy-tailed counts log-transformed, in the fixed order of `FEATURE_NAMES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from processors.events import CHANNELS, TouchpointEvent

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
MAX_ADOPTED: Final = 64  # distinct app features remembered per customer (bounded state)
ADOPTION_TOUCHPOINTS: Final = frozenset({"feature_use", "onboarding_complete"})

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
# Outcome features say what happened, not how the customer behaves: kept out of behaviour models.
OUTCOME_FEATURES: Final = frozenset({"revenue", "n_conversions"})
BEHAVIOUR_FEATURES: Final[tuple[str, ...]] = tuple(
    f for f in FEATURE_NAMES if f not in OUTCOME_FEATURES and f != "recency_h"
)


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
    adopted: set[str] = field(default_factory=set)

    def update(
        self,
        event: TouchpointEvent,
        *,
        conversion: frozenset[str] = frozenset({"purchase"}),
        churn: frozenset[str] = frozenset({"subscription_cancelled"}),
    ) -> None:
        """Fold one event in. Late events count, but never move `last_ts_ms` backwards."""
        ts = event.ts_ms
        if self.last_ts_ms is None or self.first_ts_ms is None:
            self.first_ts_ms = ts
            self.n_sessions = 1
        else:
            gap = max(0, ts - self.last_ts_ms)
            new_session = gap > self.session_gap_ms or (
                event.session_id is not None
                and self.last_session_id is not None
                and event.session_id != self.last_session_id
            )
            if new_session:
                self.n_sessions += 1
                self.session_gap_sum_ms += gap
            else:
                self.step_gap_sum_ms += gap
                self.n_step_gaps += 1
            self.first_ts_ms = min(self.first_ts_ms, ts)
        if self.last_ts_ms is None or ts >= self.last_ts_ms:
            self.last_ts_ms = ts
            self.last_touchpoint = event.touchpoint
            self.last_session_id = event.session_id
        self.n_events += 1
        self.channel_counts[event.channel] = self.channel_counts.get(event.channel, 0) + 1
        if event.revenue is not None:
            self.revenue += event.revenue
        if event.touchpoint in conversion:
            self.n_conversions += 1
        if event.touchpoint in churn:
            self.n_churns += 1
        if event.channel == "support":
            self.n_support += 1
        if event.touchpoint in ADOPTION_TOUCHPOINTS and len(self.adopted) < MAX_ADOPTED:
            name = event.touchpoint
            if event.properties and isinstance(event.properties.get("feature"), str):
                name = f"{name}:{event.properties['feature']}"
            self.adopted.add(name)

    def add_sentiment(self, score: float) -> None:
        """Record the sentiment of one of the customer's texts (-1 negative .. +1 positive)."""
        self.sentiment_sum += score
        self.n_sentiment += 1


def features(summary: CustomerFeatures, now_ms: int) -> dict[str, float]:
    """Named features in plain units as of `now_ms` (event time, never the wall clock)."""
    last = summary.last_ts_ms if summary.last_ts_ms is not None else now_ms
    first = summary.first_ts_ms if summary.first_ts_ms is not None else now_ms
    n = summary.n_events
    n_session_gaps = max(summary.n_sessions - 1, 0)
    out: dict[str, float] = {
        "recency_h": max(0, now_ms - last) / HOUR_MS,
        "tenure_d": max(0, last - first) / DAY_MS,
        "n_events": float(n),
        "n_sessions": float(summary.n_sessions),
        "events_per_session": n / summary.n_sessions if summary.n_sessions else 0.0,
        "mean_step_gap_s": (
            summary.step_gap_sum_ms / summary.n_step_gaps / 1000 if summary.n_step_gaps else 0.0
        ),
        "mean_session_gap_h": (
            summary.session_gap_sum_ms / n_session_gaps / HOUR_MS if n_session_gaps else 0.0
        ),
        "revenue": summary.revenue,
        "n_conversions": float(summary.n_conversions),
        "n_features_adopted": float(len(summary.adopted)),
        "n_support": float(summary.n_support),
        "mean_sentiment": (
            summary.sentiment_sum / summary.n_sentiment if summary.n_sentiment else 0.0
        ),
    }
    for channel, name in zip(CHANNELS, CHANNEL_FEATURES, strict=True):
        out[name] = summary.channel_counts.get(channel, 0) / n if n else 0.0
    return out


def transformed(feats: dict[str, float]) -> dict[str, float]:
    """The model view of plain features: log1p of the heavy-tailed ones."""
    return {k: math.log1p(v) if k in LOG_FEATURES else v for k, v in feats.items()}


def model_vector(feats: dict[str, float], names: tuple[str, ...] = FEATURE_NAMES) -> np.ndarray:
    """`transformed(feats)` as a float vector in the order of `names`."""
    return np.fromiter(
        (math.log1p(feats[k]) if k in LOG_FEATURES else feats[k] for k in names),
        dtype=np.float64,
        count=len(names),
    )


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

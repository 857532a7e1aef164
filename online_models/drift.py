"""Drift detection on model errors, rates and shares, and the alerts it raises.

One detector (River ADWIN by default, PageHinkley as an option) per (metric, segment). A
detection becomes an :class:`Alert` only when the change is material (`min_abs_change` and
`min_rel_change` between the means before and after the cut), the key has seen `warmup`
observations, and no alert for the same key was raised within `cooldown_ms` of event time: one
drift is one alert. The evidence says what changed, where, since when (the event time at which
the detector's new window starts) and by how much.

Alert JSON (``Alert.to_dict()``, the `alerts` topic and table)::

    {
      "alert_id": "9f2c...",          # 16 hex chars, sha256 of kind|metric|segment|ts_ms
      "ts_ms": 1772323200000,         # event time of the detection, epoch ms
      "kind": "drift",
      "severity": "warning" | "critical",   # critical when the relative change >= 50 %
      "segment": "s3",                # or "all"
      "metric": "conversion_rate",    # e.g. propensity_error:convert, segment_share,
                                      # transition:pricing_page->purchase, sentiment
      "message": "conversion_rate in segment s3 fell from 0.061 to 0.024 (-61%) since ...",
      "evidence": {"before_mean": 0.061, "after_mean": 0.024, "abs_change": -0.037,
                   "rel_change": -0.61, "since_ts_ms": ..., "n_before": 10432,
                   "n_after": 1216, "detector": "adwin"}
    }
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from river import drift

from online_models.checkpoint import Snapshotting

SINCE_EVERY = 16  # observation timestamps are kept one in 16 (bounded "since when" lookup)
SINCE_KEPT = 4096


@dataclass(frozen=True, slots=True)
class Alert:
    """One drift, one alert: see the module docstring for the JSON schema."""

    alert_id: str
    ts_ms: int
    kind: str
    severity: Literal["warning", "critical"]
    segment: str
    metric: str
    message: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def alert_id(kind: str, metric: str, segment: str, ts_ms: int) -> str:
    """Deterministic: the same detection in a replay gets the same id (idempotent sinks)."""
    raw = f"{kind}|{metric}|{segment}|{ts_ms}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(slots=True)
class _Track:
    detector: Any
    n: int = 0
    total: float = 0.0
    last_alert_ms: int | None = None
    # (observations before, event time, running sum before): one in SINCE_EVERY, bounded
    marks: deque[tuple[int, int, float]] = field(default_factory=lambda: deque(maxlen=SINCE_KEPT))


def best_split(
    marks: deque[tuple[int, int, float]], start: int, n: int, total: float
) -> tuple[int, int, float, float] | None:
    """The change point in observations [start, n) that best separates the means.

    Among the kept marks, the split maximizing |mean_before - mean_after| * sqrt(n1 n2 / n) (a
    two-sample z statistic without the variance). Returns (index, ts_ms, before, after).
    """
    inside = [m for m in marks if m[0] >= start]
    if len(inside) < 3:
        return None
    i0, _, s0 = inside[0]
    best = None
    best_stat = -1.0
    for i, ts, s in inside[1:]:
        n1, n2 = i - i0, n - i
        if n1 <= 0 or n2 <= 0:
            continue
        before, after = (s - s0) / n1, (total - s) / n2
        stat = abs(before - after) * (n1 * n2 / (n1 + n2)) ** 0.5
        if stat > best_stat:
            best_stat, best = stat, (i, ts, before, after)
    return best


@dataclass(slots=True)
class DriftMonitor(Snapshotting):
    """Drift detectors keyed by (metric, segment), turning detections into alerts."""

    detector: Literal["adwin", "page_hinkley"] = "adwin"
    delta: float = 1e-5
    warmup: int = 1000
    cooldown_ms: int = 24 * 3_600_000
    min_abs_change: float = 0.01
    min_rel_change: float = 0.2
    grace_period: int = 100
    tracks: dict[tuple[str, str], _Track] = field(default_factory=dict)
    n_detections: int = 0
    n_suppressed: int = 0

    def _new_detector(self) -> Any:
        if self.detector == "adwin":
            return drift.ADWIN(delta=self.delta, grace_period=self.grace_period)
        return drift.PageHinkley(min_instances=self.warmup, delta=0.005, threshold=50.0)

    def reset(self, metric: str | None = None, segment: str | None = None) -> None:
        """Forget the history of matching keys (after segments were re-clustered, say)."""
        for key in [k for k in self.tracks if metric in (None, k[0]) and segment in (None, k[1])]:
            del self.tracks[key]

    def update(self, metric: str, segment: str, value: float, ts_ms: int) -> Alert | None:
        """Feed one observation; an alert when a material drift is detected."""
        key = (metric, segment)
        track = self.tracks.get(key)
        if track is None:
            track = self.tracks[key] = _Track(self._new_detector())
        det = track.detector
        if track.n % SINCE_EVERY == 0:
            track.marks.append((track.n, ts_ms, track.total))
        track.n += 1
        track.total += value
        width_before = int(getattr(det, "width", track.n - 1))
        det.update(value)
        if not det.drift_detected:
            return None
        self.n_detections += 1
        # The detector says *that* the mean moved; where and by how much comes from the best
        # split of its window (ADWIN cuts conservatively, at bucket boundaries).
        split = best_split(track.marks, track.n - 1 - width_before, track.n, track.total)
        if split is None:
            self.n_suppressed += 1
            return None
        cut, since_ms, before, after = split
        n_before, n_after = cut - (track.n - 1 - width_before), track.n - cut
        if track.n < self.warmup or (
            track.last_alert_ms is not None and ts_ms - track.last_alert_ms < self.cooldown_ms
        ):
            self.n_suppressed += 1
            return None
        change = after - before
        rel = change / abs(before) if before else float("inf")
        if abs(change) < self.min_abs_change or abs(rel) < self.min_rel_change:
            self.n_suppressed += 1
            return None
        track.last_alert_ms = ts_ms
        direction = "rose" if change > 0 else "fell"
        when = datetime.fromtimestamp(since_ms / 1000, tz=UTC).isoformat(timespec="seconds")
        where = f"segment {segment}" if segment != "all" else "all customers"
        return Alert(
            alert_id=alert_id("drift", metric, segment, ts_ms),
            ts_ms=ts_ms,
            kind="drift",
            severity="critical" if abs(rel) >= 0.5 else "warning",
            segment=segment,
            metric=metric,
            message=(
                f"{metric} in {where} {direction} from {before:.4g} to {after:.4g} "
                f"({rel:+.0%}) since {when}"
            ),
            evidence={
                "before_mean": round(before, 6),
                "after_mean": round(after, 6),
                "abs_change": round(change, 6),
                "rel_change": round(rel, 4) if rel != float("inf") else None,
                "since_ts_ms": since_ms,
                "n_before": n_before,
                "n_after": n_after,
                "detector": self.detector,
            },
        )

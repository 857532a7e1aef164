"""The Bayes ceiling of segment recovery: what knowing the simulator's true parameters gives.

Each customer is assigned the true segment of maximum posterior, P(segment) x P(journey |
segment), where the likelihood is the simulator's own generative process (`simulator/model.py`)
evaluated on the events the customer produced:

* moves: the segment's Markov row (its drifted row after the injected drift), with the churn
  hazard after negative texts and the simulator's rewrites (a drawn `login` before the account
  exists is emitted as `signup` and the reverse after; an account event before the account gets a
  `signup` inserted a step gap before it: both readings are summed);
* gaps: the same-session chance times the clipped log-normal step gap, or its complement times
  the floored log-normal session gap;
* the end of the journey: an outcome ends it; otherwise the journey stopped (the `null` move)
  or the next gap ran past the end of the simulated range (censoring), or the event cap;
* order values (log-normal) and the sentiment of support texts (the texts say it: the held-out
  accuracy of the sentiment model is 1.0).

Not used: identifiers (how many cookies and devices, whether a support event carries the email),
which also differ by segment a little; so this is the ceiling of assignment from behaviour.
The adjusted Rand index of these assignments is what no model of the journeys can beat beyond
noise, overall and by how many events a customer has.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from simulator.catalog import (
    ABSORBING,
    ACCOUNT_TOUCHPOINTS,
    CHURN,
    CONVERSION,
    NULL,
    START,
    TEXT_TOUCHPOINTS,
    segment_named,
)
from simulator.model import (
    CHURN_HAZARD_MAX,
    CHURN_HAZARD_PER_NEGATIVE,
    HOUR_MS,
    MAX_STEP_GAP_MS,
    MIN_MS,
    SimConfig,
)
from simulator.texts import SENTIMENTS
from simulator.truth import Truth

STEP_SIGMA = 0.8  # simulator: step gaps exp(mu + 0.8 z)
SESSION_SIGMA = 1.0  # simulator: session gaps exp(mu + z)
REVENUE_SIGMA = 0.5
MIN_STEP_MS = 1000
MIN_SESSION_MS = 35 * MIN_MS
DEFAULT_MAX_EVENTS = SimConfig(customers=0).max_events_per_customer
# Buckets of customers by their number of events: (label, lowest, highest).
BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("1", 1, 1), ("2", 2, 2), ("3-4", 3, 4), (">=5", 5, 1 << 62),
)
_LOG0 = -math.inf


class Step(NamedTuple):
    """One event as the likelihood needs it."""

    touchpoint: str
    ts_ms: int
    revenue: float | None = None
    sentiment: str | None = None  # of a text: negative | neutral | positive


@dataclass(frozen=True, slots=True)
class SegmentParams:
    """One true segment's generative parameters (log probabilities where it helps)."""

    name: str
    log_prior: float
    log_rows: dict[str, dict[str, float]]  # src -> dst -> log p
    rows: dict[str, dict[str, float]]  # src -> dst -> p
    drifted_rows: dict[str, dict[str, float]] | None  # from `drift_at_ms` on
    drift_at_ms: int | None
    continue_p: float
    step_mu: float
    session_mu: float
    revenue_mu: float
    log_sentiment: dict[str, float]


def _logs(rows: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {src: {dst: math.log(p) for dst, p in row.items() if p > 0} for src, row in
            rows.items()}


def params_of(truth: Truth) -> list[SegmentParams]:
    """The true segments of a simulation: shares, matrices and the drift from its truth, the
    gap parameters from the simulator's catalog (the truth file does not carry them)."""
    total = sum(s.share for s in truth.segments.values())
    out = []
    for name, seg in truth.segments.items():
        cat = segment_named(name)
        drifted = None
        drift_at = None
        if truth.drift is not None and truth.drift.segment == name:
            drifted = {src: dict(row) for src, row in seg.matrix.items()}
            for src, changes in truth.drift.changes.items():
                for dst, (_, after) in changes.items():
                    drifted[src][dst] = after
            drift_at = truth.drift.at_ms
        out.append(SegmentParams(
            name=name,
            log_prior=math.log(seg.share / total),
            log_rows=_logs(seg.matrix),
            rows={src: dict(row) for src, row in seg.matrix.items()},
            drifted_rows=drifted,
            drift_at_ms=drift_at,
            continue_p=cat.session_continue_p,
            step_mu=math.log(cat.step_gap_median_s * 1000),
            session_mu=math.log(cat.session_gap_median_h * HOUR_MS),
            revenue_mu=math.log(seg.revenue_median),
            log_sentiment={s: math.log(p) if p > 0 else _LOG0
                           for s, p in zip(SENTIMENTS, seg.sentiment_p, strict=True)},
        ))
    return out


def _norm_logpdf(x: float, mu: float, sigma: float) -> float:
    z = (x - mu) / sigma
    return -0.5 * z * z - math.log(sigma * math.sqrt(2 * math.pi))


def _norm_logcdf(z: float) -> float:
    p = 0.5 * math.erfc(-z / math.sqrt(2))
    return math.log(p) if p > 0 else _LOG0


def _norm_logsf(z: float) -> float:
    return _norm_logcdf(-z)


def _log_step_gap(gap_ms: int, mu: float) -> float:
    """log P(a step gap of `gap_ms`): min(25 min, max(1 s, int(exp(mu + 0.8 z))))."""
    if gap_ms < MIN_STEP_MS or gap_ms > MAX_STEP_GAP_MS:
        return _LOG0
    if gap_ms == MIN_STEP_MS:
        return _norm_logcdf((math.log(MIN_STEP_MS + 1) - mu) / STEP_SIGMA)
    if gap_ms == MAX_STEP_GAP_MS:
        return _norm_logsf((math.log(MAX_STEP_GAP_MS) - mu) / STEP_SIGMA)
    return _norm_logpdf(math.log(gap_ms + 0.5), mu, STEP_SIGMA) - math.log(gap_ms + 0.5)


def _log_session_gap(gap_ms: int, mu: float) -> float:
    """log P(a session gap of `gap_ms`): max(35 min, int(exp(mu + z)))."""
    if gap_ms < MIN_SESSION_MS:
        return _LOG0
    if gap_ms == MIN_SESSION_MS:
        return _norm_logcdf((math.log(MIN_SESSION_MS + 1) - mu) / SESSION_SIGMA)
    return _norm_logpdf(math.log(gap_ms + 0.5), mu, SESSION_SIGMA) - math.log(gap_ms + 0.5)


def _log_gap(gap_ms: int, p: SegmentParams) -> float:
    """log P(the gap before a drawn move): same session or a new one."""
    if gap_ms <= MAX_STEP_GAP_MS:
        return math.log(p.continue_p) + _log_step_gap(gap_ms, p.step_mu)
    return math.log1p(-p.continue_p) + _log_session_gap(gap_ms, p.session_mu)


def _p_gap_at_least(r_ms: int, p: SegmentParams) -> float:
    """P(the next gap is >= r_ms): the journey ran past the end of the range."""
    if r_ms <= MIN_STEP_MS:
        step = 1.0
    elif r_ms > MAX_STEP_GAP_MS:
        step = 0.0
    else:
        step = 0.5 * math.erfc((math.log(r_ms) - p.step_mu) / STEP_SIGMA / math.sqrt(2))
    if r_ms <= MIN_SESSION_MS:
        session = 1.0
    else:
        session = 0.5 * math.erfc((math.log(r_ms) - p.session_mu) / SESSION_SIGMA / math.sqrt(2))
    return p.continue_p * step + (1 - p.continue_p) * session


def _rows_at(p: SegmentParams, t_ms: int) -> dict[str, dict[str, float]]:
    if p.drifted_rows is not None and p.drift_at_ms is not None and t_ms >= p.drift_at_ms:
        return p.drifted_rows
    return p.rows


def _p_draw(row: Mapping[str, float], dst: str, hazard: float) -> float:
    """P(the next drawn move is `dst`) with the churn hazard of the customer's negative texts."""
    q = (1 - hazard) * row.get(dst, 0.0)
    return q + hazard if dst == CHURN else q


def _log(x: float) -> float:
    return math.log(x) if x > 0 else _LOG0


def _logaddexp(a: float, b: float) -> float:
    if a == _LOG0:
        return b
    if b == _LOG0:
        return a
    top = max(a, b)
    return top + math.log(math.exp(a - top) + math.exp(b - top))


def log_likelihood(
    journey: Sequence[Step], p: SegmentParams, *, end_ms: int,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> float:
    """log P(journey | segment) under the simulator's process (see the module docstring).

    The first event's time is uniform over the range for every segment, so it is left out."""
    state = START
    signed = False
    n_negative = 0
    t_last = journey[0].ts_ms if journey else 0
    total = 0.0
    i = 0
    n = len(journey)
    while i < n:
        ev = journey[i]
        hazard = (min(CHURN_HAZARD_MAX, CHURN_HAZARD_PER_NEGATIVE * n_negative)
                  if n_negative and signed and state != START else 0.0)
        row = _rows_at(p, t_last)[state]
        gap = 0.0 if state == START else _log_gap(ev.ts_ms - t_last, p)
        tp = ev.touchpoint
        if tp == "signup" and not signed:
            direct = _log(_p_draw(row, "signup", hazard) + _p_draw(row, "login", hazard)) + gap
            nxt = journey[i + 1] if i + 1 < n else None
            if nxt is not None and nxt.touchpoint in ACCOUNT_TOUCHPOINTS:
                # (a) signup drawn, then the account event from `signup`; (b) the account event
                # drawn here, with a signup inserted a step gap before it.
                hz = (min(CHURN_HAZARD_MAX, CHURN_HAZARD_PER_NEGATIVE * n_negative)
                      if n_negative else 0.0)
                second = (_log(_p_draw(_rows_at(p, ev.ts_ms)["signup"], nxt.touchpoint, hz))
                          + _log_gap(nxt.ts_ms - ev.ts_ms, p))
                inserted = (_log(_p_draw(row, nxt.touchpoint, hazard)) + gap
                            + _log_step_gap(nxt.ts_ms - ev.ts_ms, p.step_mu))
                total += _logaddexp(direct + second, inserted)
                total += _values(nxt, p)
                signed = True
                state = nxt.touchpoint
                t_last = nxt.ts_ms
                i += 2
                if state in ABSORBING:
                    return total
                continue
            total += direct
            signed = True
        elif tp == "login" and signed:
            total += _log(_p_draw(row, "login", hazard) + _p_draw(row, "signup", hazard)) + gap
        elif tp == "signup" or tp == "login" or (tp in ACCOUNT_TOUCHPOINTS and not signed):
            return _LOG0  # the simulator never emits these
        else:
            total += _log(_p_draw(row, tp, hazard)) + gap
        total += _values(ev, p)
        if ev.sentiment == "negative":
            n_negative += 1
        state = tp
        t_last = ev.ts_ms
        i += 1
        if state in ABSORBING:
            return total
    if n >= max_events:
        return total
    # The journey ended without an outcome: the null move, or a gap past the end of the range.
    hazard = (min(CHURN_HAZARD_MAX, CHURN_HAZARD_PER_NEGATIVE * n_negative)
              if n_negative and signed else 0.0)
    p_null = _p_draw(_rows_at(p, t_last)[state], NULL, hazard)
    return total + _log(p_null + (1 - p_null) * _p_gap_at_least(end_ms - t_last, p))


def _values(ev: Step, p: SegmentParams) -> float:
    """log P(the event's order value and text sentiment | segment)."""
    out = 0.0
    if ev.touchpoint == CONVERSION and ev.revenue:
        out += _norm_logpdf(math.log(ev.revenue), p.revenue_mu, REVENUE_SIGMA)
    if ev.touchpoint in TEXT_TOUCHPOINTS and ev.sentiment is not None:
        out += p.log_sentiment.get(ev.sentiment, _LOG0)
    return out


def posterior(
    journey: Sequence[Step], params: Sequence[SegmentParams], *, end_ms: int,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> dict[str, float]:
    """P(segment | journey) for every true segment."""
    joint = [p.log_prior + log_likelihood(journey, p, end_ms=end_ms, max_events=max_events)
             for p in params]
    top = max(joint)
    if top == _LOG0:  # impossible under every segment: the prior
        joint = [p.log_prior for p in params]
        top = max(joint)
    w = [math.exp(j - top) for j in joint]
    s = sum(w)
    return {p.name: x / s for p, x in zip(params, w, strict=True)}


def bayes_assign(
    journeys: Mapping[str, Sequence[Step]], params: Sequence[SegmentParams], *, end_ms: int,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> dict[str, str]:
    """Each customer's maximum-posterior true segment (ties: the first in `params`)."""
    out = {}
    for cid, journey in journeys.items():
        post = posterior(journey, params, end_ms=end_ms, max_events=max_events)
        out[cid] = max(post, key=post.__getitem__)
    return out


def truth_journeys(truth: Truth) -> dict[str, list[Step]]:
    """The true journeys (each event once, in event time)."""
    return {c.customer_id: [Step(e.touchpoint, e.ts_ms, e.revenue, e.sentiment)
                            for e in c.events] for c in truth.customers}


def bucket_of(n_events: int) -> str:
    for label, lo, hi in BUCKETS:
        if lo <= n_events <= hi:
            return label
    return BUCKETS[0][0]


def ari_by_bucket(
    truth: Mapping[str, str], pred: Mapping[str, str], n_events: Mapping[str, int],
    customers: Iterable[str],
) -> dict[str, Any]:
    """ARI and accuracy-free counts of `pred` vs `truth`, on all `customers` and per bucket."""
    from sklearn.metrics import adjusted_rand_score

    cids = sorted(customers)
    out: dict[str, Any] = {
        "all": {"n": len(cids), "ari": float(adjusted_rand_score(
            [truth[c] for c in cids], [pred[c] for c in cids])) if cids else None}}
    groups: dict[str, list[str]] = {label: [] for label, _, _ in BUCKETS}
    for c in cids:
        groups[bucket_of(n_events[c])].append(c)
    for label, members in groups.items():
        out[label] = {"n": len(members), "ari": float(adjusted_rand_score(
            [truth[c] for c in members], [pred[c] for c in members])) if members else None}
    return out


def shares_by_bucket(truth: Mapping[str, str], n_events: Mapping[str, int]) -> dict[str, Any]:
    """How the true segments are spread over the buckets (who the short histories are)."""
    out: dict[str, Any] = {}
    for label, lo, hi in BUCKETS:
        members = Counter(s for c, s in truth.items() if lo <= n_events[c] <= hi)
        total = sum(members.values())
        out[label] = {s: round(k / total, 3) for s, k in sorted(members.items())} if total else {}
    return out

"""`ModelSuite`: every online model behind one per-event call, for the journey agent and replay.

    suite = ModelSuite(ModelConfig())
    state = suite.new_customer()          # keep it per customer (a Faust table value)
    scores = suite.update(resolved_event, state)   # mutates `state`: reassign it in the table

Per event: the text's sentiment is predicted and the customer's summary absorbs the event. The
segment, both propensities (with their top features) and the lookalike score are *refreshed* on
a customer's first event, on each new session, on an outcome, and otherwise at most once per
`refresh_s` of event time (in between, the cached scores are returned: they barely move within a
session, and this keeps the models at a small share of pipeline time); the next-best action is
recomputed for every event from a per-(segment, touchpoint) cache. All of it reads the models as
they are *before* this event teaches them anything (test-then-train). Then the models learn:
a customer's session closes when the next session starts or when event time passes its last
event + `session_gap_s`; the closed session is the moment of a propensity example (labelled when
its horizon passes) and of a segment update. Drift detectors see each event's conversion and the
released labels. Alerts come back on the scores and are kept (bounded) for `alerts_since`.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from online_models.checkpoint import Snapshotting
from online_models.drift import Alert, DriftMonitor
from online_models.features import (
    DEFAULT_TOUCHPOINTS,
    CustomerFeatures,
    Vectorizer,
    summary_vector,
)
from online_models.frozen import maker
from online_models.lookalike import LookalikeModel
from online_models.nba import Matrix, absorption_probabilities, next_best_action, odds
from online_models.propensity import (
    Labelled,
    PropensityModel,
    VectorPack,
    top_many,
    top_of,
)
from online_models.segments import UNASSIGNED, SegmentModel, SegmentProfile
from online_models.sentiment import SentimentAggregates, SentimentModel, SentimentPrediction
from online_models.slots import slot_values, tuple_state
from processors.config import OutcomesConfig
from processors.events import ResolvedEvent

DAY_S = 86_400


class ModelConfig(BaseModel):
    """Settings of the online models: plain values, filled by streams.settings or tests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcomes: OutcomesConfig = OutcomesConfig()
    seed: int = 0
    session_gap_s: Annotated[int, Field(gt=0)] = 1800
    convert_horizon_s: Annotated[int, Field(gt=0)] = 30 * DAY_S
    churn_horizon_s: Annotated[int, Field(gt=0)] = 30 * DAY_S
    snapshot_every_s: Annotated[int, Field(ge=0)] = 0
    # Scores are recomputed on a first event, a session end, an outcome, and within a long
    # session after this long (0: on every event).
    refresh_s: Annotated[int, Field(ge=0)] = 3600
    # Touchpoints the models know by name (others count as "other").
    touchpoints: tuple[str, ...] = DEFAULT_TOUCHPOINTS
    # Segments learn from customers with at least this many events (fewer say too little).
    segment_min_events: Annotated[int, Field(ge=1)] = 5
    # Shorter histories are assigned with the segment shares of customers with as many events
    # (learned from a reservoir of them), not the shares among the long ones.
    segment_short_weights: bool = True
    max_pending: Annotated[int, Field(gt=0)] = 200_000
    min_segment_labels: Annotated[int, Field(gt=0)] = 2_000
    k_min: Annotated[int, Field(ge=2)] = 3
    k_max: Annotated[int, Field(ge=2, le=20)] = 10
    segment_reservoir: Annotated[int, Field(ge=100)] = 4_000
    segment_max_eval_every: Annotated[int, Field(ge=1_000)] = 100_000
    # A refit that moves more than this share of a segment's customers resets its drift history.
    segment_max_moved: Annotated[float, Field(ge=0, le=1)] = 0.1
    lookalike_top: Annotated[int, Field(ge=10)] = 500
    sentiment_max_vocab: Annotated[int, Field(ge=100)] = 20_000
    drift_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    # log-likelihood ratio at which a 0/1 rate (conversion, transitions) has changed
    drift_glr_threshold: Annotated[float, Field(gt=0)] = 18.0
    drift_warmup: Annotated[int, Field(ge=0)] = 2_000
    drift_cooldown_s: Annotated[int, Field(ge=0)] = 7 * DAY_S
    drift_min_abs_change: Annotated[float, Field(ge=0)] = 0.01
    drift_min_rel_change: Annotated[float, Field(ge=0)] = 0.2
    # (src, dst) touchpoint pairs whose transition probability is watched per segment.
    key_transitions: list[tuple[str, str]] = []
    # Segment shares move while customers mature and centroids settle: opt in once stable.
    watch_segment_shares: bool = False
    # The propensity models' prequential error (squared error of the score given before the
    # label), per model version: only scores of a model fitted on at least
    # `propensity_error_min_fit` labels are watched (the first fits, on few labels, move the
    # error), and the detector restarts when a refit replaces the model (warm-up again; the
    # cooldown holds), so the errors of two models are never compared. 5,000: the doubling
    # schedule's fit on 6,400 labels is the first watched (a full 20,000-label window comes
    # too late for any label of it to be known within `journeymap evaluate`'s 90 days).
    watch_propensity_error: bool = True
    propensity_error_min_fit: Annotated[int, Field(ge=0)] = 5_000
    max_alerts_kept: Annotated[int, Field(ge=1)] = 1_000
    # Scores taken when event time closed a session, kept until the customer's next event
    # (bounded: the oldest are dropped, and such a customer is scored afresh when back).
    max_closed_kept: Annotated[int, Field(ge=0)] = 100_000
    # Sessions event time has closed are scored and learned in batches of this many (one
    # matrix product per model instead of one small one per session), at most `close_delay_s`
    # of event time after they became due. 1: one at a time.
    close_batch: Annotated[int, Field(ge=1)] = 64
    close_delay_s: Annotated[int, Field(ge=0)] = 3600


@tuple_state
@dataclass(slots=True)
class CustomerModelState:
    """What the models keep per customer: the feature summary and the current segment."""

    features: CustomerFeatures
    segment: str = UNASSIGNED
    # the scores of the last refresh (see ModelSuite.update)
    scored_ms: int | None = None
    p_convert: float = 0.5
    p_churn: float = 0.5
    top_features: tuple[tuple[str, float], ...] = ()
    lookalike: float | None = None
    # the summary's counts as the model vectors need them, moved on per event in O(1)
    # (`Vectorizer.counts`); None until the first event (and in states pickled before them)
    counts: array[float] | list[float] | None = None
    cells: array[int] | list[int] | None = None
    # the segment under the mixture's own weights (differs from `segment` only for short
    # histories, see SegmentModel): what the drift detectors count the customer's events under.
    # The short-history shares move as the population matures; counted under them, segments'
    # conversion rates moved with them (false alarms on a stationary run, bench/RESULTS.md).
    watch_segment: str = UNASSIGNED


@tuple_state
@dataclass(frozen=True, slots=True)
class Scores:
    """A customer's live scores after one event (the `scores` topic and `customer_scores`)."""

    customer_id: str
    ts_ms: int
    segment: str
    p_convert: float
    p_churn: float
    top_features: tuple[tuple[str, float], ...]
    next_best_action: str | None
    expected_lift: float
    lookalike: float | None
    sentiment: str | None
    sentiment_score: float | None
    alerts: tuple[Alert, ...] = ()


@tuple_state
@dataclass(frozen=True, slots=True)
class _Closed:
    """The scores a session end gave a customer, for the customer's next event.

    The suite keeps them, not only the state object it saw: the caller's state may be another
    object (a restored checkpoint, a table value), and must end up with the same scores.
    """

    n_events: int
    segment: str
    p_convert: float
    p_churn: float
    top_features: tuple[tuple[str, float], ...]
    lookalike: float | None
    watch_segment: str | None = None  # None: as `segment`


_new_scores = maker(Scores)
_new_closed = maker(_Closed)


@dataclass(slots=True)
class _Nba:
    absorption: dict[str, float]
    candidates: tuple[str, ...]


@dataclass(slots=True)
class ModelSuite(Snapshotting):
    """Segments, propensities, lookalikes, sentiment, next-best action and drift, per event."""

    config: ModelConfig
    segments: SegmentModel = field(init=False)
    convert: PropensityModel = field(init=False)
    churn: PropensityModel = field(init=False)
    lookalike: LookalikeModel = field(init=False)
    sentiment: SentimentModel = field(init=False)
    sentiment_by: SentimentAggregates = field(default_factory=SentimentAggregates)
    drift: DriftMonitor = field(init=False)
    nba: dict[str, _Nba] = field(default_factory=dict)
    alerts: deque[Alert] = field(init=False)
    now_ms: int = 0
    n_events: int = 0
    n_reclusterings: int = 0
    n_drift_resets: int = 0
    segment_moved: dict[str, float] = field(default_factory=dict)
    # per propensity model, the version whose prequential error is watched (`_watch_error`)
    error_versions: dict[str, int] = field(default_factory=dict)
    labelled: list[Labelled] = field(default_factory=list)
    keep_labelled: bool = False
    vectorizer: Vectorizer = field(init=False)
    # customers with an open session (the latest state object seen) and their session ends
    open_sessions: dict[str, CustomerModelState] = field(default_factory=dict)
    closed: dict[str, _Closed] = field(default_factory=dict)
    # sessions that event time has closed, waiting for their batch: customer -> end (ms)
    due: dict[str, int] = field(default_factory=dict)
    # first-event scores per (touchpoint, channel) while the models stay the same
    _first: dict[tuple[str, str], _Closed] = field(default_factory=dict)
    _first_versions: tuple[int, int, int] = (-1, -1, -1)
    session_ends: list[tuple[int, str]] = field(default_factory=list)
    _nba_best: dict[tuple[str, str], tuple[str | None, float, float]] = field(default_factory=dict)
    _conversion: frozenset[str] = field(init=False)
    _churn: frozenset[str] = field(init=False)
    # When tracking: the customers whose segment a closing session moved (not the event's own
    # customer, whose scores say it), for a caller that mirrors segments (a models process).
    track_segments: bool = False
    segment_moves: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        c = self.config
        self._conversion = frozenset(c.outcomes.conversion)
        self._churn = frozenset(c.outcomes.churn)
        self.vectorizer = Vectorizer(
            touchpoints=tuple(c.touchpoints), outcomes=self._conversion | self._churn
        )
        self.segments = SegmentModel(
            n_dst=len(self.vectorizer.states),
            k_min=c.k_min,
            k_max=max(c.k_min, c.k_max),
            reservoir_size=c.segment_reservoir,
            max_eval_every=c.segment_max_eval_every,
            seed=c.seed,
            short_events=c.segment_min_events if c.segment_short_weights else 0,
        )
        common = {
            "snapshot_every_ms": c.snapshot_every_s * 1000,
            "max_pending": c.max_pending,
            "min_segment_labels": c.min_segment_labels,
            "names": self.vectorizer.propensity_names,
        }
        self.convert = PropensityModel(
            outcomes=self._conversion, horizon_ms=c.convert_horizon_s * 1000, **common
        )
        self.churn = PropensityModel(
            outcomes=self._churn, horizon_ms=c.churn_horizon_s * 1000, **common
        )
        self.lookalike = LookalikeModel(
            max_top=c.lookalike_top, names=self.vectorizer.behaviour_names, standardize=False
        )
        self.sentiment = SentimentModel(max_vocab=c.sentiment_max_vocab)
        self.drift = DriftMonitor(
            delta=c.drift_delta,
            glr_threshold=c.drift_glr_threshold,
            warmup=c.drift_warmup,
            cooldown_ms=c.drift_cooldown_s * 1000,
            min_abs_change=c.drift_min_abs_change,
            min_rel_change=c.drift_min_rel_change,
        )
        self.alerts = deque(maxlen=c.max_alerts_kept)

    # -- pickling (the models' snapshot) ----------------------------------------------------
    def __getstate__(self) -> dict[str, object]:
        """The fields, the two propensity models packed into one `VectorPack`: they observe
        the same vector objects at a session's end, which the pack keeps once (as pickle's memo
        kept them shared) and :meth:`__setstate__` shares again."""
        state = slot_values(self, _SUITE_FIELDS)
        pack = VectorPack()
        for name in _PROPENSITY:
            state[name] = (_PACKED_MODEL, getattr(self, name).packed_state(pack))
        return pack.with_matrix(state)

    def __setstate__(self, state: dict[str, object] | tuple[None, dict[str, object]]) -> None:
        """:meth:`__getstate__`'s state, or the default ``(None, fields)`` of the snapshots
        before session 20."""
        state, vectors = VectorPack.split(state)
        for name, default in _UNSAVED.items():
            setattr(self, name, default())
        for name, value in state.items():
            if isinstance(value, tuple) and value[:1] == (_PACKED_MODEL,):
                model = PropensityModel.__new__(PropensityModel)
                model.unpack_state(value[1], vectors)
                value = model
            setattr(self, name, value)

    def new_customer(self) -> CustomerModelState:
        """A customer's state before its first event, its counts at zero: `update` moves them
        on per event from the first (what `Vectorizer.counts` of the summary would give)."""
        return CustomerModelState(
            CustomerFeatures(session_gap_ms=self.config.session_gap_s * 1000),
            counts=array("d", bytes(8 * self.vectorizer.n_counts)),
            cells=array("i"),
        )

    # -- inputs from other processors ------------------------------------------------------
    def set_transitions(
        self,
        matrix: Matrix,
        *,
        segment: str = UNASSIGNED,
        candidates: tuple[str, ...] | None = None,
        conversion: str = "conversion",
        null: str = "null",
    ) -> None:
        """Use this Markov matrix (per segment, or `"all"` as the fallback) for next-best action.

        `candidates` are the touchpoints the business can cause (default: every transient state).
        """
        absorption = absorption_probabilities(matrix, conversion=conversion, null=null)
        if candidates is None:
            candidates = tuple(s for s in sorted(matrix) if s not in (conversion, null))
        self.nba[segment] = _Nba(absorption, candidates)
        self._nba_best.clear()

    def learn_sentiment(self, text: str, label: str) -> None:
        """Train the sentiment model on one labelled support text."""
        self.sentiment.learn(text, label)

    # -- the per-event call ----------------------------------------------------------------
    def update(self, event: ResolvedEvent, state: CustomerModelState) -> Scores:
        """Score the customer after `event` (test-then-train), then learn from it."""
        ev = event.event
        cid = event.customer_id
        ts = event.ts_ms
        tp = ev.touchpoint
        self.now_ms = max(self.now_ms, ts)
        self.n_events += 1
        summary = state.features
        prev_tp = summary.last_touchpoint
        last = summary.last_ts_ms
        new_session = last is None or (
            ts - last > summary.session_gap_ms
            or (
                ev.session_id is not None
                and summary.last_session_id is not None
                and ev.session_id != summary.last_session_id
            )
        )
        # The previous session ends here (unless event time closed it already): it is scored
        # from the summary before this event (those become the customer's scores) and learned.
        rescore = False
        if new_session and cid in self.open_sessions:
            self._close(cid, state, ts)
        elif new_session and last is not None:
            rescore = not self._reopen(cid, state, ts)

        sent = self.sentiment.predict(ev.text) if ev.text else None
        if sent is not None and sent.label is not None:
            summary.add_sentiment(sent.score)
        n_moves = len(summary.transitions)
        summary.update(ev, conversion=self._conversion, churn=self._churn)
        counts = getattr(state, "counts", None)
        cells = getattr(state, "cells", None)
        if counts is None or cells is None:
            state.counts, state.cells = self.vectorizer.counts(summary)
        else:
            self.vectorizer.count_event(summary, counts, cells, tp, ev.channel, n_moves)
        is_outcome = tp in self._conversion or tp in self._churn

        # test: the models as they were before this event
        # (a new session has the scores of the previous one's end, see _close)
        if state.scored_ms is None and not is_outcome:
            self._score_first(state, tp, ev.channel, ts)
        elif (
            is_outcome
            or rescore
            or state.scored_ms is None
            or (not new_session and ts - state.scored_ms >= self.config.refresh_s * 1000)
        ):
            self._score(state, ts, lookalike=is_outcome or rescore)
        elif new_session:
            state.scored_ms = ts  # the refresh clock of a session starts with it
        action, lift = self._next_best(state.segment, tp, state.p_convert)

        # train
        self.open_sessions[cid] = state
        if new_session:
            heapq.heappush(self.session_ends, (ts + summary.session_gap_ms, cid))
        if tp in self._conversion:
            self.convert.outcome(cid, ts)
            if summary.last_ts_ms is not None:
                self.lookalike.learn_top(
                    cid, self.vectorizer.behaviour(summary), summary.revenue
                )
        if tp in self._churn:
            self.churn.outcome(cid, ts)
        labelled = self._advance(self.now_ms)
        if self.keep_labelled:
            self.labelled.extend(lab for name, lab in labelled if name == "convert")
        if sent is not None and sent.label is not None:
            self.sentiment_by.update(state.segment, prev_tp or tp, sent)
        # the drift detectors see a segment's members under the mixture's own weights
        # (`CustomerModelState.watch_segment`)
        alerts = self._watch(ts, getattr(state, "watch_segment", state.segment), prev_tp, tp,
                             labelled, sent)
        if alerts:
            self.alerts.extend(alerts)
        return _new_scores(
            customer_id=cid,
            ts_ms=ts,
            segment=state.segment,
            p_convert=state.p_convert,
            p_churn=state.p_churn,
            top_features=state.top_features,
            next_best_action=action,
            expected_lift=lift,
            lookalike=state.lookalike,
            sentiment=sent.label if sent else None,
            sentiment_score=sent.score if sent and sent.label else None,
            alerts=tuple(alerts),
        )

    def _score(
        self, state: CustomerModelState, ts: int, *, lookalike: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Recompute the customer's segment and scores from the models as they are now.

        The lookalike score (the costliest) only when asked: at session ends and outcomes.
        Returns the vectors it built (propensity, journey indices and values).
        """
        summary = state.features
        vec = self.vectorizer
        idx, val = vec.journey(summary)
        if summary.n_events < self.config.segment_min_events:
            segment, watched = self.segments.assign_both(idx, val)
        else:
            segment = watched = self.segments.assign_sparse(idx, val)
        if segment != state.segment:
            self.segments.move(state.segment, segment)
            state.segment = segment
        state.watch_segment = watched
        xp, xb = vec.vectors(summary, behaviour=lookalike)
        p, contrib = self.convert.score_vector(xp, segment)
        state.p_convert = p
        state.p_churn = self.churn.score_vector(xp, segment, explain=False)[0]
        state.top_features = top_of(vec.propensity_names, contrib)
        if xb is not None:
            state.lookalike = self.lookalike.score_vector(xb)
        state.scored_ms = ts
        return xp, idx, val

    def _score_first(self, state: CustomerModelState, tp: str, channel: str, ts: int) -> None:
        """`_score` for a customer's first event: the same for every customer with the same
        touchpoint and channel (and no text or revenue), so cached while the models stand."""
        summary = state.features
        if summary.n_events != 1 or summary.n_revenue or summary.n_sentiment:
            self._score(state, ts, lookalike=False)
            return
        versions = (self.convert.n_fits, self.churn.n_fits, self.segments.version)
        if versions != self._first_versions:
            self._first.clear()
            self._first_versions = versions
        hit = self._first.get((tp, channel))
        if hit is None:
            self._score(state, ts, lookalike=False)
            self._first[(tp, channel)] = _new_closed(
                1, state.segment, state.p_convert, state.p_churn, state.top_features, None,
                state.watch_segment,
            )
            return
        if hit.segment != state.segment:
            self.segments.move(state.segment, hit.segment)
            state.segment = hit.segment
        state.watch_segment = getattr(hit, "watch_segment", None) or hit.segment
        state.p_convert, state.p_churn = hit.p_convert, hit.p_churn
        state.top_features = hit.top_features
        state.scored_ms = ts

    def _reopen(self, cid: str, state: CustomerModelState, ts: int) -> bool:
        """A customer whose session event time closed is back: give it that session's scores.

        False when they are not kept (or the state moved on since): then it is scored afresh.
        """
        done = self.closed.pop(cid, None)
        if done is None or done.n_events != state.features.n_events:
            return False
        state.segment = done.segment  # the sizes were moved when it was scored
        state.watch_segment = getattr(done, "watch_segment", None) or done.segment
        state.p_convert, state.p_churn = done.p_convert, done.p_churn
        state.top_features, state.lookalike = done.top_features, done.lookalike
        state.scored_ms = ts
        return True

    def _close(self, cid: str, state: CustomerModelState, at_ms: int) -> None:
        """A session ended: score the customer (test), then learn the session (train)."""
        self.open_sessions.pop(cid, None)
        self.due.pop(cid, None)
        xp, idx, val = self._score(state, at_ms, lookalike=True)
        self._learn_closed(cid, state, xp, idx, val, at_ms)

    def _close_many(self, cids: list[str], at_ms: int) -> None:
        """`_close` for sessions event time has closed, in one batch: all are scored by the
        models as they are (test), then each is learned (train) and its scores kept for the
        customer's next event (see `_reopen`)."""
        vec = self.vectorizer
        states = [self.open_sessions.pop(cid) for cid in cids]
        for st in states:
            if getattr(st, "counts", None) is None or getattr(st, "cells", None) is None:
                st.counts, st.cells = vec.counts(st.features)
        xps, xbs, idx, val, starts = vec.batch(
            [st.features for st in states],
            [st.counts for st in states],  # type: ignore[misc]
            [st.cells for st in states],  # type: ignore[misc]
        )
        short = [st.features.n_events < self.config.segment_min_events for st in states]
        if any(short):
            segments, watched = self.segments.assign_flat_both(idx, val, starts)
        else:
            segments = watched = self.segments.assign_flat(idx, val, starts)
        p_convert, contrib, fitted = self.convert.score_many(xps, segments)
        p_churn = self.churn.score_many(xps, segments, explain=False)[0].tolist()
        tops = top_many(vec.propensity_names, contrib, fitted)
        looks = self.lookalike.score_many(xbs)
        # views: the segment reservoirs copy the few they keep (`segments._owned`)
        ends = [*starts[1:].tolist(), len(idx)]
        journeys = [(idx[a:b], val[a:b]) for a, b in zip(starts.tolist(), ends, strict=True)]
        p_list = p_convert.tolist()
        for i, (cid, st) in enumerate(zip(cids, states, strict=True)):
            if segments[i] != st.segment:
                self.segments.move(st.segment, segments[i])
                st.segment = segments[i]
                if self.track_segments:
                    self.segment_moves.add(cid)
            st.p_convert, st.p_churn = p_list[i], p_churn[i]
            st.top_features, st.lookalike = tops[i], looks[i]
            st.watch_segment = watched[i] if short[i] else segments[i]
            st.scored_ms = at_ms
            self.closed[cid] = _new_closed(
                st.features.n_events, st.segment, st.p_convert, st.p_churn,
                st.top_features, st.lookalike, st.watch_segment,
            )
        for i, (cid, st) in enumerate(zip(cids, states, strict=True)):
            self._learn_closed(cid, st, xps[i], *journeys[i], at_ms)
        while len(self.closed) > self.config.max_closed_kept:
            del self.closed[next(iter(self.closed))]

    def _learn_closed(
        self,
        cid: str,
        state: CustomerModelState,
        xp: np.ndarray,
        idx: np.ndarray,
        val: np.ndarray,
        at_ms: int,
    ) -> None:
        summary = state.features
        ts = summary.last_ts_ms if summary.last_ts_ms is not None else at_ms
        segment = state.segment
        if summary.n_churns == 0:
            if summary.n_conversions == 0:
                self.convert.observe(cid, ts, xp, segment, state.p_convert)
            self.churn.observe(cid, ts, xp, segment, state.p_churn)
        if summary.n_events < self.config.segment_min_events:
            self.segments.learn_short(cid, idx, val)
            return
        change = self.segments.learn_sparse(cid, idx, val, lambda: summary_vector(summary, ts))
        if change is not None:
            self.n_reclusterings += 1
            # A segment's history keeps its meaning while the segment keeps its customers:
            # those that appeared, disappeared or changed much start afresh (their rates
            # would otherwise "drift" with the membership, not with behaviour).
            # Small moves add up: a segment's history restarts once the refits since its last
            # restart have moved more than `segment_max_moved` of its customers in all.
            limit = self.config.segment_max_moved
            drifted = self.segment_moved
            moved = []
            for seg, share in change.moved.items():
                drifted[seg] = drifted.get(seg, 0.0) + share
                if drifted[seg] > limit:
                    moved.append(seg)
            for seg in (*change.new, *change.retired, *moved):
                drifted.pop(seg, None)
                self.drift.reset(segment=seg)
                self.n_drift_resets += 1

    def _advance(self, now_ms: int) -> list[tuple[str, Labelled]]:
        """Close sessions event time has passed; release labels whose horizon has passed."""
        ends = self.session_ends
        while ends and ends[0][0] < now_ms:
            deadline, cid = heapq.heappop(ends)
            state = self.open_sessions.get(cid)
            if state is None:
                continue
            summary = state.features
            last = summary.last_ts_ms if summary.last_ts_ms is not None else deadline
            actual = last + summary.session_gap_ms
            if actual >= now_ms:
                if actual != deadline:
                    heapq.heappush(ends, (actual, cid))
                continue
            self.due.setdefault(cid, actual)
        due = self.due
        if due and (
            len(due) >= self.config.close_batch
            or next(iter(due.values())) + self.config.close_delay_s * 1000 < now_ms
        ):
            cids = list(due)
            due.clear()
            self._close_many(cids, now_ms)
        # labels are due far less often than events come: skip the calls when none is
        labelled: list[tuple[str, Labelled]] = []
        for name, model in (("convert", self.convert), ("churn", self.churn)):
            order = model.order
            if (order and order[0][0] + model.horizon_ms < now_ms) or (
                model.n_labelled >= model.next_fit_at
            ):
                labelled.extend((name, lab) for lab in model.expire(now_ms))
        return labelled

    def _next_best(self, segment: str, here: str, p: float) -> tuple[str | None, float]:
        if here in self._conversion or here in self._churn:
            return None, 0.0
        key = (segment, here)
        best = self._nba_best.get(key)
        if best is None:
            nba = self.nba.get(segment) or self.nba.get(UNASSIGNED)
            if nba is None:
                return None, 0.0
            # The best action does not depend on the customer's own propensity (the odds
            # scaling is monotone), so it is cached per (segment, touchpoint).
            choice = next_best_action(nba.absorption, here, nba.candidates)
            base = nba.absorption.get(here, 0.0)
            after = nba.absorption.get(choice.action, 0.0) if choice.action else 0.0
            best = self._nba_best[key] = (choice.action, base, after)
        action, base, after = best
        if action is None:
            return None, 0.0
        o = odds(p) * odds(after) / odds(base)
        p_after = o / (1 + o) if math.isfinite(o) else 1.0
        return action, p_after - p

    def _watch(
        self,
        ts: int,
        segment: str,
        prev_tp: str | None,
        touchpoint: str,
        labelled: list[tuple[str, Labelled]],
        sent: SentimentPrediction | None,
    ) -> list[Alert]:
        out: list[Alert] = []
        update = self.drift.update
        converted = 1.0 if touchpoint in self._conversion else 0.0
        alert = update("conversion_rate", UNASSIGNED, converted, ts, binary=True)
        if alert is not None:
            out.append(alert)
        if segment != UNASSIGNED:
            alert = update("conversion_rate", segment, converted, ts, binary=True)
            if alert is not None:
                out.append(alert)
            for seg in self.segments.ids if self.config.watch_segment_shares else ():
                alert = update("segment_share", seg, 1.0 if seg == segment else 0.0, ts,
                               binary=True)
                if alert is not None:
                    out.append(alert)
        if prev_tp is not None:
            for src, dst in self.config.key_transitions:
                if prev_tp == src:
                    value = 1.0 if touchpoint == dst else 0.0
                    alert = update(f"transition:{src}->{dst}", segment, value, ts, binary=True)
                    if alert is not None:
                        out.append(alert)
        for name, lab in labelled if self.config.watch_propensity_error else ():
            alert = self._watch_error(name, lab, ts)
            if alert is not None:
                out.append(alert)
        if sent is not None and sent.label is not None:
            alert = update("sentiment", segment, sent.score, ts)
            if alert is not None:
                out.append(alert)
        return out

    def _watch_error(self, name: str, lab: Labelled, ts: int) -> Alert | None:
        """The prequential error of one label, watched per version of the model that scored it
        (`Labelled.fit_at`): a newer version restarts the detector, older ones are skipped."""
        version = lab.fit_at
        if version < max(self.config.propensity_error_min_fit, 1):
            return None
        metric = f"propensity_error:{name}"
        if getattr(self, "error_versions", None) is None:  # a suite pickled before versions
            self.error_versions = {}
        watched = self.error_versions.get(name, 0)
        if version < watched:  # a snapshot scored just before the refit, labelled late
            return None
        if version > watched:
            self.error_versions[name] = version
            self.drift.restart(metric, UNASSIGNED)
        return self.drift.update(metric, UNASSIGNED, (float(lab.y) - lab.p) ** 2, ts)

    # -- reading ---------------------------------------------------------------------------
    def alerts_since(self, ts_ms: int) -> list[Alert]:
        """Alerts raised at or after event time `ts_ms` (of the last `max_alerts_kept`)."""
        return [a for a in self.alerts if a.ts_ms >= ts_ms]

    def profiles(self) -> list[SegmentProfile]:
        return self.segments.profiles()

    def sentiment_summary(self, dimension: str = "segment") -> dict[str, dict[str, float]]:
        """Sentiment per `"segment"` or per `"stage"` (the touchpoint before the text)."""
        return self.sentiment_by.summary(dimension)


# the segment tracking is the running process's (a models process), not the snapshot's
_UNSAVED = {"track_segments": bool, "segment_moves": set}
_SUITE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ModelSuite) if f.name not in _UNSAVED)
_PROPENSITY = ("convert", "churn")
_PACKED_MODEL = "packed propensity model v1"

"""`ModelSuite`: every online model behind one per-event call, for the journey agent and replay.

    suite = ModelSuite(ModelConfig())
    state = suite.new_customer()          # keep it per customer (a Faust table value)
    scores = suite.update(resolved_event, state)   # mutates `state`: reassign it in the table

Per event, in this order: the text's sentiment is predicted; the customer's features absorb the
event; the segment, both propensities (with their top features), the lookalike score and the
next-best action are computed from the models as they are *before* this event teaches them
anything (test-then-train); then the models learn, delayed labels that became known are learned,
and drift detectors see the event's signals. Alerts come back on the scores and are kept
(bounded) for `alerts_since`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from online_models.checkpoint import Snapshotting
from online_models.drift import Alert, DriftMonitor
from online_models.features import CustomerFeatures, features
from online_models.lookalike import LookalikeModel
from online_models.nba import Matrix, absorption_probabilities, next_best_action
from online_models.propensity import Labelled, PropensityModel, top_contributions
from online_models.segments import UNASSIGNED, SegmentModel, SegmentProfile
from online_models.sentiment import SentimentAggregates, SentimentModel
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
    snapshot_every_s: Annotated[int, Field(gt=0)] = DAY_S
    max_pending: Annotated[int, Field(gt=0)] = 200_000
    min_segment_labels: Annotated[int, Field(gt=0)] = 2_000
    k_min: Annotated[int, Field(ge=2)] = 3
    k_max: Annotated[int, Field(ge=2, le=20)] = 10
    segment_reservoir: Annotated[int, Field(ge=100)] = 2_000
    segment_max_eval_every: Annotated[int, Field(ge=1_000)] = 100_000
    lookalike_top: Annotated[int, Field(ge=10)] = 500
    sentiment_max_vocab: Annotated[int, Field(ge=100)] = 20_000
    drift_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    drift_warmup: Annotated[int, Field(ge=0)] = 1_000
    drift_cooldown_s: Annotated[int, Field(ge=0)] = DAY_S
    drift_min_abs_change: Annotated[float, Field(ge=0)] = 0.01
    drift_min_rel_change: Annotated[float, Field(ge=0)] = 0.2
    # (src, dst) touchpoint pairs whose transition probability is watched per segment.
    key_transitions: list[tuple[str, str]] = []
    # Segment shares move while customers mature and centroids settle: opt in once stable.
    watch_segment_shares: bool = False
    max_alerts_kept: Annotated[int, Field(ge=1)] = 1_000


@dataclass(slots=True)
class CustomerModelState:
    """What the models keep per customer: the feature summary and the current segment."""

    features: CustomerFeatures
    segment: str = UNASSIGNED


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
    labelled: list[Labelled] = field(default_factory=list)
    keep_labelled: bool = False
    _conversion: frozenset[str] = field(init=False)
    _churn: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self._conversion = frozenset(c.outcomes.conversion)
        self._churn = frozenset(c.outcomes.churn)
        self.segments = SegmentModel(
            k_min=c.k_min,
            k_max=max(c.k_min, c.k_max),
            reservoir_size=c.segment_reservoir,
            max_eval_every=c.segment_max_eval_every,
            seed=c.seed,
        )
        common = {
            "snapshot_every_ms": c.snapshot_every_s * 1000,
            "max_pending": c.max_pending,
            "min_segment_labels": c.min_segment_labels,
        }
        self.convert = PropensityModel(
            outcomes=self._conversion, horizon_ms=c.convert_horizon_s * 1000, **common
        )
        self.churn = PropensityModel(
            outcomes=self._churn, horizon_ms=c.churn_horizon_s * 1000, **common
        )
        self.lookalike = LookalikeModel(max_top=c.lookalike_top)
        self.sentiment = SentimentModel(max_vocab=c.sentiment_max_vocab)
        self.drift = DriftMonitor(
            delta=c.drift_delta,
            warmup=c.drift_warmup,
            cooldown_ms=c.drift_cooldown_s * 1000,
            min_abs_change=c.drift_min_abs_change,
            min_rel_change=c.drift_min_rel_change,
        )
        self.alerts = deque(maxlen=c.max_alerts_kept)

    def new_customer(self) -> CustomerModelState:
        return CustomerModelState(CustomerFeatures(session_gap_ms=self.config.session_gap_s * 1000))

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

    def learn_sentiment(self, text: str, label: str) -> None:
        """Train the sentiment model on one labelled support text."""
        self.sentiment.learn(text, label)

    # -- the per-event call ----------------------------------------------------------------
    def update(self, event: ResolvedEvent, state: CustomerModelState) -> Scores:
        """Score the customer after `event` (test-then-train), then learn from it."""
        ev = event.event
        cid = event.customer_id
        ts = event.ts_ms
        self.now_ms = max(self.now_ms, ts)
        self.n_events += 1
        summary = state.features
        prev_tp = summary.last_touchpoint

        sent = self.sentiment.predict(ev.text) if ev.text else None
        if sent is not None and sent.label is not None:
            summary.add_sentiment(sent.score)
        summary.update(ev, conversion=self._conversion, churn=self._churn)
        feats = features(summary, ts)

        # test: everything below reads the models as they were before this event
        segment = self.segments.assign(feats)
        p_convert, contrib = self.convert.score(feats, segment)
        p_churn, _ = self.churn.score(feats, segment)
        look = self.lookalike.score(feats)
        action, lift = self._next_best(segment, ev.touchpoint, p_convert)

        # train
        alerts: list[Alert] = []
        old_segment = state.segment
        state.segment = segment
        self.segments.move(old_segment, segment)
        change = self.segments.learn(cid, feats)
        if change is not None:
            self.n_reclusterings += 1
            if change.new or change.retired:
                # Segment-keyed histories describe segments that no longer exist as they were.
                for metric, seg in list(self.drift.tracks):
                    if seg != UNASSIGNED:
                        self.drift.reset(metric, seg)
        self.lookalike.learn(cid, feats)
        labelled: list[tuple[str, Labelled]] = []
        for name, model, outcomes in (
            ("convert", self.convert, self._conversion),
            ("churn", self.churn, self._churn),
        ):
            if ev.touchpoint in outcomes:
                labelled.extend((name, lab) for lab in model.outcome(cid, ts))
            elif summary.n_churns == 0:
                p = p_convert if name == "convert" else p_churn
                model.observe(cid, ts, feats, segment, p)
            labelled.extend((name, lab) for lab in model.expire(self.now_ms))
        if self.keep_labelled:
            self.labelled.extend(lab for name, lab in labelled if name == "convert")

        if sent is not None and sent.label is not None:
            stage = prev_tp or ev.touchpoint
            self.sentiment_by.update(segment, stage, sent)
        alerts.extend(self._watch(ts, segment, prev_tp, ev.touchpoint, labelled, sent))
        self.alerts.extend(alerts)
        return Scores(
            customer_id=cid,
            ts_ms=ts,
            segment=segment,
            p_convert=p_convert,
            p_churn=p_churn,
            top_features=top_contributions(contrib),
            next_best_action=action,
            expected_lift=lift,
            lookalike=look,
            sentiment=sent.label if sent else None,
            sentiment_score=sent.score if sent and sent.label else None,
            alerts=tuple(alerts),
        )

    def _next_best(self, segment: str, here: str, p: float) -> tuple[str | None, float]:
        nba = self.nba.get(segment) or self.nba.get(UNASSIGNED)
        if nba is None or here in self._conversion or here in self._churn:
            return None, 0.0
        best = next_best_action(nba.absorption, here, nba.candidates, p_customer=p)
        return best.action, best.expected_lift

    def _watch(
        self,
        ts: int,
        segment: str,
        prev_tp: str | None,
        touchpoint: str,
        labelled: list[tuple[str, Labelled]],
        sent: object,
    ) -> list[Alert]:
        out: list[Alert] = []

        def feed(metric: str, seg: str, value: float) -> None:
            alert = self.drift.update(metric, seg, value, ts)
            if alert is not None:
                out.append(alert)

        converted = 1.0 if touchpoint in self._conversion else 0.0
        feed("conversion_rate", UNASSIGNED, converted)
        if segment != UNASSIGNED:
            feed("conversion_rate", segment, converted)
            for seg in self.segments.ids if self.config.watch_segment_shares else ():
                feed("segment_share", seg, 1.0 if seg == segment else 0.0)
        if prev_tp is not None:
            for src, dst in self.config.key_transitions:
                if prev_tp == src:
                    feed(f"transition:{src}->{dst}", segment, 1.0 if touchpoint == dst else 0.0)
        for name, lab in labelled:
            feed(f"propensity_error:{name}", UNASSIGNED, (float(lab.y) - lab.p) ** 2)
        score = getattr(sent, "score", None)
        if score is not None and getattr(sent, "label", None) is not None:
            feed("sentiment", segment, score)
        return out

    # -- reading ---------------------------------------------------------------------------
    def alerts_since(self, ts_ms: int) -> list[Alert]:
        """Alerts raised at or after event time `ts_ms` (of the last `max_alerts_kept`)."""
        return [a for a in self.alerts if a.ts_ms >= ts_ms]

    def profiles(self) -> list[SegmentProfile]:
        return self.segments.profiles()

    def sentiment_summary(self, dimension: str = "segment") -> dict[str, dict[str, float]]:
        """Sentiment per `"segment"` or per `"stage"` (the touchpoint before the text)."""
        return self.sentiment_by.summary(dimension)

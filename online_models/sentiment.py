"""Sentiment of support texts: a River bag-of-words + multinomial naive Bayes pipeline.

Trained online on the project's own labelled texts (negative / neutral / positive). Unigrams and
bigrams ("not working", "thank you") carry most of the signal in support messages. The
vocabulary is capped at `max_vocab` (words after the cap are ignored) so the model stays bounded.
A text's score is P(positive) - P(negative), in -1..1: what the churn-side features average.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from river import feature_extraction, naive_bayes

from online_models.checkpoint import Snapshotting

LABELS: Final = ("negative", "neutral", "positive")


@dataclass(frozen=True, slots=True)
class SentimentPrediction:
    label: str | None
    score: float
    proba: dict[str, float]


@dataclass(slots=True)
class SentimentModel(Snapshotting):
    """Online text classifier with a bounded vocabulary."""

    max_vocab: int = 20_000
    alpha: float = 1.0
    bow: feature_extraction.BagOfWords = field(
        default_factory=lambda: feature_extraction.BagOfWords(ngram_range=(1, 2))
    )
    nb: naive_bayes.MultinomialNB = field(init=False)
    vocab: set[str | tuple[str, ...]] = field(default_factory=set)
    n_learned: int = 0

    def __post_init__(self) -> None:
        self.nb = naive_bayes.MultinomialNB(alpha=self.alpha)

    def _x(self, text: str, *, grow: bool) -> dict:
        x = self.bow.transform_one(text)
        out = {}
        for token, count in x.items():
            if token not in self.vocab:
                if not grow or len(self.vocab) >= self.max_vocab:
                    continue
                self.vocab.add(token)
            out[token] = count
        return out

    def predict(self, text: str) -> SentimentPrediction:
        """The most likely label and the -1..1 score; label None before any training."""
        if self.n_learned == 0:
            return SentimentPrediction(None, 0.0, {})
        proba = self.nb.predict_proba_one(self._x(text, grow=False))
        if not proba:
            return SentimentPrediction(None, 0.0, {})
        label = max(sorted(proba), key=lambda k: proba[k])
        score = proba.get("positive", 0.0) - proba.get("negative", 0.0)
        return SentimentPrediction(label, float(score), {k: float(v) for k, v in proba.items()})

    def learn(self, text: str, label: str) -> None:
        if label not in LABELS:
            raise ValueError(f"sentiment label must be one of {LABELS}, got {label!r}")
        self.nb.learn_one(self._x(text, grow=True), label)
        self.n_learned += 1


@dataclass(slots=True)
class SentimentAggregates(Snapshotting):
    """Counts per label and the mean score, per segment and per journey stage."""

    counts: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    score_sum: dict[tuple[str, str], float] = field(default_factory=dict)

    def update(self, segment: str, stage: str, prediction: SentimentPrediction) -> None:
        if prediction.label is None:
            return
        for key in (("segment", segment), ("stage", stage)):
            c = self.counts.setdefault(key, dict.fromkeys(LABELS, 0))
            c[prediction.label] += 1
            self.score_sum[key] = self.score_sum.get(key, 0.0) + prediction.score

    def summary(self, dimension: str) -> dict[str, dict[str, float]]:
        """{key: {n, mean_score, share_negative, share_neutral, share_positive}}."""
        out: dict[str, dict[str, float]] = {}
        for (dim, key), c in sorted(self.counts.items()):
            if dim != dimension:
                continue
            n = sum(c.values())
            row = {"n": float(n), "mean_score": self.score_sum[(dim, key)] / n}
            row.update({f"share_{label}": c[label] / n for label in LABELS})
            out[key] = row
        return out

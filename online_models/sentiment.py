"""Sentiment of support texts: bag-of-words (1-2 grams) + multinomial naive Bayes, online.

Trained online on the project's own labelled texts (negative / neutral / positive). Unigrams and
bigrams ("not working", "thank you") carry most of the signal in support messages. The
vocabulary is capped at `max_vocab` (words after the cap are ignored) so the model stays bounded.
A text's score is P(positive) - P(negative), in -1..1: what the churn-side features average.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Final

from online_models.checkpoint import Snapshotting

LABELS: Final = ("negative", "neutral", "positive")


@dataclass(frozen=True, slots=True)
class SentimentPrediction:
    label: str | None
    score: float
    proba: dict[str, float]


_TOKEN = re.compile(r"(?u)\b\w[\w\-]+\b")  # River's BagOfWords default


def tokens(text: str) -> dict[str | tuple[str, str], int]:
    """Unigram and bigram counts, as River's `BagOfWords(ngram_range=(1, 2))` makes them."""
    if not text.isascii():
        text = "".join(
            c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)
        )
    words = _TOKEN.findall(text.lower())
    out: dict[str | tuple[str, str], int] = {}
    for w in words:
        out[w] = out.get(w, 0) + 1
    for pair in itertools.pairwise(words):
        out[pair] = out.get(pair, 0) + 1
    return out


@dataclass(slots=True)
class SentimentModel(Snapshotting):
    """Online multinomial naive Bayes over a bounded vocabulary (plain dicts: ~20x River's speed).

    The same algorithm as River's `MultinomialNB` (Laplace smoothing `alpha`, vocabulary size =
    distinct terms seen) on River's bag-of-words tokens, so it is exact, not an approximation.
    """

    max_vocab: int = 20_000
    alpha: float = 1.0
    counts: dict[str | tuple[str, str], dict[str, float]] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)
    class_totals: dict[str, float] = field(default_factory=dict)
    n_learned: int = 0
    # per term, log(count + alpha) of each class in `_classes` order: derived from `counts`,
    # dropped for the terms a text teaches (and all of it when a new class appears)
    _logs: dict[str | tuple[str, str], tuple[float, ...]] = field(default_factory=dict)
    _classes: tuple[str, ...] = ()

    @property
    def vocab(self) -> dict[str | tuple[str, str], dict[str, float]]:
        return self.counts

    def predict(self, text: str) -> SentimentPrediction:
        """The most likely label and the -1..1 score; label None before any training."""
        if self.n_learned == 0:
            return SentimentPrediction(None, 0.0, {})
        x = tokens(text)
        alpha = self.alpha
        n_terms = len(self.counts)
        log = math.log
        classes = sorted(self.class_counts)
        dens = [log(self.class_totals.get(c, 0.0) + alpha * n_terms) for c in classes]
        totals = [log(self.class_counts[c] / self.n_learned) for c in classes]
        logs = getattr(self, "_logs", None)  # None in checkpoints written before the cache
        if logs is None or getattr(self, "_classes", ()) != tuple(classes):
            logs = self._logs = {}
            self._classes = tuple(classes)
        # one pass over the tokens, each class's sum in token order (as one pass per class)
        counts = self.counts
        pairs = tuple(enumerate(dens))
        for token, f in x.items():
            lc = logs.get(token)
            if lc is None:
                row = counts.get(token)
                if row is None:
                    continue
                lc = logs[token] = tuple([log(row.get(c, 0.0) + alpha) for c in classes])
            for i, den in pairs:
                totals[i] += f * (lc[i] - den)
        joint = dict(zip(classes, totals, strict=True))
        top = max(joint.values())
        exp = {c: math.exp(v - top) for c, v in joint.items()}
        norm = sum(exp.values())
        proba = {c: v / norm for c, v in exp.items()}
        label = max(classes, key=lambda k: proba[k])
        score = proba.get("positive", 0.0) - proba.get("negative", 0.0)
        return SentimentPrediction(label, float(score), proba)

    def learn(self, text: str, label: str) -> None:
        if label not in LABELS:
            raise ValueError(f"sentiment label must be one of {LABELS}, got {label!r}")
        self.class_counts[label] = self.class_counts.get(label, 0) + 1
        total = 0.0
        logs = getattr(self, "_logs", None)
        for token, f in tokens(text).items():
            if logs:
                logs.pop(token, None)
            row = self.counts.get(token)
            if row is None:
                if len(self.counts) >= self.max_vocab:
                    continue
                row = self.counts[token] = {}
            row[label] = row.get(label, 0.0) + f
            total += f
        self.class_totals[label] = self.class_totals.get(label, 0.0) + total
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

"""Sentiment of support texts: River's bag-of-words (1-2 grams) piped into River's multinomial
naive Bayes, learned online, one text at a time.

Trained online on the project's own labelled texts (negative / neutral / positive). Unigrams and
bigrams ("not working", "thank you") carry most of the signal in support messages. The model is a
River `compose.Pipeline`: `feature_extraction.BagOfWords(ngram_range=(1, 2))` |
`VocabularyCap(max_vocab)` | `naive_bayes.MultinomialNB(alpha)`. The cap keeps the first
`max_vocab` distinct terms learned (words after it are ignored), so the model stays bounded.
A text's score is P(positive) - P(negative), in -1..1: what the churn-side features average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from river import base, compose, feature_extraction, naive_bayes

from online_models.checkpoint import Snapshotting

LABELS: Final = ("negative", "neutral", "positive")
STATE_VERSION: Final = 2  # 1: the plain-dict model before River (its slots, no version)


@dataclass(frozen=True, slots=True)
class SentimentPrediction:
    label: str | None
    score: float
    proba: dict[str, float]


class VocabularyCap(base.Transformer):
    """Keeps the first `max_vocab` distinct terms it learns; `transform_one` drops all others.

    So a term past the cap, or one never learned, says nothing at prediction (River's
    `MultinomialNB` alone would count an unseen term as alpha / class total, a pull towards the
    classes with fewer words in training; the model before River ignored such terms too).
    """

    def __init__(self, max_vocab: int = 20_000) -> None:
        self.max_vocab = max_vocab
        self.vocab: set[Any] = set()

    def learn_one(self, x: dict[Any, float]) -> None:
        vocab = self.vocab
        room = self.max_vocab - len(vocab)
        if room <= 0:
            return
        for term in x:
            if term not in vocab:
                vocab.add(term)
                room -= 1
                if room == 0:
                    return

    def transform_one(self, x: dict[Any, float]) -> dict[Any, float]:
        vocab = self.vocab
        return {term: f for term, f in x.items() if term in vocab}


def text_pipeline(max_vocab: int, alpha: float) -> compose.Pipeline:
    """River's text pipeline the sentiment model is: 1-2-gram counts, capped, naive Bayes."""
    return compose.Pipeline(
        ("bow", feature_extraction.BagOfWords(ngram_range=(1, 2))),
        ("vocab", VocabularyCap(max_vocab)),
        ("nb", naive_bayes.MultinomialNB(alpha=alpha)),
    )


def joint_log_likelihood(nb: naive_bayes.MultinomialNB, x: dict[Any, float]) -> dict[str, float]:
    """`nb.joint_log_likelihood(x)`, the same floats from the same operations in the same order,
    with what River looks up per term and class (three method calls, a property taking the
    vocabulary's length, the class total) looked up once per text or per class: River's took
    ~60 % of a prediction (`bench/bench_models.py --sentiment`)."""
    alpha = nb.alpha
    counts = nb.class_counts
    n_all = sum(counts.values())
    extra = alpha * len(nb.feature_counts)  # alpha * n_terms
    get = nb.feature_counts.get  # (get: a defaultdict would add the unseen term)
    rows = [(frequency, get(f, {})) for f, frequency in x.items()]
    totals = nb.class_totals
    log = math.log
    out = {}
    for c in counts:  # River's classes_: the class counts' keys, in their order
        den = totals[c] + extra
        s = 0  # (sum() starts from the integer 0 and adds in order)
        for frequency, row in rows:
            s += frequency * log((row.get(c, 0.0) + alpha) / den)
        out[c] = log(counts[c] / n_all) + s
    return out


def learn_naive_bayes(nb: naive_bayes.MultinomialNB, x: dict[Any, float], y: str) -> None:
    """`nb.learn_one(x, y)`: the same counts from the same additions in the same order, without
    River's two `Counter.update` calls per term (each builds a dict and walks it): 48-52 ->
    24-25 µs per text on the simulation's texts."""
    counts = nb.class_counts
    counts[y] = counts.get(y, 0) + 1
    if not x:
        return
    rows = nb.feature_counts
    totals = nb.class_totals
    total = totals.get(y)
    for f, frequency in x.items():
        row = rows[f]
        before = row.get(y)
        row[y] = frequency if before is None else frequency + before
        total = frequency if total is None else frequency + total
    totals[y] = total


class SentimentModel(Snapshotting):
    """River's `BagOfWords | VocabularyCap | MultinomialNB` pipeline, online, by composition.

    `learn` is the pipeline's `learn_one`; `predict` is its `predict_proba_one` computed as the
    pipeline's `transform_one` and the naive Bayes' `joint_log_likelihood` (River's floats,
    computed by `joint_log_likelihood` above), normalized here:
    River's `predict_proba_one` normalizes through `scipy.special.logsumexp`, about half of its
    time on three classes (equal to 1e-12, tested). Pickles (checkpoints) keep the pipeline; a
    checkpoint of the plain-dict model before River loads into the same pipeline (its counts are
    MultinomialNB's sufficient statistics).
    """

    __slots__ = ("alpha", "max_vocab", "pipeline")

    def __init__(self, max_vocab: int = 20_000, alpha: float = 1.0) -> None:
        self.max_vocab = max_vocab
        self.alpha = alpha
        self.pipeline = text_pipeline(max_vocab, alpha)

    @property
    def nb(self) -> naive_bayes.MultinomialNB:
        return self.pipeline["nb"]

    @property
    def vocab(self) -> dict[Any, Any]:
        """Term -> {label: count}: the naive Bayes' feature counts (at most `max_vocab`)."""
        return self.nb.feature_counts

    @property
    def n_learned(self) -> int:
        return sum(self.nb.class_counts.values())

    def predict(self, text: str) -> SentimentPrediction:
        """The most likely label and the -1..1 score; label None before any training."""
        nb = self.nb
        if not nb.class_counts:
            return SentimentPrediction(None, 0.0, {})
        # BagOfWords(on=None) takes the text itself; Pipeline's hints say dict
        joint = joint_log_likelihood(nb, self.pipeline.transform_one(text))  # type: ignore[arg-type]
        top = max(joint.values())
        exp = {c: math.exp(v - top) for c, v in joint.items()}
        norm = sum(exp.values())
        proba = {c: v / norm for c, v in exp.items()}
        label = max(sorted(proba), key=proba.__getitem__)
        score = proba.get("positive", 0.0) - proba.get("negative", 0.0)
        return SentimentPrediction(label, float(score), proba)

    def learn(self, text: str, label: str) -> None:
        if label not in LABELS:
            raise ValueError(f"sentiment label must be one of {LABELS}, got {label!r}")
        # The pipeline's `learn_one`, step by step: the bag of words learns nothing, the cap
        # learns the text's terms before it filters them, then the naive Bayes.
        pipe = self.pipeline
        x = pipe["bow"].transform_one(text)  # type: ignore[arg-type]
        cap = pipe["vocab"]
        cap.learn_one(x)
        learn_naive_bayes(self.nb, cap.transform_one(x), label)

    def __getstate__(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "max_vocab": self.max_vocab, "alpha": self.alpha,
                "pipeline": self.pipeline}

    def __setstate__(self, state: dict[str, Any] | tuple[None, dict[str, Any]]) -> None:
        if isinstance(state, tuple):  # version 1, the plain-dict dataclass: (None, {slot: value})
            state = state[1]
        self.max_vocab, self.alpha = state["max_vocab"], state["alpha"]
        if "pipeline" in state:
            self.pipeline = state["pipeline"]
            return
        # version 1's counts are MultinomialNB's sufficient statistics: the same model
        self.pipeline = text_pipeline(self.max_vocab, self.alpha)
        nb = self.nb
        nb.class_counts.update(state["class_counts"])
        nb.class_totals.update(state["class_totals"])
        for term, row in state["counts"].items():
            nb.feature_counts[term].update(row)
        self.pipeline["vocab"].vocab.update(state["counts"])


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

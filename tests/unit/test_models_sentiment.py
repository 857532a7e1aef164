"""Sentiment: learns a small labelled set, generalises to held-out texts, bounded, pickles."""

from __future__ import annotations

import random

import pytest

from online_models.sentiment import SentimentAggregates, SentimentModel

NEG = [
    "{f} keeps crashing, this is unacceptable",
    "{f} is broken again, very frustrating",
    "terrible, {f} lost our data",
    "I want a refund, {f} is useless",
    "awful, {f} fails",
]
NEU = [
    "how do I export from {f}?",
    "where can I change {f} settings?",
    "is there a way to add a user to {f}?",
    "question about {f}: can we change the plan?",
]
POS = [
    "thanks, {f} works perfectly",
    "love {f}, great job",
    "{f} is amazing, thank you",
    "great support, {f} saves us hours",
    "brilliant, {f} just works",
]
FEATURES = ["the dashboard", "billing", "the API", "search", "the editor", "reports", "login"]


def _texts(seed: int, n: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label, pool = rng.choice([("negative", NEG), ("neutral", NEU), ("positive", POS)])
        out.append((rng.choice(pool).format(f=rng.choice(FEATURES)), label))
    return out


def _trained() -> SentimentModel:
    m = SentimentModel()
    for text, label in _texts(0, 300):
        m.learn(text, label)
    return m


def test_held_out_accuracy() -> None:
    m = _trained()
    held_out = _texts(1, 200)
    correct = sum(m.predict(t).label == y for t, y in held_out)
    assert correct / len(held_out) > 0.95
    assert m.predict("it keeps crashing, awful").score < 0 < m.predict("thanks, amazing").score


def test_untrained_predicts_nothing_and_bad_label_rejected() -> None:
    m = SentimentModel()
    assert m.predict("anything").label is None
    with pytest.raises(ValueError, match="sentiment label"):
        m.learn("text", "angry")


def test_vocabulary_is_bounded() -> None:
    m = SentimentModel(max_vocab=100)
    for text, label in _texts(2, 300):
        m.learn(text + f" token{random.Random(text).random()}", label)
    assert len(m.vocab) == 100


def test_aggregates_per_segment_and_stage() -> None:
    m = _trained()
    agg = SentimentAggregates()
    agg.update("s1", "support_ticket", m.predict("billing is broken again, very frustrating"))
    agg.update("s1", "feature_use", m.predict("thanks, search works perfectly"))
    seg = agg.summary("segment")["s1"]
    assert seg["n"] == 2 and seg["share_negative"] == 0.5 and seg["share_positive"] == 0.5
    assert agg.summary("stage")["support_ticket"]["mean_score"] < 0


def test_round_trip_predicts_identically() -> None:
    m = _trained()
    copy = SentimentModel.restore(m.snapshot())
    for text, _ in _texts(3, 50):
        assert copy.predict(text) == m.predict(text)

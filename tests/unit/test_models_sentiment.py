"""Sentiment: learns a small labelled set, generalises to held-out texts, bounded, pickles;
River's text pipeline underneath; checkpoints of the model before River still load."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest
from river import compose, feature_extraction, naive_bayes

from online_models.sentiment import SentimentAggregates, SentimentModel, joint_log_likelihood

DATA = Path(__file__).parent / "data"

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


def test_is_rivers_pipeline_and_predicts_as_its_predict_proba_one() -> None:
    m = _trained()
    steps = list(m.pipeline.steps.values())
    assert isinstance(m.pipeline, compose.Pipeline)
    assert isinstance(steps[0], feature_extraction.BagOfWords)
    assert steps[0].ngram_range == (1, 2)
    assert isinstance(steps[-1], naive_bayes.MultinomialNB)
    for text, _ in [*_texts(4, 50), ("billing zzz unheard-of words", "neutral")]:
        ours = m.predict(text).proba
        river = m.pipeline.predict_proba_one(text)
        assert ours.keys() == river.keys()
        assert all(abs(ours[c] - river[c]) < 1e-12 for c in ours)


@pytest.mark.parametrize("max_vocab", [20_000, 40])
def test_joint_log_likelihood_is_rivers_to_the_bit(max_vocab: int) -> None:
    """The same floats as River's `MultinomialNB.joint_log_likelihood` (not merely close: the
    scores' fingerprint depends on them), for known, unseen and capped terms, repeated terms,
    before and while it learns."""
    m = SentimentModel(max_vocab=max_vocab)
    nb = m.nb
    probes = [*_texts(7, 40), ("billing billing zzz never-seen words", "neutral"),
              ("", "neutral")]
    for i, (text, label) in enumerate(_texts(8, 200)):
        m.learn(text, label)
        if i % 20 == 0:
            for probe, _ in probes:
                for x in (m.pipeline.transform_one(probe), m.pipeline["bow"].transform_one(probe)):
                    ours, river = joint_log_likelihood(nb, x), nb.joint_log_likelihood(x)
                    assert list(ours) == list(river)
                    assert all(ours[c] == river[c] for c in river), (probe, ours, river)
    assert len(nb.feature_counts) > 0


@pytest.mark.parametrize("max_vocab", [20_000, 40])
def test_learn_leaves_the_state_rivers_learn_one_leaves(max_vocab: int) -> None:
    """`learn` (the pipeline's steps and `learn_naive_bayes`) against River's own
    `Pipeline.learn_one` on a twin: the same counts, totals and vocabulary, the same types,
    keys in the same order, under and past the cap, with empty and repeated-term texts."""
    ours, river = SentimentModel(max_vocab=max_vocab), SentimentModel(max_vocab=max_vocab)
    texts = [*_texts(11, 300), ("", "neutral"), ("billing billing billing", "negative"),
             ("!!!", "positive")]
    for text, label in texts:
        ours.learn(text, label)
        river.pipeline.learn_one(text, label)
    a, b = ours.nb, river.nb
    for mine, theirs in ((a.class_counts, b.class_counts), (a.class_totals, b.class_totals)):
        assert list(mine.items()) == list(theirs.items())
        assert [type(v) for v in mine.values()] == [type(v) for v in theirs.values()]
    assert list(a.feature_counts) == list(b.feature_counts)
    for term, row in b.feature_counts.items():
        assert list(a.feature_counts[term].items()) == list(row.items()), term
    assert ours.pipeline["vocab"].vocab == river.pipeline["vocab"].vocab


def test_same_as_a_bare_river_pipeline_while_under_the_cap() -> None:
    """Below the cap every learned term is kept, so only unseen terms differ from bare River
    (dropped here; River's MultinomialNB would count them): probe texts without unseen terms."""
    m = _trained()
    bare = compose.Pipeline(feature_extraction.BagOfWords(ngram_range=(1, 2)),
                            naive_bayes.MultinomialNB(alpha=1.0))
    for text, label in _texts(0, 300):
        bare.learn_one(text, label)
    assert len(m.vocab) < m.max_vocab
    for text, _ in _texts(0, 40):
        ours, river = m.predict(text).proba, bare.predict_proba_one(text)
        assert all(abs(ours[c] - river[c]) < 1e-12 for c in ours)


def test_pickle_round_trip_keeps_learning_identically() -> None:
    m = _trained()
    copy = pickle.loads(pickle.dumps(m))
    more = _texts(5, 100)
    for text, label in more:
        m.learn(text, label)
        copy.learn(text, label)
    assert copy.n_learned == m.n_learned == 400
    assert copy.vocab == m.vocab
    for text, _ in _texts(6, 50):
        assert copy.predict(text) == m.predict(text)


def test_checkpoint_of_the_model_before_river_loads_and_predicts_as_it_did() -> None:
    """`data/sentiment_v1.ckpt`: the plain-dict model of commit 640ea1f (vocabulary capped at
    150, reached), trained on `_texts(0, 300)`; the json holds what it predicted then."""
    expected = json.loads((DATA / "sentiment_v1.json").read_text())
    m = SentimentModel.restore((DATA / "sentiment_v1.ckpt").read_bytes())
    assert m.max_vocab == 150 and len(m.vocab) == expected["n_terms"] == 150
    assert m.n_learned == 300
    for e in expected["predictions"]:
        p = m.predict(e["text"])
        assert p.label == e["label"]
        assert abs(p.score - e["score"]) < 1e-9
        assert all(abs(p.proba[c] - e["proba"][c]) < 1e-9 for c in e["proba"])
    # it goes on learning as River's pipeline, with its cap still in force
    for text, label in _texts(7, 50):
        m.learn(text + " brand-new-term", label)
    assert len(m.vocab) == 150 and m.n_learned == 350
    again = SentimentModel.restore(m.snapshot())
    assert again.predict("billing is broken") == m.predict("billing is broken")


def test_test_then_train_a_text_is_scored_before_it_teaches() -> None:
    """In the suite each text is predicted, then learned: the prediction must not have seen it."""
    m = SentimentModel()
    m.learn("the editor keeps crashing", "negative")
    m.learn("thanks, the editor works", "positive")
    text = "refund refund refund, awful"
    before = m.predict(text)
    assert before.proba == m.predict(text).proba  # predicting teaches nothing
    m.learn(text, "negative")
    after = m.predict(text)
    assert after.proba["negative"] > before.proba["negative"]
    assert m.n_learned == 3

"""The sentiment corpus (streams.corpus): the shipped file, its errors, and when a suite learns it.

A fresh suite (replay, worker start) learns the corpus in file order, the same model in every
process; a suite or partition restored from a checkpoint is not taught it again."""

from __future__ import annotations

import asyncio
import pickle
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from online_models.suite import ModelConfig, ModelSuite
from processors.chain import JourneyChain
from processors.errors import ConfigError
from simulator.texts import labelled_corpus
from streams.app import PartitionState, _load_partition
from streams.corpus import (
    SHIPPED_CORPUS,
    corpus_path,
    new_model_suite,
    read_corpus,
    train_sentiment,
    write_corpus,
)
from streams.settings import load_settings
from tests.unit.test_chain_hold import CONFIG

GOOD = '{"text": "It keeps crashing", "label": "negative"}\n'


def _file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text(body)
    return path


def test_the_shipped_corpus_is_what_the_generator_writes() -> None:
    corpus = read_corpus(corpus_path(""))
    assert corpus_path("") == SHIPPED_CORPUS
    assert corpus == tuple(labelled_corpus(random.Random(7), 1_000))
    assert Counter(label for _, label in corpus) == {
        "negative": 1_000, "neutral": 1_000, "positive": 1_000}


def test_write_then_read_keeps_texts_labels_and_order(tmp_path: Path) -> None:
    pairs = [("Thanks, \"great\" work!\nReally.", "positive"), ("How do I export?", "neutral")]
    path = tmp_path / "c.jsonl"
    assert write_corpus(path, pairs) == 2
    assert read_corpus(path) == tuple(pairs)


@pytest.mark.parametrize(
    ("body", "line", "reason"),
    [
        (GOOD + "{not json\n", 2, "not JSON"),
        (GOOD + '["a", "negative"]\n', 2, "expected an object"),
        (GOOD + "\n" + '{"text": "ok", "label": "happy"}\n', 3, "unknown label 'happy'"),
        ('{"text": "ok"}\n', 1, "unknown label None"),
        ('{"text": "  ", "label": "neutral"}\n', 1, "`text` must be a non-empty string"),
        ('{"text": 3, "label": "neutral"}\n', 1, "`text` must be a non-empty string"),
    ],
)
def test_a_bad_line_names_the_file_the_line_and_the_reason(
    tmp_path: Path, body: str, line: int, reason: str
) -> None:
    path = _file(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        read_corpus(path)
    assert f"{str(path)!r} line {line}: {reason}" in str(err.value)


def test_an_empty_or_missing_corpus_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no labelled texts"):
        read_corpus(_file(tmp_path, "\n  \n"))
    with pytest.raises(ConfigError, match="cannot read it"):
        read_corpus(tmp_path / "missing.jsonl")


def test_the_setting_is_checked_when_the_settings_load(tmp_path: Path) -> None:
    bad = _file(tmp_path, GOOD + '{"text": "fine", "label": "happy"}\n')
    with pytest.raises(ConfigError) as err:
        load_settings(models={"sentiment_corpus": str(bad)})
    message = str(err.value)
    assert "models.sentiment_corpus" in message and "JOURNEYMAP_MODELS__SENTIMENT_CORPUS" in message
    assert f"{str(bad)!r} line 2: unknown label 'happy'" in message
    with pytest.raises(ConfigError, match="cannot read it"):
        load_settings(models={"sentiment_corpus": str(tmp_path / "missing.jsonl")})
    good = _file(tmp_path, GOOD)
    settings = load_settings(models={"sentiment_corpus": str(good)})
    assert settings.models.sentiment_corpus == str(good)
    assert load_settings().models.sentiment_corpus == ""


def _counts(suite: ModelSuite) -> tuple[dict[str, int], dict[Any, dict[str, float]]]:
    nb = suite.sentiment.nb
    return dict(nb.class_counts), {t: dict(row) for t, row in nb.feature_counts.items()}


def test_a_fresh_suite_learns_the_corpus_deterministically() -> None:
    a, b = new_model_suite(ModelConfig()), new_model_suite(ModelConfig())
    assert a.sentiment.n_learned == b.sentiment.n_learned == 3_000
    assert _counts(a) == _counts(b)
    texts = ["Billing keeps crashing. Please refund us.", "How do I add a user?",
             "Thanks a lot! The editor works great."]
    assert [a.sentiment.predict(t).label for t in texts] == ["negative", "neutral", "positive"]
    assert [a.sentiment.predict(t) for t in texts] == [b.sentiment.predict(t) for t in texts]
    untrained = ModelSuite(ModelConfig())
    assert untrained.sentiment.predict(texts[0]).label is None


def test_the_corpus_is_learned_in_file_order(tmp_path: Path) -> None:
    # the vocabulary cap keeps the first terms learned: the first line's, not the last line's
    corpus = read_corpus(SHIPPED_CORPUS)
    bow = ModelSuite(ModelConfig()).sentiment.pipeline["bow"]
    first_terms, last_terms = (set(bow.transform_one(corpus[i][0])) for i in (0, -1))
    capped = new_model_suite(ModelConfig(sentiment_max_vocab=100)).sentiment
    vocab = capped.pipeline["vocab"].vocab
    assert len(vocab) == 100 and first_terms <= vocab and not last_terms <= vocab
    reversed_path = tmp_path / "reversed.jsonl"
    write_corpus(reversed_path, reversed(corpus))
    backwards = new_model_suite(ModelConfig(sentiment_max_vocab=100), reversed_path).sentiment
    assert last_terms <= backwards.pipeline["vocab"].vocab


def test_a_restored_suite_is_not_taught_the_corpus_again() -> None:
    suite = new_model_suite(ModelConfig())
    before = _counts(suite)
    restored = ModelSuite.restore(suite.snapshot())
    assert restored.sentiment.n_learned == 3_000
    assert _counts(restored) == before


def test_a_worker_restoring_a_partition_does_not_retrain_its_models() -> None:
    part = PartitionState(JourneyChain(CONFIG))
    blob = pickle.dumps(part)
    models = new_model_suite(ModelConfig())
    before = _counts(models)
    runtime: Any = SimpleNamespace(
        settings=SimpleNamespace(kafka=SimpleNamespace(topics=SimpleNamespace(resolved="r"))),
        checkpoints=SimpleNamespace(load=lambda topic, p: (pickle.loads(blob), 41)),
        partitions={}, last_checkpoint={}, models=models,
        segment_of=lambda part, cid: "all",
    )
    loaded = asyncio.run(_load_partition(runtime, 0))
    assert loaded.offset == 41 and runtime.partitions[0] is loaded
    assert runtime.models is models and models.sentiment.n_learned == 3_000
    assert _counts(models) == before


def test_train_sentiment_adds_to_what_a_suite_knows() -> None:
    suite = ModelSuite(ModelConfig())
    train_sentiment(suite, [("Awful support.", "negative"), ("Great job, thanks!", "positive")])
    assert suite.sentiment.n_learned == 2
    assert suite.sentiment.predict("awful").label == "negative"


def test_the_models_settings_reach_the_model_config() -> None:
    from processors.config import ProcessingConfig
    from streams.replay import model_config
    from streams.settings import ModelsSettings

    off = model_config(ProcessingConfig(), ModelsSettings(watch_propensity_error=False,
                                                          propensity_error_min_fit=123))
    assert off.watch_propensity_error is False and off.propensity_error_min_fit == 123
    default = model_config(ProcessingConfig())
    assert default.watch_propensity_error is True and default.propensity_error_min_fit == 5_000
    with pytest.raises(ConfigError, match="JOURNEYMAP_MODELS__PROPENSITY_ERROR_MIN_FIT"):
        load_settings(models={"propensity_error_min_fit": -1})

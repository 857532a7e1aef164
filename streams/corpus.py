"""The sentiment model's training corpus: labelled support texts in a JSON Lines file.

One object a line, ``{"text": "...", "label": "negative" | "neutral" | "positive"}``. The
project ships one (``streams/sentiment_corpus.jsonl``, 1,000 texts per label, generated from
``simulator/texts.py`` with a fixed seed by ``scripts/gen-sentiment-corpus.py``); the
``models.sentiment_corpus`` setting names another. Reading it is I/O, so it lives here:
``online_models`` only receives the texts.

A suite built fresh (the replay, a worker at start) learns the corpus in file order, so every
process that builds one ends with the same sentiment model. A suite restored from a checkpoint
already holds what it learned and is not trained again (the counts would double).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import orjson

from online_models.sentiment import LABELS
from online_models.suite import ModelConfig, ModelSuite
from processors.errors import ConfigError

SHIPPED_CORPUS: Final = Path(__file__).resolve().parent / "sentiment_corpus.jsonl"

Corpus = tuple[tuple[str, str], ...]


def corpus_path(setting: str | Path) -> Path:
    """The file the `models.sentiment_corpus` setting names; "" is the shipped corpus."""
    return Path(setting) if str(setting) else SHIPPED_CORPUS


def read_corpus(path: Path) -> Corpus:
    """The (text, label) pairs of a corpus file, in file order. Blank lines are skipped.

    Raises ConfigError naming the file, the line and the reason: a missing or unreadable file,
    a line that is not a JSON object with a non-empty string `text` and a known `label`, or a
    file without any text.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"sentiment corpus {str(path)!r}: cannot read it "
                          f"({exc.strerror or exc})") from None
    pairs: list[tuple[str, str]] = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        pairs.append(_parse_line(path, n, line))
    if not pairs:
        raise ConfigError(f"sentiment corpus {str(path)!r}: no labelled texts in it; expected "
                          'one {"text": ..., "label": ...} object a line')
    return tuple(pairs)


def _parse_line(path: Path, n: int, line: bytes) -> tuple[str, str]:
    where = f"sentiment corpus {str(path)!r} line {n}"
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f'{where}: expected an object {{"text": ..., "label": ...}}, '
                          f"got {type(obj).__name__}")
    text, label = obj.get("text"), obj.get("label")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: `text` must be a non-empty string, got {text!r}")
    if label not in LABELS:
        raise ConfigError(f"{where}: unknown label {label!r}; expected one of "
                          + ", ".join(LABELS))
    return text, label


def write_corpus(path: Path, pairs: Iterable[tuple[str, str]]) -> int:
    """Write (text, label) pairs as a corpus file; returns the number of lines."""
    lines = [orjson.dumps({"text": text, "label": label}) for text, label in pairs]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(lines)


def train_sentiment(suite: ModelSuite, corpus: Sequence[tuple[str, str]]) -> None:
    """Teach the suite's sentiment model every text of the corpus, in order."""
    for text, label in corpus:
        suite.learn_sentiment(text, label)


def new_model_suite(config: ModelConfig, corpus: str | Path = "") -> ModelSuite:
    """A fresh ModelSuite whose sentiment model has learned the corpus the setting names."""
    suite = ModelSuite(config)
    train_sentiment(suite, read_corpus(corpus_path(corpus)))
    return suite


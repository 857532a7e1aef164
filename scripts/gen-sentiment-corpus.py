#!/usr/bin/env python
"""Write the shipped sentiment corpus, streams/sentiment_corpus.jsonl, from simulator/texts.py.

    python scripts/gen-sentiment-corpus.py            rewrite it (seed 7, 1,000 texts per label)
    python scripts/gen-sentiment-corpus.py --check    exit 1 when the file is not what it writes

Labels take turns (negative, neutral, positive, ...). Run once; the file is committed and is
package data, so an installed journeymap has it. The seed differs from the simulator's default
(1), but the texts come from the same templates and word lists as the simulated ones.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

from simulator.texts import labelled_corpus
from streams.corpus import SHIPPED_CORPUS, write_corpus

SEED = 7
N_PER_LABEL = 1_000


def main(argv: list[str]) -> int:
    pairs = labelled_corpus(random.Random(SEED), N_PER_LABEL)
    if "--check" in argv:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "corpus.jsonl"
            write_corpus(fresh, pairs)
            same = fresh.read_bytes() == SHIPPED_CORPUS.read_bytes()
        print(f"{SHIPPED_CORPUS}: {'up to date' if same else 'OUT OF DATE'}")
        return 0 if same else 1
    n = write_corpus(SHIPPED_CORPUS, pairs)
    print(f"wrote {n} labelled texts to {SHIPPED_CORPUS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`Lines`: the messages of one file or partition, decoded as their pairs are, sources made late.

The replay hands the chain each chunk of a file as :class:`processors.validation.Lines` instead of
a ``(raw, Source)`` pair per line. Whatever the engine, the events, their positions and the dead
letters (bytes, reason, source) must be exactly those of the pairs.
"""

from __future__ import annotations

import pytest

from processors import validation
from processors.chain import JourneyChain
from processors.config import DecodeConfig, ProcessingConfig
from processors.validation import Lines, Source, decode_events
from simulator.model import SimConfig, simulate
from tests.native_cores import require_native
from tests.unit.test_decode_batch import event

ENGINES = ["python", "native"]


def engine_ready(engine: str) -> None:
    if engine == "native":
        require_native(validation.NATIVE_AVAILABLE, validation.NATIVE_IMPORT_ERROR, "decode",
                       "scripts/build-native.sh")


def mixed() -> list[bytes]:
    """Good events with bad ones among them: broken JSON, a wrong field, not bytes at all."""
    raws: list = [event(i) for i in range(40)]
    raws[3] = b"{oops"
    raws[17] = event(17, channel="tv")
    raws[18] = b""
    raws[31] = "a str, not bytes"  # (what a careless caller might pass: a dead letter, no crash)
    return raws


@pytest.mark.parametrize("engine", ENGINES)
def test_lines_decode_exactly_as_their_pairs(engine: str) -> None:
    engine_ready(engine)
    raws = mixed()
    offsets = range(500, 540)
    lines = Lines(raws, "history.jsonl", 0, offsets)
    pairs = [(raw, Source("history.jsonl", 0, o)) for raw, o in zip(raws, offsets, strict=True)]
    events, at, dead = decode_events(lines, engine)
    want_events, want_at, want_dead = decode_events(pairs, engine)
    assert events == want_events
    assert list(at) == list(want_at) == [i for i in range(40) if i not in (3, 17, 18, 31)]
    assert dead == want_dead
    assert [d.source.offset for d in dead] == [503, 517, 518, 531]
    assert "channel" in dead[1].reason


@pytest.mark.parametrize("engine", ENGINES)
def test_a_batch_of_good_lines_makes_no_source(engine: str, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    engine_ready(engine)
    lines = Lines([event(i) for i in range(50)], "t", 1, range(50))
    # a Source made anywhere would fail: the accepted events need none
    monkeypatch.setattr(validation, "Source", None)
    events, at, dead = decode_events(lines, engine)
    assert [e.event_id for e in events] == [f"e{i}" for i in range(50)]
    assert list(at) == list(range(50)) and dead == []


def test_lines_are_the_pairs_they_stand_for() -> None:
    lines = Lines([b"a", b"b", b"c"], "touchpoints.raw", 3, [7, 8, 10])
    assert len(lines) == 3
    assert lines[2] == (b"c", Source("touchpoints.raw", 3, 10))
    assert lines[-1] == lines[2]
    assert lines[1:] == [(b"b", Source("touchpoints.raw", 3, 8)), lines[2]]
    assert list(lines) == [lines[0], lines[1], lines[2]]
    assert list(lines.sources) == [Source("touchpoints.raw", 3, o) for o in (7, 8, 10)]
    assert lines.sources[0:2] == [lines[0][1], lines[1][1]]
    with pytest.raises(IndexError):
        lines[3]
    assert Lines((b for b in [b"x"]), "t", 0, [1]).raws == [b"x"]  # any iterable of bytes


def test_lines_without_one_offset_each_are_refused() -> None:
    with pytest.raises(ValueError, match="3 messages but 2 offsets"):
        Lines([b"a", b"b", b"c"], "t", 0, [1, 2])


@pytest.mark.parametrize("engine", ENGINES)
def test_the_chain_over_lines_equals_the_chain_over_pairs(engine: str) -> None:
    engine_ready(engine)
    raws = simulate(SimConfig(customers=80, seed=5)).lines
    raws[10] = b'{"event_id": "broken"'
    config = ProcessingConfig(decode=DecodeConfig(engine=engine))
    outs = []
    for make in (
        lambda part, start: Lines(part, "f.jsonl", 0, range(start, start + len(part))),
        lambda part, start: [(raw, Source("f.jsonl", 0, start + i)) for i, raw in enumerate(part)],
    ):
        chain = JourneyChain(config)
        outs.append([chain.process(make(raws[i:i + 150], i)) for i in range(0, len(raws), 150)]
                    + [chain.finish()])
    by_lines, by_pairs = outs
    assert [o.counters() for o in by_lines] == [o.counters() for o in by_pairs]
    assert [o.dead for o in by_lines] == [o.dead for o in by_pairs]
    assert by_lines[0].dead[0].source == Source("f.jsonl", 0, 10)
    assert [o.cells for o in by_lines] == [o.cells for o in by_pairs]

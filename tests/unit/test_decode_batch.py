"""decode_batch: one Rust call for a valid batch, and exactly `decode`'s answer for each message."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from processors import validation
from processors.validation import Accepted, DeadLetter, Source, decode, decode_batch
from tests.unit.test_events import GOOD


def event(i: int, **changes: object) -> bytes:
    return orjson.dumps({**GOOD, "event_id": f"e{i}", **changes})


def positioned(messages: list[bytes], topic: str = "touchpoints.raw") -> list[tuple[bytes, Source]]:
    return [(raw, Source(topic, 2, 100 + i)) for i, raw in enumerate(messages)]


def one_by_one(messages: list[tuple[bytes, Source]]) -> tuple[list[Accepted], list[DeadLetter]]:
    results = [decode(raw, source) for raw, source in messages]
    return (
        [r for r in results if isinstance(r, Accepted)],
        [r for r in results if isinstance(r, DeadLetter)],
    )


def test_one_bad_line_in_the_middle_is_dead_lettered_with_its_own_position() -> None:
    messages = [event(i) for i in range(1000)]
    messages[517] = event(517, channel="tv")
    accepted, dead = decode_batch(positioned(messages))
    assert len(accepted) == 999
    assert [a.source.offset for a in accepted] == [100 + i for i in range(1000) if i != 517]
    assert [a.event.event_id for a in accepted] == [f"e{i}" for i in range(1000) if i != 517]
    assert len(dead) == 1
    letter = dead[0]
    assert letter.source == Source("touchpoints.raw", 2, 617)
    assert letter.raw == messages[517]
    assert "channel" in letter.reason
    assert letter == decode(messages[517], Source("touchpoints.raw", 2, 617))


def test_a_valid_batch_is_validated_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = validation._validate_many

    def counting(raws: list[bytes]) -> object:
        calls.append(len(raws))
        return real(raws)

    monkeypatch.setattr(validation, "_validate_many", counting)
    monkeypatch.setattr(validation, "_decode_python", lambda *a: pytest.fail("slow path used"))
    # (the Python engine's batching; the native one: tests/unit/test_decode_native.py)
    accepted, dead = decode_batch(positioned([event(i) for i in range(300)]), "python")
    assert calls == [300]
    assert len(accepted) == 300 and not dead


@pytest.mark.parametrize(
    "bad",
    [
        # Messages that are not one JSON value, but could pass as several (or as part of one)
        # once joined: the separators must catch them.
        [event(90) + b"," + event(91)],
        [event(90)[:-1] + b',"text":"', b'"}'],
        [event(90)[:-1] + b',"text":"', b'"}', event(91) + b"," + event(92)],
        # ... and with a guessed separator between the glued events, so everything lines up
        # again: only a separator nobody can guess catches this one.
        [event(90)[:-1] + b',"text":"', b'"}', event(91) + b",0," + event(92)],
        [event(90)[:-1] + b',"text":"', b'"}', event(91) + b",1," + event(92)],
        [b""],
        [b"   "],
        [b"]"],
        [b"[" + event(90)],
        [b"5"],
        [b"null"],
        [b"1,2"],
        [event(90) + b"]"],
        [b"\xff\xfe"],
        [event(90, occurred_at="2026-03-01T12:00:00")],
        [event(90, identities={})],
        [event(90, utm_source="x")],
    ],
)
def test_tricky_messages_get_exactly_decodes_answer(bad: list[bytes]) -> None:
    messages = [event(i) for i in range(20)]
    messages[7:7] = bad
    batch = positioned(messages)
    assert decode_batch(batch) == one_by_one(batch)


def test_separator_numbers_in_messages_do_not_fool_the_join() -> None:
    # Messages that are bare numbers or carry number lists sit where separators would.
    messages = [event(0), b"0", event(1), b"1,2,3", event(2, properties={"n": 12345})]
    batch = positioned(messages)
    assert decode_batch(batch) == one_by_one(batch)
    assert [a.event.event_id for a in decode_batch(batch)[0]] == ["e0", "e1", "e2"]


def test_many_bad_messages_and_the_edges() -> None:
    messages = [event(i) if i % 3 else b"{oops" for i in range(100)]
    batch = positioned(messages)
    assert decode_batch(batch) == one_by_one(batch)
    assert decode_batch([]) == ([], [])
    assert decode_batch(batch[:1]) == one_by_one(batch[:1])
    assert decode_batch(batch[1:2]) == one_by_one(batch[1:2])


def test_events_from_the_batch_equal_events_from_decode() -> None:
    messages = [
        event(0, occurred_at=1_700_000_000_123),
        event(1, identities={"email": " Ana@Example.com ", "user_id": "u-1"}),
        event(2, revenue=12.5, properties={"plan": "pro", "seats": 3, "x": None}, text="hi"),
    ]
    accepted, _ = decode_batch(positioned(messages))
    expected, _ = one_by_one(positioned(messages))
    assert accepted == expected
    assert [a.event.ts_ms for a in accepted] == [e.event.ts_ms for e in expected]


def test_invalid_events_cost_two_batch_calls_and_one_decode_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    decoded: list[bytes] = []
    real_many, real_decode = validation._validate_many, validation._decode_python

    def counting_many(raws: list[bytes]) -> object:
        calls.append(len(raws))
        return real_many(raws)

    def counting_decode(raw: bytes, source: Source) -> object:
        decoded.append(raw)
        return real_decode(raw, source)

    monkeypatch.setattr(validation, "_validate_many", counting_many)
    monkeypatch.setattr(validation, "_decode_python", counting_decode)
    messages = [event(i) for i in range(500)]
    bad = {3: event(3, channel="tv"), 250: event(250, identities={}), 499: event(499, x=1)}
    for i, raw in bad.items():
        messages[i] = raw
    batch = positioned(messages)
    accepted, dead = decode_batch(batch, "python")
    assert calls == [500, 497]
    assert sorted(decoded) == sorted(bad.values())
    assert [d.source.offset for d in dead] == [103, 350, 599]
    assert (accepted, dead) == one_by_one(batch)


def test_the_collector_is_back_on_after_a_batch_even_a_failing_one() -> None:
    import gc

    decode_batch(positioned([event(0), b"{oops", event(1)]))
    assert gc.isenabled()
    gc.disable()
    try:
        decode_batch(positioned([event(0)]))
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def test_chunk_sizes_are_powers_of_two_that_add_up() -> None:
    for n in [*range(0, 70), 1000, 1023, 1024, 1025, 3000]:
        sizes = validation._chunk_sizes(n)
        assert sum(sizes) == n
        assert all(s & (s - 1) == 0 and 0 < s <= validation._MAX_CHUNK for s in sizes)
        assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("at", [1022, 1023, 1024, 1026, 1027])
def test_messages_that_fool_a_join_at_a_chunk_edge(at: int) -> None:
    # 1030 messages are validated as chunks of 1024, 4 and 2: put the string that one message
    # opens and the next closes, and two glued events, across and next to those edges.
    messages = [event(i) for i in range(1030)]
    messages[at] = event(at)[:-1] + b',"text":"'
    messages[at + 1] = b'"}'
    messages[at - 3] = event(at - 3) + b"," + event(at + 1000)
    batch = positioned(messages)
    result = decode_batch(batch)
    assert result == one_by_one(batch)
    assert [d.source.offset for d in result[1]] == [100 + at - 3, 100 + at, 100 + at + 1]


def test_a_place_missing_at_the_end_is_not_taken_for_an_items_error() -> None:
    # The third message opens a string the fourth closes (swallowing a separator), and the
    # fourth adds a number: every place up to the last lines up, and only the tuple's last
    # place is missing, which says nothing about the fourth message itself.
    messages = [event(0), event(1), event(2)[:-1] + b',"text":"', b'"},5']
    with pytest.raises(ValidationError) as caught:
        validation._INTERLEAVED[4].validate_json(b"[" + b",42,".join(messages) + b"]")
    assert [(e["type"], e["loc"]) for e in caught.value.errors()] == [("missing", (6,))]
    assert validation._validate_many(messages) == set()
    batch = positioned(messages)
    assert decode_batch(batch) == one_by_one(batch)

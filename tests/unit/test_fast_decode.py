"""The fast decode path accepts only what the event model accepts, with equal events.

`processors.events.fast_event_schema` decides `occurred_at` in Rust where it can; anything it
rejects goes to the model (`decode`). So it must never accept more than the model, and what it
accepts must be the same event. Dead-letter reasons are the model's (tests/unit/test_events.py).
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import SchemaValidator, core_schema

from processors.events import _NATIVE_EPOCH_MS, _NOT_NUMERIC, _NUMERIC
from processors.validation import (
    _EVENT_ADAPTER,
    _FAST_EVENT,
    _INTERLEAVED,
    Accepted,
    Source,
    _accept_all,
    _filled,
    decode,
    decode_batch,
    decode_lines,
    sources_at,
    sources_of,
)
from tests.unit.test_events import GOOD

_GUARD = SchemaValidator(core_schema.str_schema(pattern=_NOT_NUMERIC))
# Python's `\s` (str.isspace), which _NUMERIC uses; Rust's `\s` lacks \x1c-\x1f.
_PY_SPACES = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())


def guard_matches(text: str) -> bool:
    try:
        _GUARD.validate_python(text)
    except ValidationError:
        return False
    return True


def both(message: bytes) -> tuple[object, object]:
    """(fast result, model result): an event or None when rejected."""
    out: list[object] = []
    for validator in (_FAST_EVENT, _EVENT_ADAPTER):
        try:
            out.append(validator.validate_json(message))
        except ValidationError:
            out.append(None)
    return out[0], out[1]


def with_time(value: object) -> bytes:
    """GOOD with this `occurred_at`; integers of any size go in as raw JSON numbers."""
    if isinstance(value, int) and not isinstance(value, bool):
        body = orjson.dumps({**GOOD, "occurred_at": "PLACEHOLDER"})
        return body.replace(b'"PLACEHOLDER"', str(value).encode())
    return orjson.dumps({**GOOD, "occurred_at": value})


def assert_fast_is_sound(message: bytes) -> None:
    fast, model = both(message)
    if fast is not None:
        assert model is not None, message
        assert fast == model
        assert fast.model_fields_set == model.model_fields_set  # type: ignore[attr-defined]
        assert fast.ts_ms == model.ts_ms  # type: ignore[attr-defined]
        assert fast.model_dump_json() == model.model_dump_json()  # type: ignore[attr-defined]
        assert fast.occurred_at.utcoffset() == model.occurred_at.utcoffset()  # type: ignore[attr-defined]


@pytest.mark.parametrize("char", list(_PY_SPACES) + [chr(c) for c in range(128)])
def test_the_guard_never_lets_a_number_through(char: str) -> None:
    for text in (char, char + "17", "17" + char, "1" + char + "7", char + "1.7e12" + char):
        if guard_matches(text):
            assert not _NUMERIC.match(text), repr(text)


numberish = st.text(alphabet=st.sampled_from([*"0123456789.eE+-", *_PY_SPACES[:12], "T", ":", "Z"]))


@settings(max_examples=500, deadline=None)
@given(numberish | st.text(max_size=12))
def test_the_guard_is_the_complement_of_numeric(text: str) -> None:
    if guard_matches(text):
        assert not _NUMERIC.match(text)
    elif text.strip(_PY_SPACES):  # not blank: then it is a number to _NUMERIC
        assert _NUMERIC.match(text)


low, high = _NATIVE_EPOCH_MS
epoch_ms = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(low - 3, low + 3),
    st.integers(high - 3, high + 3),
    st.integers(low, high),
    st.integers(-(10**12), 10**12),
    st.sampled_from([253_402_300_799_999, 253_402_300_800_000, -62_135_596_800_000, 0, -1]),
)
timestamps = st.builds(
    lambda d, frac, off: f"2026-03-{d:02d}T12:00:00{frac}{off}",
    st.integers(1, 28),
    st.sampled_from(["", ".1", ".123", ".123456", ".1234567"]),
    st.sampled_from(["", "Z", "z", "+02:00", "-05:30", "+0200", " Z", "+24:00"]),
)
odd = st.one_of(
    numberish,
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.just("1700000000000"),
    st.just(" 1700000000000 "),
    st.just("\x1c1700000000000"),
    st.just("2026-03-01"),
)


@settings(max_examples=600, deadline=None)
@given(epoch_ms | timestamps | odd)
def test_fast_path_accepts_only_what_the_model_accepts_and_the_same_event(value: object) -> None:
    assert_fast_is_sound(with_time(value))


@settings(max_examples=200, deadline=None)
@given(st.integers(low + 1, high - 1))
def test_epoch_ms_in_the_native_range_is_taken_by_the_fast_path(value: int) -> None:
    fast, model = both(with_time(value))
    assert fast is not None and fast == model
    exact = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
    assert fast.occurred_at == exact  # type: ignore[attr-defined]


def test_the_fast_path_is_really_in_use() -> None:
    """pydantic-core would silently reuse the model's own validator (see _fast_validator): then
    every epoch-ms value would come back through the Python rule, with `datetime.UTC`."""
    event = _FAST_EVENT.validate_json(orjson.dumps({**GOOD, "occurred_at": 1_772_000_000_123}))
    assert event.occurred_at.tzinfo is not UTC
    assert (
        _EVENT_ADAPTER.validate_json(
            orjson.dumps({**GOOD, "occurred_at": 1_772_000_000_123})
        ).occurred_at.tzinfo
        is UTC
    )
    # ... and so would every batch validator, whose schemas name the model class too.
    raw = orjson.dumps({**GOOD, "occurred_at": 1_772_000_000_123})
    for size in (1, 2, 1024):
        joined = b"[" + b",7,".join([raw] * size) + b"]"
        assert _INTERLEAVED[size].validate_json(joined)[0].occurred_at.tzinfo is not UTC


def test_what_the_fast_path_rejects_the_model_still_decides() -> None:
    # Below 2e10 pydantic-core would read seconds; the model reads milliseconds.
    result = decode(orjson.dumps({**GOOD, "occurred_at": 1_700_000_000}))
    assert isinstance(result, Accepted) and result.event.ts_ms == 1_700_000_000
    # Explicit nulls and odd identities still get the model's answer and reason.
    nulls = orjson.dumps({**GOOD, "identities": {"email": None, "crm_id": "c"}})
    assert isinstance(decode(nulls), Accepted)


# Identities objects as JSON text: known and unknown keys, odd values, repeated keys.
identity_values = st.one_of(
    st.text(max_size=3),
    st.sampled_from(["", "x" * 512, "x" * 513]),
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.just([]),
    st.just({}),
)
identity_pairs = st.lists(
    st.tuples(st.sampled_from(["anonymous_id", "device_id", "user_id", "email", "crm_id", "x"]),
              identity_values),
    max_size=6,
)


@settings(max_examples=600, deadline=None)
@given(identity_pairs)
def test_fast_identities_are_a_subset_of_the_model_with_equal_values(
    pairs: list[tuple[str, object]],
) -> None:
    body = b"{" + b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in pairs) + b"}"
    message = orjson.dumps({**GOOD, "identities": "PLACEHOLDER"}).replace(b'"PLACEHOLDER"', body)
    assert_fast_is_sound(message)
    fast, model = both(message)
    if fast is not None:
        assert type(fast.identities) is type(model.identities)  # type: ignore[attr-defined]
        assert fast.identities.items() == model.identities.items()  # type: ignore[attr-defined]
    # and the batch form decides exactly as `decode` does
    batch = [orjson.dumps(GOOD), message, orjson.dumps({**GOOD, "event_id": "e-2"})]
    accepted, dead = decode_batch(zip(batch, sources_at("t", 0, range(3)), strict=True))
    each = [decode(m, Source("t", 0, i)) for i, m in enumerate(batch)]
    assert accepted == [r for r in each if isinstance(r, Accepted)]
    assert dead == [r for r in each if not isinstance(r, Accepted)]


def test_accept_all_makes_ordinary_frozen_accepted() -> None:
    events = [_FAST_EVENT.validate_json(orjson.dumps({**GOOD, "event_id": f"e{i}"})) for i in "abc"]
    sources = [Source("t", 0, i) for i in range(3)]
    made = _accept_all(events, sources)
    expected = [Accepted(e, s) for e, s in zip(events, sources, strict=True)]
    assert made == expected
    assert list(map(hash, made)) == list(map(hash, expected))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made[0].event = events[1]  # type: ignore[misc]


def test_sources_at_makes_ordinary_frozen_sources() -> None:
    made = sources_at("f.jsonl", 0, range(7, 10))
    expected = [Source("f.jsonl", 0, offset) for offset in range(7, 10)]
    assert made == expected
    assert list(map(hash, made)) == list(map(hash, expected))
    assert sources_at("t", 3, []) == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        made[0].offset = 1  # type: ignore[misc]
    with pytest.raises(TypeError, match="exactly the columns"):
        _filled(Source, 1, {"topic": ["t"], "offset": [1]})  # a field left unset


def test_sources_of_gives_each_message_its_own_position() -> None:
    """The ingest agent's positions: runs of one topic and partition, in any interleaving."""

    @dataclasses.dataclass
    class Message:
        topic: str
        partition: int
        offset: int

    places = [("a", 0, 5), ("a", 0, 6), ("a", 1, 2), ("a", 0, 7), ("b", 0, 9), ("b", 1, 3)]
    messages = [Message(*place) for place in places]
    made = sources_of(messages)
    assert made == [Source(*place) for place in places]
    assert all(type(s) is Source for s in made)
    assert sources_of([]) == []
    assert sources_of(messages[:1]) == [Source("a", 0, 5)]


def test_decode_lines_gives_each_line_its_file_and_number() -> None:
    lines = [orjson.dumps({**GOOD, "event_id": f"e{i}"}) for i in range(3)] + [b"{oops"]
    accepted, dead = decode_lines(lines, "day.jsonl", first_line=41)
    assert [a.source for a in accepted] == [Source("day.jsonl", 0, n) for n in (41, 42, 43)]
    assert [d.source for d in dead] == [Source("day.jsonl", 0, 44)]

"""Every input ends accepted or dead-lettered; none raises (hypothesis-generated garbage)."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.validation import Accepted, DeadLetter, decode

GOOD = {
    "event_id": "e-1",
    "occurred_at": "2026-03-01T12:00:00Z",
    "channel": "web",
    "touchpoint": "pricing_page",
    "identities": {"anonymous_id": "a-1"},
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _check(message: bytes) -> None:
    result = decode(message)
    assert isinstance(result, Accepted | DeadLetter)
    if isinstance(result, DeadLetter):
        assert result.reason
        assert result.raw == message
        orjson.loads(result.to_json())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(message: bytes) -> None:
    _check(message)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(orjson.dumps(GOOD))))
def test_truncated_json(cut: int) -> None:
    _check(orjson.dumps(GOOD)[:cut])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD)), json_values)
def test_any_field_with_any_json_value(field: str, value: object) -> None:
    _check(orjson.dumps({**GOOD, field: value}))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(GOOD), "x", "revenue", "text"]), json_values))
def test_random_objects(body: dict[str, object]) -> None:
    _check(orjson.dumps(body))


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["touchpoint", "event_id", "text", "session_id"]),
    st.integers(min_value=0, max_value=200_000),
)
def test_huge_strings(field: str, size: int) -> None:
    _check(orjson.dumps({**GOOD, field: "x" * size}))


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=20))
def test_invalid_utf8_inside_a_string(junk: bytes) -> None:
    message = orjson.dumps(GOOD).replace(b"pricing_page", b"pricing" + junk)
    _check(message)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["anonymous_id", "device_id", "user_id", "email", "crm_id"]),
        st.none() | st.text(max_size=3) | st.integers(-(2**63), 2**63),
    )
)
def test_missing_or_odd_identities(identities: dict[str, object]) -> None:
    _check(orjson.dumps({**GOOD, "identities": identities}))


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["occurred_at", "revenue", "event_id", "channel"]),
    st.integers(min_value=-(10**40), max_value=10**40),
)
def test_integers_of_any_size_in_the_raw_json(field: str, number: int) -> None:
    body = orjson.dumps({**GOOD, field: "PLACEHOLDER"})
    _check(body.replace(b'"PLACEHOLDER"', str(number).encode()))

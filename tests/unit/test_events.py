"""The event contract: what is accepted, and what is dead-lettered with which reason."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest

from processors.events import TouchpointEvent
from processors.validation import Accepted, DeadLetter, Source, decode, decode_batch

GOOD = {
    "event_id": "e-1",
    "occurred_at": "2026-03-01T12:00:00.123Z",
    "channel": "web",
    "touchpoint": "pricing_page",
    "identities": {"anonymous_id": "a-1"},
}


def raw(**changes: object) -> bytes:
    body = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def dead(message: bytes) -> DeadLetter:
    result = decode(message, Source("touchpoints.raw", 3, 42))
    assert isinstance(result, DeadLetter), result
    return result


def test_minimal_event_is_accepted_with_utc_millis() -> None:
    result = decode(raw())
    assert isinstance(result, Accepted)
    assert result.event.ts_ms == int(datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp() * 1000) + 123


def test_epoch_milliseconds_are_milliseconds_never_seconds() -> None:
    result = decode(raw(occurred_at=1_700_000_000_000))
    assert isinstance(result, Accepted)
    assert result.event.ts_ms == 1_700_000_000_000
    small = decode(raw(occurred_at=1_700_000_000))  # seconds by mistake: 1970-01-20, still ms
    assert isinstance(small, Accepted) and small.event.ts_ms == 1_700_000_000


def test_full_event_round_trips() -> None:
    message = raw(
        session_id="s-9",
        revenue=49.5,
        text="The export button is broken",
        properties={"plan": "pro", "seats": 3, "trial": True, "ref": None, "ratio": 0.5},
        identities={"email": " Ana@Example.com ", "crm_id": "crm-7", "user_id": "u-1"},
        channel="support",
    )
    result = decode(message)
    assert isinstance(result, Accepted)
    again = TouchpointEvent.model_validate_json(result.event.model_dump_json())
    assert again == result.event
    assert result.event.identities.items() == [
        ("user_id", "u-1"),
        ("email", " Ana@Example.com "),
        ("crm_id", "crm-7"),
    ]


@pytest.mark.parametrize(
    ("message", "reason_part"),
    [
        (raw(occurred_at="2026-03-01T12:00:00"), "occurred_at"),
        (raw(occurred_at=1.7e12), "integer epoch milliseconds"),
        (raw(occurred_at="1700000000000"), "integer epoch milliseconds"),
        (raw(occurred_at=True), "integer epoch milliseconds"),
        (raw(channel="tv"), "channel"),
        (raw(touchpoint="Pricing Page"), "touchpoint"),
        (raw(touchpoint="x" * 65), "touchpoint"),
        (raw(event_id=""), "event_id"),
        (raw(event_id="e" * 129), "event_id"),
        (raw(identities={}), "at least one of anonymous_id"),
        (raw(identities={"cookie": "x"}), "unknown field 'identities.cookie'"),
        (raw(identities=...), "identities: Field required"),
        (raw(revenue=-1), "revenue"),
        (raw(text="x" * 10_001), "text"),
        (raw(properties={f"k{i}": i for i in range(51)}), "at most 50"),
        (raw(properties={"nested": {"a": 1}}), "properties.nested"),
        (raw(utm_source="newsletter"), "unknown field 'utm_source'"),
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b"null", "not a JSON object"),
    ],
)
def test_bad_events_are_dead_lettered_with_a_reason(message: bytes, reason_part: str) -> None:
    letter = dead(message)
    assert reason_part in letter.reason
    record = letter.to_record()
    assert base64.b64decode(record["raw_b64"]) == message  # the original bytes, untouched
    assert record["source"] == {"topic": "touchpoints.raw", "partition": 3, "offset": 42}
    orjson.loads(letter.to_json())  # the record itself is valid JSON


def test_nan_revenue_is_rejected() -> None:
    message = raw().replace(b'"identities"', b'"revenue":NaN,"identities"')
    assert "revenue" in dead(message).reason or "JSON" in dead(message).reason


def test_huge_inputs_are_truncated_in_the_error_but_kept_in_raw() -> None:
    message = raw(touchpoint="x" * 1_000_000)
    letter = dead(message)
    shown = letter.errors[0]["input"]
    assert len(shown) <= 201
    assert base64.b64decode(letter.to_record()["raw_b64"]) == message


def test_decode_batch_keeps_order_and_loses_nothing() -> None:
    messages = [(raw(event_id=f"e{i}"), Source("t", 0, i)) for i in range(5)]
    messages.insert(2, (b"oops", Source("t", 0, 99)))
    accepted, dead_letters = decode_batch(messages)
    assert [a.event.event_id for a in accepted] == ["e0", "e1", "e2", "e3", "e4"]
    assert [d.source.offset for d in dead_letters] == [99]


def test_identities_read_as_attributes_and_as_a_read_only_mapping() -> None:
    """`Identities` is a dict of the kinds present (since the sixth decode pass, issue 2)."""
    import copy
    import pickle

    from processors.events import Identities

    message = raw(identities={"email": "a@x.io", "anonymous_id": "a-1"})
    event = decode(message).event  # type: ignore[union-attr]
    model = TouchpointEvent.model_validate_json(message)
    ids = event.identities
    assert type(ids) is Identities and type(model.identities) is Identities
    assert (ids.anonymous_id, ids.device_id, ids.user_id, ids.email, ids.crm_id) == (
        "a-1", None, None, "a@x.io", None
    )
    assert ids.items() == [("anonymous_id", "a-1"), ("email", "a@x.io")]  # kind order
    assert ids == model.identities == {"anonymous_id": "a-1", "email": "a@x.io"}
    assert hash(ids) == hash(model.identities) and hash(event) == hash(model)
    assert repr(ids) == (
        "Identities(anonymous_id='a-1', device_id=None, user_id=None, email='a@x.io', crm_id=None)"
    )
    for change in (
        lambda: ids.__setitem__("email", "b"),
        lambda: ids.__delitem__("email"),
        lambda: ids.update(email="b"),
        lambda: ids.pop("email"),
        lambda: ids.setdefault("crm_id", "c"),
        ids.clear,
        ids.popitem,
    ):
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert ids.email == "a@x.io"
    assert pickle.loads(pickle.dumps(event)) == event
    assert copy.deepcopy(event) == event
    # serialized with all five kinds, absent ones as null, as the model did
    assert orjson.loads(event.model_dump_json())["identities"] == {
        "anonymous_id": "a-1", "device_id": None, "user_id": None, "email": "a@x.io",
        "crm_id": None,
    }
    assert event.model_dump()["identities"]["device_id"] is None
    assert TouchpointEvent.model_validate({**GOOD, "identities": ids}) == event
    # explicit nulls are absent kinds
    nulls = decode(raw(identities={"email": None, "crm_id": "c"})).event  # type: ignore[union-attr]
    assert nulls.identities == {"crm_id": "c"} and nulls.identities.email is None


# A ResolvedEvent pickled by the tree before the sixth decode pass (Identities a pydantic model),
# as a checkpoint written then holds it: identities a-1 / a@x.io, customer c-1.
_OLD_PICKLE = (
    "gAWVZQIAAAAAAACMEXByb2Nlc3NvcnMuZXZlbnRzlIwNUmVzb2x2ZWRFdmVudJSTlCmBlE59lCiMC2N1c3RvbWVy"
    "X2lklIwDYy0xlIwFZXZlbnSUaACMD1RvdWNocG9pbnRFdmVudJSTlCmBlH2UKIwIX19kaWN0X1+UfZQojAhldmVu"
    "dF9pZJSMA2UtMZSMC29jY3VycmVkX2F0lIwIZGF0ZXRpbWWUjAhkYXRldGltZZSTlEMKB+oDAQwAAAHgeJSMHHB5"
    "ZGFudGljX2NvcmUuX3B5ZGFudGljX2NvcmWUjAZUekluZm+Uk5RLAIWUUpSGlFKUjAdjaGFubmVslIwDd2VilIwK"
    "dG91Y2hwb2ludJSMDHByaWNpbmdfcGFnZZSMCmlkZW50aXRpZXOUaACMCklkZW50aXRpZXOUk5QpgZR9lChoDH2U"
    "KIwMYW5vbnltb3VzX2lklIwDYS0xlIwJZGV2aWNlX2lklE6MB3VzZXJfaWSUTowFZW1haWyUjAZhQHguaW+UjAZj"
    "cm1faWSUTnWMEl9fcHlkYW50aWNfZXh0cmFfX5ROjBdfX3B5ZGFudGljX2ZpZWxkc19zZXRfX5SPlChoJmgqkIwU"
    "X19weWRhbnRpY19wcml2YXRlX1+UTnVijApzZXNzaW9uX2lklE6MB3JldmVudWWUTowEdGV4dJROjApwcm9wZXJ0"
    "aWVzlE6MDnNjaGVtYV92ZXJzaW9ulEsBjAV0c19tc5SKBnsKRamcAXVoLU5oLo+UKGgOaBBoIGgcaB6QaDBOdWKM"
    "B3NlZ21lbnSUjANhbGyUaDaKBnsKRamcAXWGlGIu"
)


def test_events_pickled_when_identities_was_a_model_still_load() -> None:
    import pickle

    from processors.events import Identities

    old = pickle.loads(base64.b64decode(_OLD_PICKLE))
    assert type(old.event.identities) is Identities
    assert old.event.identities == {"anonymous_id": "a-1", "email": "a@x.io"}
    assert old.customer_id == "c-1"
    message = raw(event_id="e-1", identities={"email": "a@x.io", "anonymous_id": "a-1"})
    assert old.event == decode(message).event  # type: ignore[union-attr]

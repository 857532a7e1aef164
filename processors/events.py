"""The one touchpoint event schema: the contract every producer depends on.

One JSON object per Kafka message, validated here and nowhere else. Decoding happens once, at the
edge (:func:`processors.validation.decode`); processors only ever see :class:`TouchpointEvent`.

The models are frozen and reject unknown fields: an unexpected top-level field is almost always a
producer bug, and silently dropping it would hide that bug.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timezone, tzinfo
from functools import cached_property
from itertools import repeat
from operator import attrgetter, itemgetter, setitem
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StringConstraints,
    model_validator,
)
from pydantic_core import CoreSchema, TzInfo, core_schema

SCHEMA_VERSION: Final = 1

CHANNELS: Final = ("web", "app", "email", "support", "sales", "social", "ads", "other")
Channel = Literal["web", "app", "email", "support", "sales", "social", "ads", "other"]

IDENTITY_KINDS: Final = ("anonymous_id", "device_id", "user_id", "email", "crm_id")
IdentityKind = Literal["anonymous_id", "device_id", "user_id", "email", "crm_id"]

MAX_IDENTIFIER_CHARS: Final = 512
MAX_TEXT_CHARS: Final = 10_000
MAX_PROPERTIES: Final = 50
TOUCHPOINT_PATTERN: Final = r"^[a-z][a-z0-9_]{0,63}$"


_TIME_FORMS: Final = (
    "occurred_at must be an RFC 3339 timestamp with offset (2026-03-01T12:00:00.123Z) "
    "or integer epoch milliseconds"
)
_NUMERIC: Final = re.compile(r"^\s*[-+]?[0-9.eE+-]+\s*$")
# The complement of _NUMERIC for the Rust regex engine (searched, not anchored): a character a
# number never has, or whitespace between two characters. \x1c-\x1f are whitespace to Python's
# `\s` but not to Rust's. Whatever this matches, _NUMERIC does not (tests/unit/test_fast_decode.py).
_NOT_NUMERIC: Final = r"[^0-9.eE+\-\s\x1c-\x1f]|[^\s\x1c-\x1f][\s\x1c-\x1f]+[^\s\x1c-\x1f]"
# Epoch milliseconds that pydantic-core turns into the same datetime as _epoch_ms_to_datetime:
# above 2e10 it reads an integer as milliseconds (below, as seconds), and below 2**33 seconds
# `value / 1000` is exact to the microsecond (later, the float division drifts by microseconds).
_NATIVE_EPOCH_MS: Final = (20_000_000_000, 2**33 * 1000)


def _epoch_ms_to_datetime(value: Any) -> Any:
    """Integers are epoch milliseconds (never seconds: the contract says so, no guessing)."""
    if isinstance(value, bool):
        raise ValueError(_TIME_FORMS)
    if isinstance(value, int):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"epoch milliseconds {value} is out of range") from exc
    if isinstance(value, float) or (isinstance(value, str) and _NUMERIC.match(value)):
        # pydantic would guess seconds or milliseconds from the magnitude; the contract does not.
        raise ValueError(_TIME_FORMS)
    return value


EventTime = Annotated[AwareDatetime, BeforeValidator(_epoch_ms_to_datetime)]
IdentifierValue = Annotated[str, StringConstraints(min_length=1, max_length=MAX_IDENTIFIER_CHARS)]
PropertyValue = str | int | float | bool | None


class _computed_once(cached_property):
    """`functools.cached_property` without its per-instance lock (Python 3.11 takes a lock on
    every first read, which costs more than computing `ts_ms`). The value still goes into the
    instance dict on first read, so later reads are plain attribute reads."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = self.func(instance)
        instance.__dict__[self.attrname] = value
        return value


class _rules:  # a namespace: the model below is still named "Identities" in error texts
    class Identities(BaseModel):
        """The rules of `identities` and their error texts: a model until the sixth decode
        pass, now only the validator of :class:`processors.events.Identities`."""

        model_config = ConfigDict(frozen=True, extra="forbid")

        anonymous_id: IdentifierValue | None = None
        device_id: IdentifierValue | None = None
        user_id: IdentifierValue | None = None
        email: IdentifierValue | None = None
        crm_id: IdentifierValue | None = None

        @model_validator(mode="after")
        def _at_least_one(self) -> _rules.Identities:
            if (
                self.anonymous_id is None
                and self.device_id is None
                and self.user_id is None
                and self.email is None
                and self.crm_id is None
            ):
                raise ValueError(
                    "identities needs at least one of anonymous_id, device_id, user_id, email, "
                    "crm_id"
                )
            return self


class Identities(dict[str, str]):
    """The identifiers one event carries. Several together say they are the same customer.

    A read-only mapping from each kind present to its identifier (at least one; no `None`
    values), and every kind reads as an attribute too, `None` when absent
    (`event.identities.email`). :meth:`items` is in kind order; the mapping's own order is the
    message's. Equal to any mapping with the same entries; hashable. Serialized with all five
    kinds, absent ones as null, as before.

    A dict rather than a nested model: pydantic-core builds it from the JSON object, checks
    included, with one C call (see :func:`fast_event_schema`), where the model cost ~4k
    instructions per event (an instance, a five-key `__dict__`, a fields set, a Python check).
    The rules and error texts are the model's (`_rules.Identities`).
    """

    __slots__ = ()

    @property
    def anonymous_id(self) -> str | None:
        return self.get("anonymous_id")

    @property
    def device_id(self) -> str | None:
        return self.get("device_id")

    @property
    def user_id(self) -> str | None:
        return self.get("user_id")

    @property
    def email(self) -> str | None:
        return self.get("email")

    @property
    def crm_id(self) -> str | None:
        return self.get("crm_id")

    def items(self) -> list[tuple[IdentityKind, str]]:  # type: ignore[override]
        """The identifiers present, as (kind, raw value) pairs in a fixed kind order."""
        return [(kind, self[kind]) for kind in IDENTITY_KINDS if kind in self]

    def __repr__(self) -> str:
        inner = ", ".join(f"{kind}={self.get(kind)!r}" for kind in IDENTITY_KINDS)
        return f"Identities({inner})"

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(dict.items(self)))

    def __reduce__(self) -> tuple[type[Identities], tuple[dict[str, str]]]:
        return (Identities, (dict(self),))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle an `Identities` pickled when it was a pydantic model (checkpoints written
        before the sixth decode pass): its state holds the five fields in `__dict__`."""
        fields = state.get("__dict__", {})
        dict.update(self, {k: v for k, v in fields.items() if v is not None})

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("Identities is read-only: validate a new event instead")

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            _identities_of,
            handler.generate_schema(_rules.Identities),
            serialization=core_schema.plain_serializer_function_ser_schema(_identity_record),
        )


def _identities_of(rules: _rules.Identities) -> Identities:
    return Identities({k: v for k, v in rules.__dict__.items() if v is not None})


def _identity_record(identities: Identities) -> dict[str, str | None]:
    return {kind: identities.get(kind) for kind in IDENTITY_KINDS}


class TouchpointEvent(BaseModel):
    """One step a customer took, on one channel, at one moment of event time."""

    # cache_strings="keys": event ids, timestamps and identifiers are mostly unique, so caching
    # every string value only churns the parser's cache (~25 % of decode time); keys repeat.
    model_config = ConfigDict(
        frozen=True, extra="forbid", cache_strings="keys", ignored_types=(_computed_once,)
    )

    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    occurred_at: EventTime
    channel: Channel
    touchpoint: Annotated[str, StringConstraints(pattern=TOUCHPOINT_PATTERN)]
    identities: Identities
    session_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    revenue: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | None = None
    properties: (
        Annotated[
            dict[Annotated[str, StringConstraints(max_length=128)], PropertyValue],
            Field(max_length=MAX_PROPERTIES),
        ]
        | None
    ) = None
    schema_version: Literal[1] = SCHEMA_VERSION

    @_computed_once
    def ts_ms(self) -> int:
        """Event time as integer epoch milliseconds (UTC): the unit every processor works in."""
        return _epoch_ms(self.occurred_at)


def _epoch_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


# The event time of a whole batch at once. `at.timestamp()` costs ~7k instructions per event
# (callgrind), most of it asking the event's own tzinfo object for its offset (pydantic-core
# makes a `TzInfo` per parsed timestamp, and every `utcoffset()` is a call into Rust that builds
# a timedelta). Here each datetime's ten state bytes (`datetime.__reduce__`: year, month, day,
# hour, minute, second, microsecond) are joined and turned into microseconds by numpy, and the
# offset comes from a cache keyed by the offset's name (`str(tz)`: "UTC", "+05:30", one entry
# per distinct offset). The last step is the reference's own float arithmetic, `us / 1e6 *
# 1000` truncated, so the results equal `int(at.timestamp() * 1000)` exactly (property-tested)
# wherever a float holds the microseconds exactly; other events take the reference.
_VECTOR_MIN: Final = 32  # below this many events numpy's fixed cost is more than it saves
_EXACT_US: Final = 2**53  # |epoch microseconds| below this are exact as a float
_OCCURRED_AT: Final = attrgetter("occurred_at")
_TZINFO: Final = attrgetter("tzinfo")
_DICT: Final = attrgetter("__dict__")
_STATE: Final = itemgetter(0)
_ARGS: Final = itemgetter(1)
_REDUCE: Final = datetime.__reduce__
# offset in microseconds by the name of a pydantic-core `TzInfo` (its name gives its offset);
# `datetime.timezone` objects are keys themselves (equal and hashed by their offset alone).
_OFFSET_BY_NAME: dict[str, int] = {}
_OFFSET_BY_TZ: dict[tzinfo, int] = {}


def _offset_us(tz: tzinfo | None) -> int | None:
    """The fixed UTC offset of `tz` in microseconds; None unless it is one of the two fixed-offset
    kinds (pydantic-core's `TzInfo`, `datetime.timezone`), whose offset needs no datetime."""
    if type(tz) is TzInfo:
        cache: dict[Any, int] = _OFFSET_BY_NAME
        key: Any = str(tz)
    elif type(tz) is timezone:
        cache, key = _OFFSET_BY_TZ, tz
    else:
        return None
    offset = cache.get(key)
    if offset is None:
        delta: Any = tz.utcoffset(None)  # type: ignore[union-attr]
        offset = cache[key] = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return offset


def _offsets_us(tzs: list[tzinfo | None]) -> list[int | None] | int:
    """Each tz's offset (see :func:`_offset_us`), or one offset for all when they share it."""
    kinds = set(map(type, tzs))
    if kinds == {TzInfo}:
        if len(set(map(str, tzs))) == 1:
            return _offset_us(tzs[0])  # type: ignore[return-value]
    elif kinds == {timezone} and len(set(tzs)) == 1:  # (timezones are equal by offset)
        return _offset_us(tzs[0])  # type: ignore[return-value]
    return list(map(_offset_us, tzs))


def epoch_ms_many(ats: Sequence[datetime]) -> list[int]:
    """`[int(at.timestamp() * 1000) for at in ats]`, the same values at a fraction of the cost
    for any batch larger than a few events (see above)."""
    n = len(ats)
    if n < _VECTOR_MIN or set(map(type, ats)) != {datetime}:
        return list(map(_epoch_ms, ats))
    offsets = _offsets_us(list(map(_TZINFO, ats)))
    fallback: list[int] = []
    if isinstance(offsets, list):
        if None in offsets:
            fallback = [i for i, off in enumerate(offsets) if off is None]
            offsets = [0 if off is None else off for off in offsets]
        offsets = np.array(offsets, dtype=np.int64)  # type: ignore[assignment]
    b = np.frombuffer(
        b"".join(map(_STATE, map(_ARGS, map(_REDUCE, ats)))), dtype=np.uint8
    ).reshape(n, 10).astype(np.int64)
    # days since 1970-01-01 from the civil date (H. Hinnant's days_from_civil); the month's
    # high bit would be the `fold` (only pickles above protocol 3 set it; harmless to mask)
    month = b[:, 2] & 127
    year = b[:, 0] * 256 + b[:, 1] - (month <= 2)
    era = year // 400
    yoe = year - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + b[:, 3] - 1
    days = era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468
    us = (
        (days * 86_400 + b[:, 4] * 3_600 + b[:, 5] * 60 + b[:, 6]) * 1_000_000
        + (b[:, 7] << 16 | b[:, 8] << 8 | b[:, 9])
        - offsets
    )
    out: list[int] = (us / 1e6 * 1000).astype(np.int64).tolist()
    far = np.flatnonzero(np.abs(us) >= _EXACT_US)
    for i in (*fallback, *far.tolist()):
        out[i] = _epoch_ms(ats[i])
    return out


def event_times_ms(events: Sequence[TouchpointEvent]) -> list[int]:
    """Each event's `ts_ms`, for a whole batch (:func:`epoch_ms_many`), cached in each event
    as the attribute caches it, without the attribute's per-event descriptor calls."""
    out = epoch_ms_many(list(map(_OCCURRED_AT, events)))
    deque(map(setitem, map(_DICT, events), repeat("ts_ms"), out), maxlen=0)
    return out


class ResolvedEvent:
    """An accepted event with the customer it belongs to: what flows after identity resolution.

    `customer_id` is the canonical id from :mod:`processors.identity`; `segment` is the
    behavioural segment the customer is in when the event happens (``"all"`` until the segment
    model has assigned one). `ts_ms` is the event time in epoch milliseconds.
    """

    __slots__ = ("customer_id", "event", "segment", "ts_ms")

    def __init__(
        self,
        customer_id: str,
        event: TouchpointEvent,
        segment: str = "all",
        ts_ms: int | None = None,
    ) -> None:
        self.customer_id = customer_id
        self.event = event
        self.segment = segment
        # `ts_ms` when the caller has it already (it must be the event's own `ts_ms`)
        self.ts_ms = event.ts_ms if ts_ms is None else ts_ms

    def __repr__(self) -> str:
        return (
            f"ResolvedEvent({self.customer_id!r}, {self.event.event_id!r}, "
            f"{self.event.touchpoint!r}, ts_ms={self.ts_ms}, segment={self.segment!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResolvedEvent):
            return NotImplemented
        return (self.customer_id, self.event, self.segment) == (
            other.customer_id,
            other.event,
            other.segment,
        )

    def __hash__(self) -> int:
        return hash((self.customer_id, self.event.event_id, self.segment))


def fast_event_schema() -> CoreSchema:
    """:class:`TouchpointEvent`'s core schema, with `occurred_at` decided in Rust where it can be.

    The model's `occurred_at` rule calls a Python function for every event. Here integers in
    `_NATIVE_EPOCH_MS` and strings that cannot be numbers go straight to pydantic-core's own
    datetime parsing, and anything else still goes through the model's rule, so this schema
    accepts a subset of what the model accepts, with equal values (the datetimes differ only in
    the `tzinfo` object: pydantic-core's UTC instead of `datetime.UTC`). It is a fast path, not a
    second contract: :mod:`processors.validation` asks the model itself about anything it rejects.
    """
    model: Any = TouchpointEvent.__pydantic_core_schema__
    fields = dict(model["schema"]["fields"])
    # function-before(_epoch_ms_to_datetime, aware datetime)
    exact = fields["occurred_at"]["schema"]
    low, high = _NATIVE_EPOCH_MS
    fast = core_schema.union_schema(
        [
            core_schema.chain_schema(
                [
                    core_schema.int_schema(strict=True, gt=low, lt=high),
                    core_schema.datetime_schema(),
                ]
            ),
            core_schema.chain_schema(
                [core_schema.str_schema(strict=True, pattern=_NOT_NUMERIC), exact["schema"]]
            ),
            exact,
        ],
        mode="left_to_right",
    )
    fields["occurred_at"] = {**fields["occurred_at"], "schema": fast}
    # Identities as one dict validation: known kinds only (literal keys), non-null identifiers
    # with the model's length limits, at least one (min_length); explicit nulls, unknown keys
    # and empty objects are left to the model. Duplicate keys: the last one wins, as in the model.
    known = core_schema.dict_schema(
        core_schema.literal_schema(list(IDENTITY_KINDS)),
        core_schema.str_schema(min_length=1, max_length=MAX_IDENTIFIER_CHARS),
        min_length=1,
    )
    fields["identities"] = {
        **fields["identities"],
        "schema": core_schema.no_info_after_validator_function(Identities, known),
    }
    return {**model, "schema": {**model["schema"], "fields": fields}}  # type: ignore[no-any-return]

"""The one touchpoint event schema: the contract every producer depends on.

One JSON object per Kafka message, validated here and nowhere else. Decoding happens once, at the
edge (:func:`processors.validation.decode`); processors only ever see :class:`TouchpointEvent`.

The models are frozen and reject unknown fields: an unexpected top-level field is almost always a
producer bug, and silently dropping it would hide that bug.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, Final, Literal

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
from pydantic_core import CoreSchema, core_schema

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


def event_times_ms(events: Iterable[TouchpointEvent]) -> list[int]:
    """Each event's `ts_ms`, for a whole batch: the same values, cached in each event the same
    way, without the attribute's per-event descriptor calls (two Python frames on each first
    read, more than the computation itself)."""
    out: list[int] = []
    append = out.append
    for ev in events:
        cached = ev.__dict__
        ts = cached.get("ts_ms")
        if ts is None:
            ts = cached["ts_ms"] = _epoch_ms(ev.occurred_at)
        append(ts)
    return out


class ResolvedEvent:
    """An accepted event with the customer it belongs to: what flows after identity resolution.

    `customer_id` is the canonical id from :mod:`processors.identity`; `segment` is the
    behavioural segment the customer is in when the event happens (``"all"`` until the segment
    model has assigned one). `ts_ms` is the event time in epoch milliseconds.
    """

    __slots__ = ("customer_id", "event", "segment", "ts_ms")

    def __init__(self, customer_id: str, event: TouchpointEvent, segment: str = "all") -> None:
        self.customer_id = customer_id
        self.event = event
        self.segment = segment
        self.ts_ms = event.ts_ms

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

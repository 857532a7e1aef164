"""Decode raw message bytes into events, or into dead letters that say why not.

Every input ends as exactly one of :class:`Accepted` or :class:`DeadLetter`; nothing raises,
nothing disappears. A dead letter keeps the original bytes, so it can be fixed and replayed.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import orjson
from pydantic import ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from processors.events import TouchpointEvent

_EVENT_ADAPTER: Final = TypeAdapter(TouchpointEvent)
# The batch fast path: events interleaved with a secret separator number (see _validate_many).
_INTERLEAVED: Final = TypeAdapter(
    list[Annotated[TouchpointEvent | StrictInt, Field(union_mode="left_to_right")]],
    config=ConfigDict(cache_strings="keys"),
)
# Below this many messages a failing chunk is decoded message by message.
_MIN_SPLIT: Final = 8
MAX_ERRORS_KEPT: Final = 20
MAX_INPUT_SHOWN: Final = 200


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: a Kafka position, or a file and line for the replay."""

    topic: str = ""
    partition: int = -1
    offset: int = -1

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class Accepted:
    event: TouchpointEvent
    source: Source


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that is not a valid event, with the reason in words and the original bytes."""

    raw: bytes
    reason: str
    source: Source
    errors: list[dict[str, Any]] = field(default_factory=list)
    stage: str = "validate"

    def to_record(self) -> dict[str, Any]:
        """The JSON record written to the dead-letter topic (``touchpoints.dlq``)."""
        return {
            "reason": self.reason,
            "stage": self.stage,
            "errors": self.errors,
            "source": self.source.as_dict(),
            "raw_b64": base64.b64encode(self.raw).decode("ascii"),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_record())


Decoded = Accepted | DeadLetter


def _short(value: Any) -> Any:
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, str | bytes) and len(value) > MAX_INPUT_SHOWN:
        return value[:MAX_INPUT_SHOWN] + ("…" if isinstance(value, str) else b"...")
    if isinstance(value, dict | list) and len(orjson.dumps(value, default=str)) > MAX_INPUT_SHOWN:
        return f"<{type(value).__name__} of {len(value)} items>"
    return value


def _errors_of(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False, include_context=False)[:MAX_ERRORS_KEPT]:
        loc = ".".join(str(part) for part in err["loc"]) or "<root>"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = f"unknown field {loc!r}: not part of the event contract (producer bug?)"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        item = {"field": loc, "type": err["type"], "message": message}
        if "input" in err:
            item["input"] = _short(err["input"])
        out.append(orjson.loads(orjson.dumps(item, default=repr)))
    return out


def _reason_of(errors: list[dict[str, Any]], n_errors: int) -> str:
    if not errors:
        return "invalid event"
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"not valid JSON: {first['message']}"
    if first["type"] == "model_type" and first["field"] == "<root>":
        return "not a JSON object: each message must be one event object"
    parts = [f"{e['field']}: {e['message']}" for e in errors[:3]]
    more = f" (and {n_errors - 3} more)" if n_errors > 3 else ""
    return "; ".join(parts) + more


def decode(raw: bytes, source: Source = Source()) -> Decoded:
    """Validate one message. Never raises for any input bytes."""
    try:
        return Accepted(_EVENT_ADAPTER.validate_json(raw), source)
    except ValidationError as exc:
        try:
            errors = _errors_of(exc)
        except Exception:
            errors = [{"field": "<root>", "type": "unreportable", "message": str(exc)[:500]}]
        return DeadLetter(raw, _reason_of(errors, exc.error_count()), source, errors)
    except Exception as exc:
        return DeadLetter(raw, f"could not decode: {type(exc).__name__}: {exc}", source)


def _validate_many(raws: Sequence[bytes]) -> list[TouchpointEvent] | None:
    """Validate many messages in one call into Rust, or None if any of them is not valid.

    The messages are joined into one JSON array with a random number between each two. The
    numbers make the join safe: a message that is not exactly one JSON value (``{..},{..}``, or
    one that opens a string the next message closes) would shift or swallow a separator, and the
    result is only taken when every separator came back, in place, and everything else is an
    event. Nobody outside this call knows the number, so no message can forge it.
    """
    n = len(raws)
    sep = secrets.randbits(62)
    try:
        out = _INTERLEAVED.validate_json(b"[" + (b",%d," % sep).join(raws) + b"]")
    except Exception:  # any failure: the caller narrows it down message by message
        return None
    events = out[0::2]
    if (
        len(out) != 2 * n - 1
        or out[1::2] != [sep] * (n - 1)
        or set(map(type, events)) != {TouchpointEvent}
    ):
        return None
    return events  # type: ignore[return-value]


def _decode_chunk(
    raws: Sequence[bytes],
    sources: Sequence[Source],
    into: list[Decoded | None],
    at: int,
) -> None:
    """Decode ``raws`` into ``into[at:]``: one Rust call when all are valid, else split.

    A failing chunk is halved until the halves pass or are small; small failing chunks are
    decoded one message at a time by :func:`decode`, which gives each dead letter its own
    reason and source. The accepted events are the same either way: the fast path validates
    with the very same schema, one message per array item.
    """
    events = _validate_many(raws) if len(raws) > 1 else None
    if events is not None:
        for i, event in enumerate(events):
            into[at + i] = Accepted(event, sources[i])
        return
    if len(raws) <= _MIN_SPLIT:
        for i, raw in enumerate(raws):
            into[at + i] = decode(raw, sources[i])
        return
    half = len(raws) // 2
    _decode_chunk(raws[:half], sources[:half], into, at)
    _decode_chunk(raws[half:], sources[half:], into, at + half)


def decode_batch(
    messages: Iterable[tuple[bytes, Source]],
) -> tuple[list[Accepted], list[DeadLetter]]:
    """Decode a batch; keep the order of accepted events and of dead letters.

    Exactly the decisions and reasons of :func:`decode` on each message, in far fewer calls:
    a batch of valid events is validated in one call; one bad message costs a few halvings.
    """
    pairs = list(messages)
    raws = [raw for raw, _ in pairs]
    sources = [source for _, source in pairs]
    results: list[Decoded | None] = [None] * len(pairs)
    _decode_chunk(raws, sources, results, 0)
    accepted: list[Accepted] = []
    dead: list[DeadLetter] = []
    for result in results:
        if isinstance(result, Accepted):
            accepted.append(result)
        else:
            dead.append(result)  # type: ignore[arg-type]
    return accepted, dead


def decode_lines(lines: Sequence[bytes], path: str, first_line: int = 1) -> tuple[
    list[Accepted], list[DeadLetter]
]:
    """Decode lines of a JSON Lines file; the source is the file and the 1-based line number."""
    return decode_batch(
        (line, Source(topic=path, partition=0, offset=first_line + i))
        for i, line in enumerate(lines)
    )

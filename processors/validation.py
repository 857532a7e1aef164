"""Decode raw message bytes into events, or into dead letters that say why not.

Every input ends as exactly one of :class:`Accepted` or :class:`DeadLetter`; nothing raises,
nothing disappears. A dead letter keeps the original bytes, so it can be fixed and replayed.
"""

from __future__ import annotations

import base64
import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby, repeat
from operator import attrgetter
from typing import Any, Final, Literal, overload

import orjson
from pydantic import TypeAdapter, ValidationError
from pydantic_core import CoreSchema, SchemaValidator, TzInfo, core_schema

from processors.collector import gc_paused
from processors.events import (
    CHANNELS,
    IDENTITY_KINDS,
    MAX_IDENTIFIER_CHARS,
    MAX_PROPERTIES,
    MAX_TEXT_CHARS,
    TOUCHPOINT_PATTERN,
    Identities,
    TouchpointEvent,
    fast_event_schema,
)
from processors.native import import_core, not_built

# The model itself: it has the last word on every message, and its errors are the dead letters'.
_EVENT_ADAPTER: Final = TypeAdapter(TouchpointEvent)


def _fast_validator(schema: CoreSchema) -> SchemaValidator:
    """A validator for a schema built on :func:`processors.events.fast_event_schema`.

    pydantic-core swaps the schema of a finished model class for that class's own validator (its
    "prebuilt" shortcut, taken when the class's ``__pydantic_complete__`` is true), which would
    quietly drop the fast rules; the class reads as unfinished only while this builds.
    """
    TouchpointEvent.__pydantic_complete__ = False
    try:
        return SchemaValidator(schema, core_schema.CoreConfig(cache_strings="keys"))
    finally:
        TouchpointEvent.__pydantic_complete__ = True


def _interleaved(n: int) -> SchemaValidator:
    """`n` events with a separator number between each two, as a tuple of fixed length: events
    at the even places, integers at the odd ones. Each place has its own rule, so no item is
    first tried as the wrong kind (a list of `event | int` tried every separator as an event:
    ~1.5k instructions per event of ~28k)."""
    event = core_schema.definition_reference_schema("touchpoint_event")
    sep = core_schema.int_schema(strict=True)
    return _fast_validator(
        core_schema.definitions_schema(
            core_schema.tuple_schema([sep if i % 2 else event for i in range(2 * n - 1)]),
            [{**fast_event_schema(), "ref": "touchpoint_event"}],  # type: ignore[typeddict-item]
        )
    )


# The fast path: accepts only what the model accepts, with equal events; a message it rejects
# goes to the model (`decode`). One message, and the batch form: events interleaved with a
# secret separator number (see _validate_many), one validator per power of two up to
# _MAX_CHUNK messages (built here, at import: ~2k places in all).
_FAST_EVENT: Final = _fast_validator(fast_event_schema())
_MAX_CHUNK: Final = 1024
_INTERLEAVED: Final = {2**k: _interleaved(2**k) for k in range(_MAX_CHUNK.bit_length())}


def _chunk_sizes(n: int) -> list[int]:
    """`n` as _MAX_CHUNK-sized chunks and then the powers of two of the rest, largest first."""
    full, rest = divmod(n, _MAX_CHUNK)
    powers = [1 << k for k in reversed(range(rest.bit_length())) if rest >> k & 1]
    return [_MAX_CHUNK] * full + powers


# The native fast path (native/decode, the package journeymap_decode; optional): finished events
# for the messages it is sure of, None for the rest, which the Python path decides (so every
# rejection and its reason is the model's). It is written for this model: it refuses to start
# for another one (other fields, channels or identity kinds), and the Python path runs alone.
_native_module, NATIVE_IMPORT_ERROR = import_core("journeymap_decode")
DecodeEngine = Literal["auto", "python", "native"]


def _native_decoder() -> Any:
    if _native_module is None:
        return None
    defaults = {
        name: None if f.is_required() else f.default
        for name, f in TouchpointEvent.model_fields.items()
    }
    try:
        return _native_module.Decoder(
            TouchpointEvent,
            Identities,
            TzInfo,
            defaults,
            list(CHANNELS),
            list(IDENTITY_KINDS),
            128,  # event_id, session_id
            MAX_IDENTIFIER_CHARS,
            MAX_TEXT_CHARS,
            MAX_PROPERTIES,
            128,  # property keys
        )
    except ValueError:
        return None


# (the touchpoint rule is written into the decoder: another pattern, no native path)
_NATIVE: Final[Any] = (
    _native_decoder() if TOUCHPOINT_PATTERN == r"^[a-z][a-z0-9_]{0,63}$" else None
)
NATIVE_AVAILABLE: Final = _NATIVE is not None


def decode_engine(engine: DecodeEngine) -> Literal["python", "native"]:
    """The engine `engine` (``decode.engine``) means here: ``auto`` is native when the module is
    installed; ``native`` without it is a :class:`~processors.errors.ConfigError`."""
    if engine == "native" and _NATIVE is None:
        raise not_built("decode", "decode", "journeymap_decode", NATIVE_IMPORT_ERROR
                        or "it is not built for this event model", "scripts/build-native.sh")
    return "native" if engine != "python" and _NATIVE is not None else "python"


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

def _filled(cls: type, n: int, columns: dict[str, Iterable[Any]]) -> list[Any]:
    """`n` instances of a frozen slots dataclass, field by field from `columns`, made from C.

    A frozen dataclass's `__init__` sets each field through `object.__setattr__` in Python;
    here `object.__new__` and the slot descriptors run from `map`, at a third to half the cost.
    The results are ordinary, equal, still frozen instances. Every field must be given."""
    if set(columns) != set(cls.__slots__):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} needs exactly the columns {cls.__slots__}")  # type: ignore[attr-defined]
    out: list[Any] = list(map(object.__new__, repeat(cls, n)))
    for name, values in columns.items():
        deque(map(vars(cls)[name].__set__, out, values), maxlen=0)
    return out


def _accept_all(events: Sequence[TouchpointEvent], sources: Sequence[Source]) -> list[Accepted]:
    """`[Accepted(e, s) for e, s in zip(events, sources)]`, built from C (:func:`_filled`)."""
    return _filled(Accepted, len(events), {"event": events, "source": sources})


def sources_at(topic: str, partition: int, offsets: Sequence[int]) -> list[Source]:
    """`[Source(topic, partition, o) for o in offsets]`, built from C (:func:`_filled`): a
    frozen `Source()` per message costs more than a tenth of its validation."""
    n = len(offsets)
    return _filled(
        Source, n, {"topic": repeat(topic, n), "partition": repeat(partition, n), "offset": offsets}
    )


class Lines(Sequence[tuple[bytes, Source]]):
    """Messages from one place (a file, or one topic partition) as the ``(raw, source)`` pairs
    :func:`decode_events` and the chain take, without a :class:`Source` made per message.

    ``raws[i]`` came from ``offsets[i]`` of `topic` / `partition` (a file's path and 0 for the
    replay). A pair, and its source, is made only when asked for: the chain asks for the few
    messages it dead-letters. A `Source` and a pair per line were ~8 % of the replay's chain
    (bench/RESULTS.md, session 18, issue 4)."""

    __slots__ = ("offsets", "partition", "raws", "topic")

    def __init__(self, raws: Iterable[bytes], topic: str, partition: int,
                 offsets: Sequence[int]) -> None:
        raws = raws if isinstance(raws, list) else list(raws)  # (the decoder takes a list)
        if len(raws) != len(offsets):
            raise ValueError(f"{len(raws):,} messages but {len(offsets):,} offsets")
        self.raws = raws
        self.topic = topic
        self.partition = partition
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.raws)

    @overload
    def __getitem__(self, i: int) -> tuple[bytes, Source]: ...

    @overload
    def __getitem__(self, i: slice) -> list[tuple[bytes, Source]]: ...

    def __getitem__(self, i: int | slice) -> tuple[bytes, Source] | list[tuple[bytes, Source]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self.raws)))]
        return self.raws[i], Source(self.topic, self.partition, self.offsets[i])

    @property
    def sources(self) -> Sequence[Source]:
        """The messages' sources, each made when asked for."""
        return _SourcesOf(self)


class _SourcesOf(Sequence[Source]):
    """:attr:`Lines.sources`: a view, ``sources[i]`` is ``lines[i][1]``."""

    __slots__ = ("lines",)

    def __init__(self, lines: Lines) -> None:
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, i: int) -> Source: ...

    @overload
    def __getitem__(self, i: slice) -> list[Source]: ...

    def __getitem__(self, i: int | slice) -> Source | list[Source]:
        if isinstance(i, slice):
            return [pair[1] for pair in self.lines[i]]
        return self.lines[i][1]


_TOPIC_PARTITION: Final = attrgetter("topic", "partition")
_OFFSET: Final = attrgetter("offset")


def sources_of(messages: Sequence[Any]) -> list[Source]:
    """`[Source(m.topic, m.partition, m.offset) for m in messages]` for anything with those
    three attributes (a Kafka consumer's messages): each run of one topic and partition is made
    by :func:`sources_at`, so a batch costs a few calls instead of a `Source()` per message."""
    offsets = list(map(_OFFSET, messages))
    out: list[Source] = []
    start = 0
    for (topic, partition), run in groupby(map(_TOPIC_PARTITION, messages)):
        end = start + len(list(run))
        out += sources_at(topic, partition, offsets[start:end])
        start = end
    return out


def _short(value: Any) -> Any:
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, str) and len(value) > MAX_INPUT_SHOWN:
        return value[:MAX_INPUT_SHOWN] + "…"
    if isinstance(value, bytes) and len(value) > MAX_INPUT_SHOWN:
        return value[:MAX_INPUT_SHOWN] + b"..."
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


def decode(raw: bytes, source: Source = Source(), engine: DecodeEngine = "auto") -> Decoded:
    """Validate one message. Never raises for any input bytes. `engine`: see
    :func:`decode_engine`."""
    if engine != "python" and decode_engine(engine) == "native":
        try:
            event = _NATIVE.decode(raw)
        except Exception:  # (the decoder busy in another thread): the Python path decides
            event = None
        if event is not None:
            return Accepted(event, source)
    return _decode_python(raw, source)


def _decode_python(raw: bytes, source: Source) -> Decoded:
    """:func:`decode` with the Python engine (and what the native one is not sure of)."""
    try:
        return Accepted(_FAST_EVENT.validate_json(raw), source)
    except Exception:  # not on the fast path: the model decides, and says why
        pass
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


def _validate_many(raws: Sequence[bytes]) -> list[TouchpointEvent] | set[int]:
    """Validate many messages in few calls into Rust: all the events, or which ones look bad.

    The messages are joined into JSON arrays (chunks of :func:`_chunk_sizes`) with a random
    number between each two. The numbers make the join safe: a message that is not exactly one
    JSON value (``{..},{..}``, or one that opens a string the next message closes) would shift or
    swallow a separator, and a chunk is only taken when it has exactly its ``2n - 1`` places (the
    tuple schema), every separator came back in its place, and everything else is an event.
    Nobody outside this call knows the number, so no message can forge it. Chunks are separate
    JSON documents, so nothing reaches across them.

    On failure, the positions the validation errors point at (a hint, empty when the errors
    do not point at items, e.g. for broken JSON): the caller decides those one by one.
    """
    sep = secrets.randbits(62)
    joiner = b",%d," % sep
    events: list[TouchpointEvent] = []
    bad: set[int] = set()
    start = 0
    for size in _chunk_sizes(len(raws)):
        try:
            out = _INTERLEAVED[size].validate_json(
                b"[" + joiner.join(raws[start : start + size]) + b"]"
            )
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_context=False, include_input=False):
                loc = err["loc"]
                if (
                    not loc
                    or not isinstance(loc[0], int)
                    or loc[0] % 2
                    or loc[0] // 2 >= size
                    or (len(loc) == 1 and err["type"] == "missing")  # a place, not an item
                ):
                    return set()  # not an item's own error: the items may not line up
                bad.add(start + loc[0] // 2)
            start += size
            continue
        except Exception:  # anything else: the caller narrows it down
            return set()
        found = out[0::2]
        if (
            len(out) != 2 * size - 1
            or out[1::2] != (sep,) * (size - 1)
            or set(map(type, found)) != {TouchpointEvent}
        ):
            return set()
        events.extend(found)
        start += size
    return bad or events  # type: ignore[return-value]


def _decode_some(
    raws: Sequence[bytes],
    sources: Sequence[Source],
    positions: list[int],
    into: list[Decoded | None],
    found: list[TouchpointEvent] | set[int] | None = None,
) -> None:
    """Decode the messages at `positions` into `into`: one Rust call when all are valid.

    When some are not, the ones the errors point at are decoded one at a time by
    the Python path (each dead letter gets its own reason and source) and the rest go through
    one Rust call again; when the errors point nowhere (broken JSON), the chunk is halved.
    Either way a message is accepted only by a fully checked batch call, which accepts only
    what the model accepts, with equal events, or by `decode`, so the decisions are exactly
    `decode`'s. `found` is what :func:`_validate_many` already said about `positions`.
    """
    while positions:
        if found is None:
            found = set() if len(positions) == 1 else _validate_many([raws[p] for p in positions])
        if isinstance(found, list):
            accepted = _accept_all(found, [sources[p] for p in positions])
            for p, one in zip(positions, accepted, strict=True):
                into[p] = one
            return
        if found and len(found) < len(positions):
            for i in found:
                into[positions[i]] = _decode_python(raws[positions[i]], sources[positions[i]])
            positions = [p for i, p in enumerate(positions) if i not in found]
            found = None
            continue
        if len(positions) <= _MIN_SPLIT:
            for p in positions:
                into[p] = _decode_python(raws[p], sources[p])
            return
        half = len(positions) // 2
        _decode_some(raws, sources, positions[:half], into)
        positions = positions[half:]
        found = None


def decode_batch(
    messages: Iterable[tuple[bytes, Source]],
    engine: DecodeEngine = "auto",
) -> tuple[list[Accepted], list[DeadLetter]]:
    """Decode a batch; keep the order of accepted events and of dead letters.

    Exactly the decisions and reasons of :func:`decode` on each message, in far fewer calls:
    with the native engine (:func:`decode_engine`) one call builds the events it is sure of and
    only the rest go on; a batch of valid events is validated in one pass (one Rust call per
    power-of-two chunk), a batch with invalid events in two (plus one :func:`decode` per
    invalid event), broken JSON costs a few halvings. :func:`decode_events` is the same
    outcome without an :class:`Accepted` per event.
    """
    raws, sources = _unzipped(messages)
    if engine != "python" and decode_engine(engine) == "native":
        try:
            return _decode_native(raws, sources)
        except Exception:  # (the decoder busy in another thread): the Python path decides
            pass
    with gc_paused():
        found = _validate_many(raws) if len(raws) > 1 else set()
        if isinstance(found, list):  # the usual batch: all valid, no bookkeeping
            return _accept_all(found, sources), []
        results: list[Decoded | None] = [None] * len(raws)
        _decode_some(raws, sources, list(range(len(raws))), results, found)
    return _split(results)


def decode_events(
    messages: Sequence[tuple[bytes, Source]],
    engine: DecodeEngine = "auto",
) -> tuple[list[TouchpointEvent], Sequence[int], list[DeadLetter]]:
    """:func:`decode_batch`'s outcome in columns: the accepted events, the position in
    `messages` of each (``range(len(messages))`` when all are accepted) and the dead letters.

    The same events, decisions and dead letters, without an :class:`Accepted` per event (and
    with the native engine without a list of the messages' bytes): a caller that needs an
    event's source looks it up, ``messages[at[i]][1]``, for the few events it needs it for.
    """
    n = len(messages)
    if engine != "python" and decode_engine(engine) == "native":
        try:
            with gc_paused():
                if isinstance(messages, Lines):
                    found, unsure = _NATIVE.decode_many(messages.raws)
                else:
                    found, unsure = _NATIVE.decode_pairs(
                        messages if isinstance(messages, list) else list(messages)
                    )
                if not unsure:
                    return found, range(n), []
                raws, sources = _unzipped(messages)
                _decode_some(raws, sources, unsure, found)  # (in place of the Nones)
            return _columns(found)
        except Exception:  # (the decoder busy in another thread): the Python path decides
            pass
    raws, sources = _unzipped(messages)
    with gc_paused():
        valid = _validate_many(raws) if n > 1 else set()
        if isinstance(valid, list):
            return valid, range(n), []
        results: list[Decoded | None] = [None] * n
        _decode_some(raws, sources, list(range(n)), results, valid)
    return _columns(results)


def _unzipped(messages: Iterable[tuple[bytes, Source]]
              ) -> tuple[list[bytes], Sequence[Source]]:
    """The messages' bytes and their sources (each message a pair, or this raises)."""
    if isinstance(messages, Lines):
        return messages.raws, messages.sources
    pairs = list(messages)
    return [raw for raw, _ in pairs], [source for _, source in pairs]


def _columns(
    results: Sequence[TouchpointEvent | Decoded | None],
) -> tuple[list[TouchpointEvent], list[int], list[DeadLetter]]:
    """:func:`decode_events`'s columns of `results` (all set; an entry is an event, as the
    native decoder leaves them, or an :class:`Accepted` or :class:`DeadLetter`)."""
    events: list[TouchpointEvent] = []
    at: list[int] = []
    dead: list[DeadLetter] = []
    for i, result in enumerate(results):
        if isinstance(result, DeadLetter):
            dead.append(result)
        else:
            events.append(result.event if isinstance(result, Accepted) else result)  # type: ignore[union-attr,arg-type]
            at.append(i)
    return events, at, dead


def _split(results: Sequence[Decoded | None]) -> tuple[list[Accepted], list[DeadLetter]]:
    """The accepted events and the dead letters, each in their order (`results` all set)."""
    accepted: list[Accepted] = []
    dead: list[DeadLetter] = []
    for result in results:
        if isinstance(result, Accepted):
            accepted.append(result)
        else:
            dead.append(result)  # type: ignore[arg-type]
    return accepted, dead


def _decode_native(
    raws: list[bytes], sources: list[Source]
) -> tuple[list[Accepted], list[DeadLetter]]:
    """:func:`decode_batch` with the native fast path first: the messages it is not sure of
    (their positions, `unsure`) are decided by the Python path, as in :func:`_decode_some`."""
    with gc_paused():  # (as in decode_batch)
        # each event already in its Accepted (as _accept_all makes them), None where unsure
        results, unsure = _NATIVE.accept_many(raws, sources, Accepted)
        if not unsure:
            return results, []
        _decode_some(raws, sources, unsure, results)  # (in place of the Nones)
    return _split(results)


def decode_lines(
    lines: Sequence[bytes], path: str, first_line: int = 1, engine: DecodeEngine = "auto"
) -> tuple[list[Accepted], list[DeadLetter]]:
    """Decode lines of a JSON Lines file; the source is the file and the 1-based line number."""
    offsets = range(first_line, first_line + len(lines))
    return decode_batch(zip(lines, sources_at(path, 0, offsets), strict=True), engine)

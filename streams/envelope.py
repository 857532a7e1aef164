"""Re-keyed events in batches on touchpoints.resolved: one Kafka message per partition per batch.

The ingest agent used to produce every resolved event as its own message keyed by customer id,
and the journey agent then paid Faust's whole per-message consume path (~65 us of CPU on the
bench machine: bench/bench_passthrough.py) a second time for every event (issue 6,
docs/streaming.md "What the ratio to the pass-through allows"). Now the ingest agent groups a
batch's events by the partition their customer's key goes to (the same murmur2 partitioner as
a keyed message, :func:`partition_of`) and sends each group as one *envelope*: a message with
the header ``jm-type: events``, produced to that partition explicitly, whose value holds the
events' keys and original bytes in order. Per partition the order of everything is what it
was: a customer's events and the merge protocol's control messages keep their relative order,
because an envelope goes to the partition each of its events would have gone to, at the point
where they would have been produced.

An envelope is at most :data:`MAX_ENVELOPE_BYTES` (a larger group is split), far below Kafka's
default message size limit of 1 MiB. All its events share the envelope's offset; the journey
agent checkpoints whole messages, so an envelope is processed entirely or again after a crash,
like a single event. A message with no ``jm-type`` header is still one event keyed by customer
(forwards, older producers, other writers): both kinds can be mixed on the topic.

Layout (little-endian): ``u32`` event count, then per event ``u16`` key length, ``u32`` value
length, the key (the customer id, UTF-8), the value (the raw event as the producer sent it).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

from aiokafka.partitioner import murmur2

H_EVENTS = b"events"  # the jm-type header's value of an envelope
MAX_ENVELOPE_BYTES = 512 * 1024

_COUNT = struct.Struct("<I")
_ITEM = struct.Struct("<HI")
_MAX_KEY = 0xFFFF


class EnvelopeError(ValueError):
    """A message announced as an envelope whose value does not follow the layout."""


# partition count -> key -> partition: murmur2 in Python (aiokafka's) costs microseconds per
# key, 2 % of a live worker's event loop (py-spy, session 18); a customer's events keep coming
# back. Emptied when it holds KNOWN_KEYS keys of one count (~7 MB at most).
_KNOWN: dict[int, dict[bytes, int]] = {}
KNOWN_KEYS = 1 << 16


def partition_of(key: bytes, n_partitions: int) -> int:
    """The partition a keyed message goes to (murmur2, as aiokafka's and Java's default
    partitioner and the worker's confluent-kafka producers with ``murmur2_random``)."""
    known = _KNOWN.get(n_partitions)
    if known is None:
        known = _KNOWN[n_partitions] = {}
    p = known.get(key)
    if p is None:
        if len(known) >= KNOWN_KEYS:
            known.clear()
        p = known[key] = (murmur2(key) & 0x7FFFFFFF) % n_partitions
    return p


def pack(items: Sequence[tuple[bytes, bytes]]) -> bytes:
    """One envelope of `items`, each ``(key, value)``, in order."""
    parts = [_COUNT.pack(len(items))]
    for key, value in items:
        if len(key) > _MAX_KEY:
            raise EnvelopeError(f"a key of {len(key):,} bytes does not fit an envelope "
                                f"(at most {_MAX_KEY:,})")
        parts.append(_ITEM.pack(len(key), len(value)))
        parts.append(key)
        parts.append(value)
    return b"".join(parts)


def count(value: bytes) -> int:
    """How many events an envelope says it holds (0 when it is too short to say)."""
    return _COUNT.unpack_from(value)[0] if len(value) >= _COUNT.size else 0


def unpack(value: bytes) -> list[tuple[bytes, bytes]]:
    """The ``(key, value)`` pairs of an envelope, in order; :class:`EnvelopeError` when the
    bytes do not follow the layout (truncated, a count that disagrees, bytes left over)."""
    view = memoryview(value)
    if len(view) < _COUNT.size:
        raise EnvelopeError(f"an envelope of {len(view)} bytes has no event count")
    (n,) = _COUNT.unpack_from(view)
    at = _COUNT.size
    out: list[tuple[bytes, bytes]] = []
    item = _ITEM.unpack_from
    size = _ITEM.size
    end = len(view)
    for i in range(n):
        if at + size > end:
            raise EnvelopeError(f"envelope truncated: event {i + 1} of {n} has no header")
        key_len, value_len = item(view, at)
        at += size
        stop = at + key_len + value_len
        if stop > end:
            raise EnvelopeError(f"envelope truncated: event {i + 1} of {n} needs "
                                f"{stop - end:,} more bytes")
        out.append((bytes(view[at:at + key_len]), bytes(view[at + key_len:stop])))
        at = stop
    if at != end:
        raise EnvelopeError(f"{end - at:,} bytes after the {n} events of an envelope")
    return out


def group(items: Iterable[tuple[bytes, bytes, int | None]], n_partitions: int,
          max_bytes: int = MAX_ENVELOPE_BYTES) -> Iterator[tuple[int, bytes, int | None]]:
    """Envelopes of `items` (``(key, value, timestamp_ms)``) per partition of `n_partitions`:
    ``(partition, envelope, the earliest timestamp in it)``, the items of each partition in
    their order, an envelope closed when the next item would take it past `max_bytes` (an item
    larger than that on its own gets an envelope of its own)."""
    open_: dict[int, _Open] = {}
    for key, value, ts in items:
        p = partition_of(key, n_partitions)
        grow = _ITEM.size + len(key) + len(value)
        env = open_.get(p)
        if env is not None and env.size + grow > max_bytes:
            yield p, pack(env.items), env.earliest
            env = None
        if env is None:
            env = open_[p] = _Open()
        env.items.append((key, value))
        env.size += grow
        if ts is not None and (env.earliest is None or ts < env.earliest):
            env.earliest = ts
    for p, env in sorted(open_.items()):
        yield p, pack(env.items), env.earliest


class _Open:
    """An envelope being filled by :func:`group`: its items, its size, its earliest time."""

    __slots__ = ("earliest", "items", "size")

    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes]] = []
        self.size = _COUNT.size
        self.earliest: int | None = None

"""A reusable Kafka producer for touchpoint events (confluent-kafka), meant to be copied.

What a good event producer does, in one place:

* batches (``linger.ms``, ``batch.size``) and compresses (zstd or lz4) for throughput;
* idempotence on (``acks=all``), so a retried send is never written twice by the broker;
* counts deliveries and failures in the delivery callback instead of assuming success;
* keys each event by its most stable identifier (user_id > crm_id > email > device_id >
  anonymous_id), so one customer's events mostly share a partition and keep their order;
* limits the rate when asked (a token bucket), and backs off when the local queue is full;
* flushes with a bounded timeout on close and reports what was not delivered.

Event bytes are sent as they are: the contract (processors/events.py) is checked by the
consumer, which dead-letters what it cannot accept.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from processors.config import IdentityConfig
from processors.errors import ServiceUnavailable
from streams.delivery import produce

KEY_ORDER: Final = ("user_id", "crm_id", "email", "device_id", "anonymous_id")
IGNORED_VALUES: Final = frozenset(IdentityConfig().ignored_values)
Compression = Literal["zstd", "lz4", "gzip", "snappy", "none"]
_AUTO: Final = object()
MAX_ERRORS_KEPT: Final = 10


def event_key(
    identities: Mapping[str, Any], ignored: Collection[str] = IGNORED_VALUES
) -> bytes | None:
    """The most stable identifier's value (emails normalised), skipping junk like "undefined"."""
    for kind in KEY_ORDER:
        value = identities.get(kind)
        if not isinstance(value, str):
            continue
        value = value.strip()
        if kind == "email":
            value = value.lower()
        if value and value.lower() not in ignored:
            return value.encode()
    return None


def key_of(raw: bytes, ignored: Collection[str] = IGNORED_VALUES) -> bytes | None:
    """The key for raw event bytes; None (round-robin) when they carry no usable identifier."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    identities = body.get("identities") if isinstance(body, dict) else None
    return event_key(identities, ignored) if isinstance(identities, dict) else None


def check_broker(bootstrap_servers: str, topic: str, timeout_s: float = 10.0) -> bool:
    """Raise ServiceUnavailable if no broker answers; return whether `topic` exists.

    Call it before creating a producer: a silent client waits, where a producer would log
    every failed reconnect attempt.
    """
    probe = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    try:
        meta = probe.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ServiceUnavailable(
            f"no Kafka broker answered at {bootstrap_servers} within {timeout_s:g} s "
            f"({exc}); start one with `journeymap services up` or set "
            "JOURNEYMAP_KAFKA__BOOTSTRAP_SERVERS"
        ) from None
    return topic in meta.topics


class RateLimiter:
    """A token bucket: at most `rate_per_s` on average, bursts of at most `burst`."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        self.rate_per_s = rate_per_s
        self.burst = burst if burst is not None else max(1.0, rate_per_s / 10)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    def acquire(self, n: float = 1.0) -> float:
        """Take `n` tokens, sleeping until they are there. Returns the seconds slept."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate_per_s
        self._sleep(wait)
        return wait


@dataclass(slots=True)
class DeliveryStats:
    """What happened to the messages handed to the producer."""

    n_sent: int = 0
    n_delivered: int = 0
    n_failed: int = 0
    n_undelivered: int = 0  # still queued when close() gave up
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return self.n_failed == 0 and self.n_undelivered == 0


class EventProducer:
    """Send raw event bytes to one topic; see the module docstring for what it takes care of.

    Use as a context manager, or call :meth:`close` and read the returned stats.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        compression: Compression = "zstd",
        linger_ms: int = 20,
        batch_bytes: int = 1_000_000,
        rate_per_s: float | None = None,
        message_timeout_s: float = 60.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.stats = DeliveryStats()
        self._limiter = RateLimiter(rate_per_s) if rate_per_s else None
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": "journeymap-producer",
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": compression,
            "linger.ms": linger_ms,
            "batch.size": batch_bytes,
            "queue.buffering.max.messages": 500_000,
            "message.timeout.ms": int(message_timeout_s * 1000),
        }
        conf.update(config or {})
        self._producer = Producer(conf)
        self._closed = False

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.stats.n_delivered += 1
            return
        self.stats.n_failed += 1
        if len(self.stats.errors) < MAX_ERRORS_KEPT or err.str() in self.stats.errors:
            self.stats.errors[err.str()] += 1

    def check(self, timeout_s: float = 10.0) -> bool:
        """Raise ServiceUnavailable if no broker answers; return whether the topic exists."""
        return check_broker(self.bootstrap_servers, self.topic, timeout_s)

    def send(self, value: bytes, key: bytes | object | None = _AUTO) -> None:
        """Queue one message; the key defaults to :func:`key_of` the value."""
        if self._limiter is not None:
            self._limiter.acquire()
        if key is _AUTO:
            key = key_of(value)
        produce(self._producer, (self.topic, key, value, None, None, None),  # type: ignore[arg-type]
                self._on_delivery)
        self.stats.n_sent += 1
        self._producer.poll(0)

    def send_many(self, values: Iterable[bytes]) -> None:
        for value in values:
            self.send(value)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait (at most `timeout_s`) for queued messages; returns how many are still queued."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 30.0) -> DeliveryStats:
        """Flush with a bounded wait; what is left is counted in `n_undelivered`."""
        if not self._closed:
            self._closed = True
            self.stats.n_undelivered = self.flush(timeout_s)
        return self.stats

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

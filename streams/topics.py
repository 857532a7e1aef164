"""Kafka topics journeymap uses: their specs from settings, creation and checking (confluent admin).

Faust creates its own changelog topics; these are the public ones producers and consumers see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from processors.errors import ConfigError, ServiceUnavailable
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    purpose: str = ""

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


def topic_specs(kafka: KafkaSettings) -> list[TopicSpec]:
    t, n, keep = kafka.topics, kafka.partitions, kafka.retention_ms
    return [
        TopicSpec(t.raw, n, keep, purpose="touchpoint events from producers (any key)"),
        TopicSpec(t.dlq, n, kafka.dlq_retention_ms, purpose="rejected input with its reason"),
        TopicSpec(t.resolved, n, keep, purpose="accepted events keyed by customer id"),
        TopicSpec(t.merges, n, keep, purpose="identity merges: loser -> winner, evidence"),
        TopicSpec(t.late, n, keep, purpose="events past the allowed lateness"),
        TopicSpec(t.scores, n, keep, purpose="per-customer live scores"),
        TopicSpec(t.alerts, 1, kafka.dlq_retention_ms, purpose="drift and model alerts"),
        TopicSpec(t.alerts_dlq, 1, kafka.dlq_retention_ms,
                  purpose="alerts the webhook could not deliver (reason in headers)"),
    ]


def admin_client(kafka: KafkaSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "socket.timeout.ms": 5000})


def _existing(admin: AdminClient, timeout_s: float) -> dict[str, int]:
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ServiceUnavailable(
            f"Kafka did not answer within {timeout_s:.0f}s ({exc}); is it running? "
            "`journeymap services up` starts a local broker"
        ) from None
    return {name: len(topic.partitions) for name, topic in meta.topics.items()}


def create_topics(kafka: KafkaSettings, timeout_s: float = 30.0) -> list[tuple[TopicSpec, str]]:
    """Create missing topics; return (spec, "created" | "exists") for each. Idempotent."""
    admin = admin_client(kafka)
    existing = _existing(admin, timeout_s)
    specs = topic_specs(kafka)
    missing = [s for s in specs if s.name not in existing]
    results = {s.name: "exists" for s in specs if s.name in existing}
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=kafka.replication_factor,
                    config=s.config(),
                )
                for s in missing
            ],
            operation_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                results[name] = "created"
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    results[name] = "exists"
                else:
                    raise ServiceUnavailable(f"could not create topic {name!r}: {exc}") from None
    return [(s, results[s.name]) for s in specs]


def check_topics(kafka: KafkaSettings, timeout_s: float = 15.0) -> dict[str, int]:
    """Raise ConfigError when a topic is missing or the resolved topic's partitions disagree;
    else every topic's partition count, as the broker gave it."""
    existing = _existing(admin_client(kafka), timeout_s)
    missing = [s.name for s in topic_specs(kafka) if s.name not in existing]
    if missing:
        raise ConfigError(
            f"Kafka topics {missing} do not exist; run `journeymap topics create` first"
        )
    raw, resolved = kafka.topics.raw, kafka.topics.resolved
    if existing[resolved] < existing[raw]:
        log.warning(
            "%s has %d partitions but %s has %d; customers will be spread over fewer workers",
            resolved, existing[resolved], raw, existing[raw],
        )
    return existing

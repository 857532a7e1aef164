"""`journeymap alerts tail|webhook`: consumers of the `alerts` topic (schema: docs/alerts.md)."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

from streams.cli import settings_from

POLL_S = 0.5


@click.group("alerts")
def alerts() -> None:
    """Read the alerts the workers raise (drift in conversion, transitions, segments, models).

    `tail` prints them as they arrive; `webhook` delivers each one to an HTTP endpoint. The
    message schema is in docs/alerts.md.
    """


@dataclass(frozen=True, slots=True)
class Record:
    """One message of the alerts topic, decoded or not."""

    partition: int
    offset: int
    value: bytes
    alert: Any  # sinks.alerts.AlertMessage, or None when `error` says why not
    error: str | None


def _consumer(bootstrap: str, topic: str, from_beginning: bool) -> Any:
    """A consumer assigned to every partition (no group membership, nothing committed)."""
    from confluent_kafka import Consumer, TopicPartition

    from processors.errors import ConfigError, ServiceUnavailable

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"journeymap-alerts-tail-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "socket.timeout.ms": 10_000,
    })
    try:
        meta = consumer.list_topics(topic, timeout=10)
    except Exception as exc:
        consumer.close()
        raise ServiceUnavailable(
            f"Kafka did not answer ({exc}); is it running? `journeymap services status`"
        ) from None
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        consumer.close()
        raise ConfigError(f"the alerts topic {topic!r} does not exist; run "
                          "`journeymap topics create` (or set kafka.topics.alerts)")
    assigned = []
    for p in sorted(info.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        assigned.append(TopicPartition(topic, p, low if from_beginning else high))
    consumer.assign(assigned)
    return consumer


def _records(consumer: Any, max_idle_s: float | None) -> Iterator[Record]:
    """Messages as they come; ends after `max_idle_s` without one (never when None)."""
    from sinks.alerts import AlertDecodeError, decode_alert

    last = time.monotonic()
    while max_idle_s is None or time.monotonic() - last < max_idle_s:
        msg = consumer.poll(POLL_S)
        if msg is None:
            continue
        if msg.error() is not None:
            click.echo(f"kafka: {msg.error()}", err=True)
            continue
        last = time.monotonic()
        value = msg.value() or b""
        try:
            yield Record(msg.partition(), msg.offset(), value, decode_alert(value), None)
        except AlertDecodeError as exc:
            yield Record(msg.partition(), msg.offset(), value, None, str(exc))


def _one_line(value: bytes) -> str:
    """The raw JSON, unless a foreign producer spread it over lines: then compacted."""
    if b"\n" not in value:
        return value.decode()
    import orjson

    return orjson.dumps(orjson.loads(value)).decode()


def format_alert(alert: Any, color: bool = False) -> str:
    """One line: event time, severity, kind, segment, metric, message, id."""
    when = datetime.fromtimestamp(alert.ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    severity = alert.severity.upper().ljust(8)
    if color:
        severity = click.style(severity, fg="red" if alert.severity == "critical" else "yellow",
                               bold=True)
    return (f"{when}  {severity}  {alert.kind:<6} {alert.segment:<8} {alert.metric:<24} "
            f"{alert.message}  [{alert.alert_id}]")


def _stop_options(max_does: str, default: str) -> Callable[[Any], Any]:
    """--max and --timeout: how a command that would run forever stops by itself."""

    def add(command: Any) -> Any:
        command = click.option(
            "--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=None,
            help=f"Stop after this many seconds without a new message (default: {default}).",
        )(command)
        return click.option("--max", "max_alerts", type=click.IntRange(min=1), default=None,
                            help=f"Stop after {max_does}.")(command)

    return add


@alerts.command("tail")
@click.option("--from-beginning", is_flag=True,
              help="Start at the oldest alert the topic keeps (30 days by default) instead of "
                   "only new ones.")
@click.option("--kind", "kinds", multiple=True, metavar="KIND",
              help="Only alerts of this kind (e.g. drift); repeat for several.")
@click.option("--segment", "segments", multiple=True, metavar="SEGMENT",
              help="Only alerts about this segment (e.g. s3, or `all`); repeat for several.")
@click.option("--json", "as_json", is_flag=True,
              help="Print each alert's raw JSON value, one per line (for jq and scripts).")
@_stop_options("printing this many alerts", "follow until Ctrl-C")
@click.pass_context
def tail(ctx: click.Context, from_beginning: bool, kinds: tuple[str, ...],
         segments: tuple[str, ...], as_json: bool, max_alerts: int | None,
         timeout_s: float | None) -> None:
    """Follow the alerts topic and print one line per alert.

    Nothing is committed and no consumer group is joined, so tailing never disturbs the webhook
    or any other consumer. Messages that are not valid alerts are reported on stderr and skipped.

    \b
    Examples:
      journeymap alerts tail                          # new alerts, until Ctrl-C
      journeymap alerts tail --from-beginning --timeout 5 --kind drift --segment s3
      journeymap alerts tail --json --max 10 | jq .evidence
    """
    settings = settings_from(ctx)
    topic = settings.kafka.topics.alerts
    consumer = _consumer(settings.kafka.bootstrap_servers, topic, from_beginning)
    color = not as_json and sys.stdout.isatty()
    shown = bad = 0
    click.echo(f"following {topic} ({'from the beginning' if from_beginning else 'new alerts'})"
               + (f", stopping after {timeout_s:g}s without one" if timeout_s else "")
               + "; Ctrl-C stops", err=True)
    try:
        for rec in _records(consumer, timeout_s):
            if rec.alert is None:
                bad += 1
                click.echo(f"skipped message {topic}[{rec.partition}]@{rec.offset}: {rec.error}; "
                           f"value starts {rec.value[:80]!r}", err=True)
                continue
            if (kinds and rec.alert.kind not in kinds) or (
                segments and rec.alert.segment not in segments
            ):
                continue
            click.echo(_one_line(rec.value) if as_json else format_alert(rec.alert, color))
            shown += 1
            if max_alerts is not None and shown >= max_alerts:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    click.echo(f"{shown} alert(s) shown" + (f", {bad} bad message(s) skipped" if bad else ""),
               err=True)


@alerts.command("webhook")
@click.option("--url", default=None,
              help="The endpoint that receives each alert as a JSON POST "
                   "(default: the alerts_webhook.url setting).")
@_stop_options("handling this many alerts (delivered or parked)", "run until Ctrl-C or SIGTERM")
@click.pass_context
def webhook(ctx: click.Context, url: str | None, max_alerts: int | None,
            timeout_s: float | None) -> None:
    """POST every alert to an HTTP endpoint, in order, retried until a 2xx or parked.

    Each alert is POSTed as its JSON (docs/alerts.md) with an `Idempotency-Key` header equal to
    its alert_id. Connection errors, timeouts, 408, 425, 429 and 5xx are retried with
    exponential backoff (alerts_webhook.backoff_initial_s doubling up to backoff_max_s); the
    offset is committed only after a 2xx, so a restart never loses an alert. Another 4xx or 3xx,
    or no 2xx within alerts_webhook.give_up_after_s, parks the alert on the dead-letter topic
    (kafka.topics.alerts_dlq, default alerts.dlq) with the reason in its headers, and delivery
    moves on. Run one per consumer group (alerts_webhook.consumer_group).
    """
    import logging
    import signal
    import threading

    from pydantic import ValidationError

    from processors.errors import ConfigError
    from sinks.alerts import (
        Delivered,
        Parked,
        WebhookDelivery,
        WebhookPolicy,
        WebhookRunner,
    )
    from streams.settings import AlertsWebhookSettings

    settings = settings_from(ctx)
    cfg = settings.alerts_webhook
    if url is not None:
        try:
            cfg = AlertsWebhookSettings(**{**cfg.model_dump(), "url": url})
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise click.BadParameter(problem, param_hint="--url") from None
    if cfg.url is None:
        raise ConfigError("no webhook URL: pass --url or set alerts_webhook.url "
                          "(env JOURNEYMAP_ALERTS_WEBHOOK__URL)")
    k = settings.kafka
    for topic in (k.topics.alerts, k.topics.alerts_dlq):
        _consumer(k.bootstrap_servers, topic, False).close()  # fails early when missing
    log = logging.getLogger("journeymap.alerts.webhook")
    stop = threading.Event()
    policy = WebhookPolicy(cfg.url, cfg.request_timeout_s, cfg.backoff_initial_s,
                           cfg.backoff_max_s, cfg.give_up_after_s)

    def report(alert: Any, outcome: Any) -> None:
        name = alert.alert_id if alert is not None else "(bad message)"
        if isinstance(outcome, Delivered):
            log.info("delivered %s (HTTP %d, %d attempt(s))", name, outcome.status,
                     outcome.attempts)
        elif isinstance(outcome, Parked):
            log.warning("parked %s on %s: %s", name, k.topics.alerts_dlq, outcome.reason)

    runner = WebhookRunner(k.bootstrap_servers, k.topics.alerts, k.topics.alerts_dlq,
                           cfg.consumer_group, WebhookDelivery(policy, stop), report)
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"delivering {k.topics.alerts} to {cfg.url} (group {cfg.consumer_group}); "
               "Ctrl-C stops", err=True)
    try:
        stats = runner.run(max_alerts, timeout_s)
    except KeyboardInterrupt:
        stop.set()
        stats = runner.stats
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(f"{stats.delivered} delivered, {stats.parked} parked on {k.topics.alerts_dlq} "
               f"({stats.bad} bad messages), {stats.attempts} HTTP attempts", err=True)

"""Factories for events in unit tests: plain values, no I/O."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from processors.events import ResolvedEvent, TouchpointEvent

_ids = itertools.count()
T0_MS = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
MIN_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def event(
    touchpoint: str = "landing_page",
    *,
    at_ms: int = T0_MS,
    channel: str = "web",
    event_id: str | None = None,
    **identities_and_fields: Any,
) -> TouchpointEvent:
    """An event; identity kinds (anonymous_id=..., email=...) go into `identities`."""
    identity_keys = ("anonymous_id", "device_id", "user_id", "email", "crm_id")
    identities = {
        k: identities_and_fields.pop(k) for k in identity_keys if k in identities_and_fields
    }
    if not identities:
        identities = {"anonymous_id": "anon-1"}
    return TouchpointEvent.model_validate(
        {
            "event_id": event_id or f"ev-{next(_ids)}",
            "occurred_at": at_ms,
            "channel": channel,
            "touchpoint": touchpoint,
            "identities": identities,
            **identities_and_fields,
        }
    )


def resolved(
    customer_id: str,
    touchpoint: str,
    at_ms: int,
    *,
    segment: str = "all",
    **kwargs: Any,
) -> ResolvedEvent:
    return ResolvedEvent(customer_id, event(touchpoint, at_ms=at_ms, **kwargs), segment)


def journey(
    customer_id: str, steps: str, *, start_ms: int = T0_MS, gap_ms: int = MIN_MS, **kwargs: Any
) -> list[ResolvedEvent]:
    """`journey("c1", "landing_page pricing_page purchase")`: one event every `gap_ms`."""
    return [
        resolved(customer_id, tp, start_ms + i * gap_ms, **kwargs)
        for i, tp in enumerate(steps.split())
    ]

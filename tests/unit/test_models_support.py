"""Seeded synthetic data for the online-model tests: plain values, no I/O.

Three behaviour types with distinct channel mixes, rhythms and conversion rates, so clustering,
propensity and lookalikes have something real to find.
"""

from __future__ import annotations

import random

from online_models.features import CustomerFeatures, features
from processors.events import ResolvedEvent
from tests.factories import HOUR_MS, MIN_MS, T0_MS, resolved

TYPES = {
    # name: (touchpoint -> channel choices, mean gap between events, P(purchase) per event, rev)
    "browser": (
        {"blog_post": "web", "social_visit": "social", "landing_page": "web"},
        48,
        0.01,
        20,
    ),
    "app_user": (
        {"feature_use": "app", "app_open": "app", "support_ticket": "support"},
        6,
        0.05,
        80,
    ),
    "buyer": ({"pricing_page": "web", "email_click": "email", "ad_click": "ads"}, 20, 0.15, 900),
}


def customer_events(
    rng: random.Random, cid: str, kind: str, n: int, start_ms: int
) -> list[ResolvedEvent]:
    """`n` events of one customer of behaviour type `kind`."""
    tps, gap_h, p_buy, rev = TYPES[kind]
    out = []
    t = start_ms
    names = sorted(tps)
    for _ in range(n):
        t += int(rng.expovariate(1 / gap_h) * HOUR_MS) + MIN_MS
        if rng.random() < p_buy:
            out.append(resolved(cid, "purchase", t, revenue=float(rev), user_id=cid))
        else:
            tp = rng.choice(names)
            out.append(resolved(cid, tp, t, channel=tps[tp], user_id=cid))
    return out


def population(
    seed: int, n_customers: int, n_events: int = 12
) -> tuple[list[ResolvedEvent], dict[str, str]]:
    """Interleaved events of `n_customers` (event-time order) and each customer's true type."""
    rng = random.Random(seed)
    kinds = sorted(TYPES)
    truth: dict[str, str] = {}
    events: list[ResolvedEvent] = []
    for i in range(n_customers):
        cid = f"c{i}"
        truth[cid] = kinds[i % len(kinds)]
        start = T0_MS + rng.randrange(7 * 24) * HOUR_MS
        events.extend(customer_events(rng, cid, truth[cid], n_events, start))
    events.sort(key=lambda e: (e.ts_ms, e.customer_id))
    return events, truth


def final_features(events: list[ResolvedEvent]) -> dict[str, dict[str, float]]:
    """Every customer's features after all their events."""
    summaries: dict[str, CustomerFeatures] = {}
    for e in events:
        summaries.setdefault(e.customer_id, CustomerFeatures()).update(e.event)
    now = max(e.ts_ms for e in events)
    return {c: features(s, now) for c, s in summaries.items()}


def test_population_is_seeded() -> None:
    a, ta = population(3, 30)
    b, tb = population(3, 30)
    assert [(e.customer_id, e.event.touchpoint, e.ts_ms) for e in a] == [
        (e.customer_id, e.event.touchpoint, e.ts_ms) for e in b
    ]
    assert ta == tb and set(ta.values()) == set(TYPES)

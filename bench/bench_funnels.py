"""Funnel tracker throughput: events/s of `FunnelTracker.update` (+ `advance`) on one core.

Baseline from the same run: the cheapest stateful pass over the same events (count each
customer's touchpoints in a dict), so the figure is comparable across machines.

    python bench/bench_funnels.py [n_events]
"""

from __future__ import annotations

import random
import sys
import time

from processors.config import FunnelConfig
from processors.events import ResolvedEvent, TouchpointEvent
from processors.funnels import FunnelTracker

T0_MS = 1_772_323_200_000
STEP_MS = 600_000
TOUCHPOINTS = ["landing_page", "blog_post", "pricing_page", "app_open", "signup", "trial_start",
               "demo_request", "onboarding_complete", "purchase", "support_ticket",
               "email_open", "newsletter_click"]
FUNNEL = FunnelConfig.model_validate({
    "name": "signup_to_purchase", "conversion_window_s": 14 * 86_400, "order": "relaxed",
    "stages": [
        {"name": "visit", "touchpoints": ["landing_page", "blog_post", "pricing_page", "app_open"]},
        {"name": "signup", "touchpoints": ["signup"]},
        {"name": "activation",
         "touchpoints": ["trial_start", "demo_request", "onboarding_complete"]},
        {"name": "purchase", "touchpoints": ["purchase"]},
    ]})
STRICT = FUNNEL.model_copy(update={"name": "strict_copy", "order": "strict"})


def make_events(n_events: int, seed: int = 7) -> list[ResolvedEvent]:
    rng = random.Random(seed)
    pool: dict[tuple[str, int], TouchpointEvent] = {}
    events: list[ResolvedEvent] = []
    c = 0
    while len(events) < n_events:
        cid = f"c{c}"
        c += 1
        step = rng.randrange(0, 4000)
        for _ in range(rng.randint(3, 15)):
            step += rng.randint(1, 300)
            tp = rng.choice(TOUCHPOINTS)
            ev = pool.get((tp, step))
            if ev is None:
                ev = pool[(tp, step)] = TouchpointEvent.model_validate({
                    "event_id": f"e{len(pool)}", "occurred_at": T0_MS + step * STEP_MS,
                    "channel": "web", "touchpoint": tp, "identities": {"anonymous_id": "a"}})
            events.append(ResolvedEvent(cid, ev, rng.choice(("a", "b", "c"))))
    events.sort(key=lambda e: e.ts_ms)
    return events[:n_events]


def run_tracker(events: list[ResolvedEvent], funnels: list[FunnelConfig], batch: int = 1000
                ) -> tuple[float, int]:
    tracker = FunnelTracker(funnels)
    n_out = 0
    t = time.perf_counter()
    for i in range(0, len(events), batch):
        chunk = events[i:i + batch]
        n_out += len(tracker.update(chunk).transitions)
        n_out += len(tracker.advance(chunk[-1].ts_ms - 3_600_000))
    return time.perf_counter() - t, n_out


def run_baseline(events: list[ResolvedEvent]) -> float:
    counts: dict[tuple[str, str], int] = {}
    t = time.perf_counter()
    for ev in events:
        key = (ev.customer_id, ev.event.touchpoint)
        counts[key] = counts.get(key, 0) + 1
    return time.perf_counter() - t


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    events = make_events(n)
    base = min(run_baseline(events) for _ in range(3))
    one = min(run_tracker(events, [FUNNEL])[0] for _ in range(3))
    two, n_out = min(run_tracker(events, [FUNNEL, STRICT]) for _ in range(3))
    print(f"events: {n:,}  transitions (2 funnels): {n_out:,}")
    print(f"baseline dict count : {n / base:>12,.0f} events/s")
    print(f"funnels, 1 funnel   : {n / one:>12,.0f} events/s  ratio {base / one:.2f}")
    print(f"funnels, 2 funnels  : {n / two:>12,.0f} events/s  ratio {base / two:.2f}")


if __name__ == "__main__":
    main()

"""Outside oracle: first-order transition counts equal pm4py's directly-follows graph exactly.

The log handed to pm4py is built from the raw events, independently of our walk: per customer,
in event-time order, conversion touchpoints are renamed ``conversion``, churn ones ``null``, and an
artificial ``start`` activity opens the first journey and every journey after an outcome (pm4py
has no start state of its own). pm4py's edges *into* ``start`` are journey boundaries, not Markov
transitions, and are left out. The null horizon is longer than the log, so no expiry happens.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime

import pytest

from processors.config import JourneyConfig, OutcomesConfig, ProcessingConfig, WindowsConfig
from processors.events import ResolvedEvent
from processors.journeys import CONVERSION, NULL, START, JourneyProcessor, event_digest
from processors.transitions import TransitionCounter
from tests.factories import MIN_MS, T0_MS, event

pd = pytest.importorskip("pandas")
pm4py = pytest.importorskip("pm4py")

CONFIG = ProcessingConfig(
    outcomes=OutcomesConfig(conversion=["purchase"], churn=["cancel"], null_horizon_s=365 * 86_400),
    journey=JourneyConfig(allowed_lateness_s=3600),
    windows=WindowsConfig(sizes_s=[86_400], step_s=3600),
)
TOUCHPOINTS = ["landing_page", "pricing_page", "blog_post", "signup", "demo_request",
               "email_open", "purchase", "cancel"]


def simulated(seed: int) -> list[ResolvedEvent]:
    rng = random.Random(seed)
    events = []
    for c in range(300):
        t = T0_MS + rng.randint(0, 600) * MIN_MS
        for _ in range(rng.randint(1, 25)):
            t += rng.randint(1, 180) * MIN_MS
            tp = rng.choices(TOUCHPOINTS, weights=[5, 4, 3, 2, 1, 3, 1, 0.3])[0]
            events.append(ResolvedEvent(f"cust-{c}", event(tp, at_ms=t,
                                                           channel=rng.choice(["web", "email"]))))
    return events


def pm4py_dfg(events: list[ResolvedEvent]) -> dict[tuple[str, str], int]:
    rows = []
    by_customer: dict[str, list[ResolvedEvent]] = defaultdict(list)
    for e in events:
        by_customer[e.customer_id].append(e)
    for cid, evs in by_customer.items():
        evs.sort(key=lambda e: (e.ts_ms, event_digest(e.event.event_id)))
        journey_open = False
        for e in evs:
            if not journey_open:
                rows.append((cid, START, e.ts_ms - 1))
                journey_open = True
            tp = e.event.touchpoint
            name = CONVERSION if tp == "purchase" else NULL if tp == "cancel" else tp
            rows.append((cid, name, e.ts_ms))
            journey_open = name not in (CONVERSION, NULL)
    df = pd.DataFrame(rows, columns=["case:concept:name", "concept:name", "ms"])
    df["time:timestamp"] = [datetime.fromtimestamp(ms / 1000, tz=UTC) for ms in df["ms"]]
    dfg, _, _ = pm4py.discover_dfg(df, case_id_key="case:concept:name",
                                   activity_key="concept:name", timestamp_key="time:timestamp")
    return {edge: n for edge, n in dfg.items() if edge[1] != START}


@pytest.mark.parametrize("seed", [1, 2])
def test_first_order_counts_match_pm4py_dfg(seed: int) -> None:
    events = simulated(seed)
    rng = random.Random(seed)
    # Arrive out of order within the lateness, with some duplicates: same counts expected.
    arrivals = events + rng.sample(events, 50)
    delays = [rng.randint(0, 3_600_000) for _ in arrivals]
    arrivals = [e for _, e in sorted(zip(delays, arrivals, strict=True),
                                     key=lambda d: d[1].ts_ms + d[0])]
    journeys = JourneyProcessor(CONFIG)
    counter = TransitionCounter(CONFIG.windows, CONFIG.journey.allowed_lateness_s)
    for i in range(0, len(arrivals), 500):
        out = journeys.apply(arrivals[i:i + 500])
        assert not out.late
        counter.update(out.steps)
        counter.advance(journeys.watermark_ms)
    counter.advance(journeys.watermark_ms + 10 * 3_600_000)
    ours = counter.totals.pairs()
    assert ours == pm4py_dfg(events)
    assert sum(n for (src, _), n in ours.items() if src == START) > 300

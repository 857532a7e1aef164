"""What a streaming merge costs the partition its loser leaves: `JourneyChain.detach_customer`
with W events waiting for the frontier (issue 6).

    python bench/bench_detach.py [--waiting 2000 50000] [--customers 2000] [--merges 200]

A streaming worker holds every event of the last `journey.allowed_lateness_s` in the chain's
reorder buffer (1 s of events in the streaming bench, an hour's by default). Each merge whose
loser lives on a partition detaches the loser there: its journey, its waiting events, its path
and funnel runs. This fills a chain with W events of `--customers` customers (all waiting: the
lateness is an hour and the events span less), then times `--merges` detaches of distinct
losers, with the native reorder buffer (the default where journeymap_journeys is built) and,
as the baseline measured in the same run, with the Python engine's list (`journey.engine =
"python"`), which must read every waiting entry. Prints microseconds per detach and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from processors.chain import JourneyChain
from processors.config import JourneyConfig, OutcomesConfig, ProcessingConfig
from processors.events import ResolvedEvent, TouchpointEvent

T0_MS = 1_772_323_200_000


def filled(engine: str, waiting: int, customers: int) -> JourneyChain:
    config = ProcessingConfig(
        outcomes=OutcomesConfig(conversion=["purchase"], churn=["cancel"], null_horizon_s=3600),
        journey=JourneyConfig(engine=engine, allowed_lateness_s=3600),  # type: ignore[arg-type]
        identity_salt="bench",
    )
    chain = JourneyChain(config)
    events = [
        ResolvedEvent(f"customer-{i % customers:06d}", TouchpointEvent.model_validate({
            "event_id": f"event-{i:09d}", "occurred_at": T0_MS + i * 50, "channel": "web",
            "touchpoint": "pricing_page" if i % 3 else "landing_page",
            "identities": {"anonymous_id": f"anon-{i % customers:06d}"}}), "all")
        for i in range(waiting)
    ]
    chain.process_resolved(events)
    return chain


def per_detach_us(engine: str, waiting: int, customers: int, merges: int) -> tuple[float, str]:
    chain = filled(engine, waiting, customers)
    kind = type(chain._pending).__name__
    assert len(chain._pending) == waiting, "every event must still be waiting"
    started = time.perf_counter()
    for k in range(merges):
        chain.detach_customer(f"customer-{k:06d}", f"customer-{customers - 1 - k:06d}")
    return (time.perf_counter() - started) / merges * 1e6, kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waiting", type=int, nargs="+", default=[2000, 50_000],
                    help="events waiting in the reorder buffer (one run per value)")
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--merges", type=int, default=200)
    args = ap.parse_args()
    if args.merges * 2 > args.customers:
        ap.error("--customers must be at least twice --merges (distinct losers and winners)")
    for waiting in args.waiting:
        native, kind = per_detach_us("auto", waiting, args.customers, args.merges)
        python, _ = per_detach_us("python", waiting, args.customers, args.merges)
        print(f"{waiting:>9,} events waiting: {native:10,.0f} us per detach ({kind}); baseline "
              f"the Python engine's list {python:10,.0f} us; ratio {python / native:6.1f}x")


if __name__ == "__main__":
    main()

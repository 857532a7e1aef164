"""Decode + validate throughput: events/s on one core, next to `orjson.loads` of the same bytes.

    python bench/bench_decode.py [--events 200000] [--repeat 3]

Target (issue 2): >= 200k validated events/s.
"""

from __future__ import annotations

import argparse
import random
import time

import orjson

from processors.validation import Accepted, Source, decode

CHANNELS = ["web", "app", "email", "support", "sales", "ads"]
TOUCHPOINTS = ["landing_page", "pricing_page", "signup", "email_open", "support_ticket", "purchase"]


def make_messages(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        body: dict[str, object] = {
            "event_id": f"evt-{i:09d}",
            "occurred_at": (
                f"2026-03-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
                f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z"
                if i % 2
                else 1_772_000_000_000 + rng.randint(0, 10**9)
            ),
            "channel": rng.choice(CHANNELS),
            "touchpoint": rng.choice(TOUCHPOINTS),
            "identities": {"anonymous_id": f"anon-{rng.randint(0, 10**6)}"},
            "session_id": f"s-{rng.randint(0, 10**6)}",
        }
        if i % 3 == 0:
            body["identities"] = {"email": f"user{i}@example.com", "user_id": f"u-{i}"}
        if i % 10 == 0:
            body["properties"] = {"plan": "pro", "seats": rng.randint(1, 50)}
        if i % 20 == 0:
            body["revenue"] = round(rng.uniform(10, 500), 2)
        out.append(orjson.dumps(body))
    return out


def best_rate(fn, messages: list[bytes], repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        fn(messages)
        elapsed = time.perf_counter() - start
        best = max(best, len(messages) / elapsed)
    return best


def parse_only(messages: list[bytes]) -> None:
    for raw in messages:
        orjson.loads(raw)


def decode_validate(messages: list[bytes]) -> None:
    source = Source("touchpoints.raw", 0, 0)
    for raw in messages:
        result = decode(raw, source)
        assert isinstance(result, Accepted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    messages = make_messages(args.events)
    baseline = best_rate(parse_only, messages, args.repeat)
    rate = best_rate(decode_validate, messages, args.repeat)
    print(f"events: {len(messages)}  mean size: {sum(map(len, messages)) / len(messages):.0f} B")
    print(f"baseline orjson.loads:   {baseline:12,.0f} events/s")
    print(f"decode + validate:       {rate:12,.0f} events/s")
    print(f"ratio to orjson.loads:   {rate / baseline:12.3f}")
    print(f"target >= 200,000/s:     {'met' if rate >= 200_000 else 'NOT met'}")


if __name__ == "__main__":
    main()

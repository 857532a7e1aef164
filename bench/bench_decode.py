"""Decode + validate throughput: events/s on one core, next to `orjson.loads` of the same bytes.

    python bench/bench_decode.py [--events 200000] [--repeat 3] [--batch 1000]
    valgrind --tool=callgrind python bench/bench_decode.py --events 2000 --only batch --rounds 5

Times `decode_batch` (what the chain and the worker call, batches of `--batch` messages with
their Kafka positions, made before the timing), `decode_lines` (what the replay calls: the
same batches as file lines, their positions made inside the timing, as every real caller does),
the ingest agent's call (Kafka messages in, their positions made inside the timing by
`sources_of`; and, for comparison, by one `Source(...)` per message as before),
`decode_batch` with the Python engine (`decode.engine = python`: no native fast path),
and `decode` one message at a time, all against plain `orjson.loads`.
The passes are interleaved and the best CPU time of each is kept, so a shared machine skews
them alike. Target (issue 2): >= 200k validated events/s.

`--only PASS --rounds R` runs one pass R times without timing or output, for an instruction
count that does not depend on the machine's load: the difference between `--rounds 5` and
`--rounds 1` under callgrind, divided by 4 x `--events`, is the pass's instructions per event.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from processors.validation import (
    Accepted,
    DecodeEngine,
    Source,
    decode,
    decode_batch,
    decode_engine,
    decode_lines,
    sources_of,
)

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


@dataclass(frozen=True, slots=True)
class Message:
    """What the ingest agent reads from a Kafka message (Faust's `Message` attributes)."""

    topic: str
    partition: int
    offset: int
    value: bytes


def best_rates(passes: dict[str, Callable[[], int]], n: int, repeat: int) -> dict[str, float]:
    """Events/s of each pass: best CPU time of `repeat` rounds, the passes taking turns."""
    best = dict.fromkeys(passes, float("inf"))
    for _ in range(repeat):
        for name, fn in passes.items():
            start = time.process_time()
            done = fn()
            elapsed = time.process_time() - start
            assert done == n, f"{name}: {done} of {n} events accepted"
            best[name] = min(best[name], elapsed)
    return {name: n / elapsed for name, elapsed in best.items()}


def parse_only(messages: list[bytes]) -> int:
    n = 0
    for raw in messages:
        orjson.loads(raw)
        n += 1
    return n


def decode_each(batches: list[list[tuple[bytes, Source]]]) -> int:
    """What the ingest agent did before decode_batch: one `decode` per message of a batch."""
    n = 0
    for batch in batches:
        results = [decode(raw, source) for raw, source in batch]
        n += len([r for r in results if isinstance(r, Accepted)])
    return n


def decode_batches(
    batches: list[list[tuple[bytes, Source]]], engine: DecodeEngine = "auto"
) -> int:
    n = 0
    for batch in batches:
        accepted, dead = decode_batch(batch, engine)
        assert not dead
        n += len(accepted)
    return n


def ingest(batches: list[list[Message]]) -> int:
    """The ingest agent's call: positions made from the messages by `sources_of`."""
    n = 0
    for batch in batches:
        values = [m.value or b"" for m in batch]
        accepted, dead = decode_batch(zip(values, sources_of(batch), strict=True))
        assert not dead
        n += len(accepted)
    return n


def ingest_per_message(batches: list[list[Message]]) -> int:
    """The ingest agent's call before: one `Source(...)` per message."""
    n = 0
    for batch in batches:
        accepted, dead = decode_batch(
            (m.value or b"", Source(m.topic, m.partition, m.offset)) for m in batch
        )
        assert not dead
        n += len(accepted)
    return n


def decode_files(chunks: list[list[bytes]]) -> int:
    """What the replay does: each chunk of lines with its file name and first line number."""
    n = 0
    for i, chunk in enumerate(chunks):
        accepted, dead = decode_lines(chunk, "touchpoints.jsonl", 1 + i * len(chunk))
        assert not dead
        n += len(accepted)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument(
        "--only",
        choices=["orjson", "batch", "batch_python", "lines", "ingest", "ingest_source", "each"],
    )
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    messages = make_messages(args.events)
    # Kafka hands every message over with its position; build them outside the timing.
    positioned = [(raw, Source("touchpoints.raw", 0, i)) for i, raw in enumerate(messages)]
    batches = [positioned[i : i + args.batch] for i in range(0, len(positioned), args.batch)]
    chunks = [messages[i : i + args.batch] for i in range(0, len(messages), args.batch)]
    # Two partitions interleaved in runs of 100, as a consumer may hand them over.
    kafka = [Message("touchpoints.raw", i // 100 % 2, i, raw) for i, raw in enumerate(messages)]
    kafka_batches = [kafka[i : i + args.batch] for i in range(0, len(kafka), args.batch)]
    # The inputs are built up front; keep the collector from re-scanning them on every pass
    # (a worker holds one batch at a time, not the whole stream).
    gc.collect()
    gc.freeze()
    passes: dict[str, Callable[[], int]] = {
        "orjson": lambda: parse_only(messages),
        "batch": lambda: decode_batches(batches),
        "batch_python": lambda: decode_batches(batches, "python"),
        "lines": lambda: decode_files(chunks),
        "ingest": lambda: ingest(kafka_batches),
        "ingest_source": lambda: ingest_per_message(kafka_batches),
        "each": lambda: decode_each(batches),
    }
    if args.only:
        passes[args.only]()  # once before the counted rounds: first-call costs
        for _ in range(args.rounds):
            assert passes[args.only]() == len(messages)
        return
    rates = best_rates(passes, len(messages), args.repeat)
    base, rate = rates["orjson"], rates["batch"]
    print(f"events: {len(messages)}  mean size: {sum(map(len, messages)) / len(messages):.0f} B")
    print(f"baseline orjson.loads:          {base:12,.0f} events/s")
    print(f"decode_batch (batches of {args.batch:>5}): {rate:12,.0f} events/s "
          f"(engine {decode_engine('auto')})")
    print(f"decode_batch, Python engine:    {rates['batch_python']:12,.0f} events/s")
    print(f"decode_lines (replay's chunks): {rates['lines']:12,.0f} events/s")
    print(f"ingest agent (sources_of):      {rates['ingest']:12,.0f} events/s")
    print(f"ingest, a Source() per message: {rates['ingest_source']:12,.0f} events/s")
    print(f"decode, one message at a time:  {rates['each']:12,.0f} events/s")
    print(f"ratio decode_batch / orjson:    {rate / base:12.3f}")
    print(f"ratio decode_batch / Python engine: {rate / rates['batch_python']:8.3f}")
    print(f"ratio decode_lines / orjson:    {rates['lines'] / base:12.3f}")
    print(f"ratio ingest / orjson:          {rates['ingest'] / base:12.3f}")
    print(f"ratio ingest (Source()) / orjson: {rates['ingest_source'] / base:10.3f}")
    print(f"ratio decode / orjson:          {rates['each'] / base:12.3f}")
    print(f"target >= 200,000/s:            {'met' if rate >= 200_000 else 'NOT met'}")


if __name__ == "__main__":
    main()

"""How fast one process can read (and forward) one Kafka topic, client by client (issue 6).

    python bench/bench_passthrough.py [--messages 100000] [--modes a,b,...] [--repeat 1]

The streaming bench's baseline is "a pass-through Faust agent on the same broker"; it made
1-2k events/s on this machine, far below what the broker serves. This script puts the layers
side by side on one topic of simulator events (one partition, ~220 B values, keyed), each mode
in a fresh process reading the whole topic from the beginning with its own consumer group:

* ``confluent``: a bare confluent-kafka consumer (``consume(1000)``), the floor of the cost;
* ``aiokafka``: a bare aiokafka consumer (``getmany``), Faust's client without Faust;
* ``faust-consume``: a Faust agent that only takes batches (``take_events(1000, within=0.5)``,
  the worker's batching) and counts them;
* ``faust-pass-aiokafka``: the streaming bench's pass-through as it was until session 6: each
  record sent with ``Topic.send`` (Faust's aiokafka producer), the batch's sends awaited
  together, then ``producer.flush()``;
* ``faust-pass``: the same agent forwarding each batch with one confluent-kafka producer
  (``streams.delivery.OutputProducer``, acks=all, idempotent, lz4, linger 5 ms; ``deliver()``
  in a thread before the next batch): what the worker's ingest agent does with its outputs.

Figure: messages/s from the first batch taken to the last one done (forwarded and acknowledged
by the broker, for the pass-throughs), and messages per CPU-second of the process (all its
threads) over the same span. Baseline: the bare confluent-kafka consumer of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

FAUST_MODES = ("faust-consume", "faust-pass-aiokafka", "faust-pass")
# "+drain": the same with streams.drain installed (what the worker runs)
MODES = ("confluent", "aiokafka", *FAUST_MODES, *(f"{m}+drain" for m in FAUST_MODES))
BATCH_MAX, WITHIN_S = 1000, 0.5


class Span:
    """Wall and process CPU time from the first batch to the last."""

    def __init__(self) -> None:
        self.t0 = self.c0 = 0.0
        self.n = 0

    def start(self) -> None:
        if not self.t0:
            self.t0, self.c0 = time.perf_counter(), time.process_time()

    def result(self) -> dict[str, float]:
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        return {"n": self.n, "wall_s": wall, "cpu_s": cpu}


def run_confluent(bootstrap: str, topic: str, n: int) -> dict[str, float]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    span = Span()
    while span.n < n:
        msgs = consumer.consume(BATCH_MAX, 1.0)
        if msgs:
            span.start()
            span.n += sum(1 for m in msgs if m.error() is None)
    out = span.result()
    consumer.close()
    return out


def run_aiokafka(bootstrap: str, topic: str, n: int) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer

    async def go() -> dict[str, float]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                    group_id=uuid.uuid4().hex, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        span = Span()
        try:
            while span.n < n:
                got = await consumer.getmany(timeout_ms=1000, max_records=BATCH_MAX)
                if got:
                    span.start()
                    span.n += sum(len(records) for records in got.values())
            return span.result()
        finally:
            await consumer.stop()

    return asyncio.run(go())


def run_faust(mode: str, bootstrap: str, topic: str, n: int, result_file: str,
              workdir: str) -> None:
    import faust
    from faust.worker import Worker

    from streams import drain
    from streams.delivery import OutputProducer

    if mode.endswith("+drain"):
        drain.install()
        mode = mode.removesuffix("+drain")

    group = uuid.uuid4().hex
    app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://",
                    web_enabled=False, value_serializer="raw", key_serializer="raw",
                    consumer_auto_offset_reset="earliest", producer_acks=-1,
                    broker_commit_every=BATCH_MAX, autodiscover=False,
                    **json.loads(os.environ.get("BENCH_FAUST_SETTINGS") or "{}"))
    src = app.topic(topic, key_type=bytes, value_type=bytes, internal=False)
    dst_name = f"{topic}-out-{group[:8]}"
    dst = app.topic(dst_name, key_type=bytes, value_type=bytes, internal=False, partitions=1)
    out = OutputProducer(bootstrap) if mode == "faust-pass" else None
    span = Span()

    @app.agent(src)
    async def copy(stream: Any) -> None:
        async for batch in stream.take_events(BATCH_MAX, within=WITHIN_S):
            span.start()
            if mode == "faust-pass-aiokafka":
                sends = [dst.send(key=ev.message.key, value=ev.message.value) for ev in batch]
                for fut in await asyncio.gather(*sends):
                    await fut
                await app.producer.flush()
            elif out is not None:
                for ev in batch:
                    out.send(dst_name, ev.message.key, ev.message.value)
                await asyncio.to_thread(out.deliver)
            span.n += len(batch)
            if span.n >= n:
                Path(result_file).write_text(json.dumps(span.result()))

    Path(workdir).mkdir(parents=True, exist_ok=True)
    Worker(app, loglevel="warning", workdir=workdir, redirect_stdouts=False,
           ).execute_from_commandline()


def child(mode: str, bootstrap: str, topic: str, n: int, workdir: Path,
          timeout_s: float) -> dict[str, float]:
    result = workdir / f"{mode}-{uuid.uuid4().hex[:6]}.json"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", mode, bootstrap, topic, str(n), str(result),
         str(workdir / mode)], cwd=ROOT, stdout=(workdir / f"{mode}.log").open("wb"),
        stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not result.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"{mode} exited; see {workdir / (mode + '.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{mode} did not read {n} messages in {timeout_s:g} s")
            time.sleep(0.1)
        time.sleep(0.1)
        return dict(json.loads(result.read_text()))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def produce(bootstrap: str, topic: str, n: int) -> None:
    from simulator.model import SimConfig, simulate
    from streams.producer import key_of

    lines = simulate(SimConfig(customers=1000, seed=1)).lines
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    for i in range(n):
        line = lines[i % len(lines)]
        producer.produce(topic, value=line, key=key_of(line))
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("could not produce the messages")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeat", type=int, default=1, help="rounds over the modes")
    ap.add_argument("--timeout-s", type=float, default=300.0)
    args = ap.parse_args()
    from streams.settings import load_settings

    bootstrap = load_settings().kafka.bootstrap_servers
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"bench-pt-{uuid.uuid4().hex[:10]}"
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(30)
    workdir = Path(tempfile.mkdtemp(prefix="bench-pt-"))
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    load = [os.getloadavg()[0]]
    try:
        produce(bootstrap, topic, args.messages)
        for _ in range(args.repeat):
            for mode in modes:
                r = child(mode, bootstrap, topic, args.messages, workdir, args.timeout_s)
                results[mode].append(r)
                print(f"  {mode:20s} {r['n'] / r['wall_s']:10,.0f} msg/s  "
                      f"{r['n'] / max(r['cpu_s'], 1e-9):10,.0f} msg/CPU-s", flush=True)
        load.append(os.getloadavg()[0])
    finally:
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(topic)]
        for f in admin.delete_topics(names, operation_timeout=30).values():
            f.result(30)
    print(f"\n{args.messages:,} messages (simulator events, ~220 B, keyed), one partition, "
          f"broker {bootstrap}; load average {load[0]:.1f} -> {load[-1]:.1f} on "
          f"{os.cpu_count()} cores; median of {args.repeat}")
    base = None
    for mode in modes:
        rates = sorted(r["n"] / r["wall_s"] for r in results[mode])
        per_cpu = sorted(r["n"] / max(r["cpu_s"], 1e-9) for r in results[mode])
        rate, cpu = rates[len(rates) // 2], per_cpu[len(per_cpu) // 2]
        base = base or (rate if mode == "confluent" else None)
        ratio = f"  {rate / base:.3f} of confluent" if base else ""
        print(f"{mode:20s} {rate:10,.0f} msg/s  {cpu:10,.0f} msg/CPU-s{ratio}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, bootstrap, topic, n, result_file, workdir = sys.argv[2:8]
        if mode.startswith("faust"):
            sys.argv = [sys.argv[0], "worker"]
            run_faust(mode, bootstrap, topic, int(n), result_file, workdir)
        else:
            runner = run_confluent if mode == "confluent" else run_aiokafka
            Path(result_file).write_text(json.dumps(runner(bootstrap, topic, int(n))))
    else:
        main()

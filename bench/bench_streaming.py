"""The streaming pipeline on real Kafka, Redis and ClickHouse (issue 6), next to a pass-through.

    python bench/bench_streaming.py [--customers 10000] [--live-seconds 30] [--rate R]

One run, unique topics / consumer groups / ClickHouse database / Redis keys, loopback only:

1. The simulator's history (seed 1, drift injected into self_serve_dev at mid-history) is cut
   at the drift. The part before it is produced as a backlog twice: to the worker's raw topic
   and to a pass-through topic.
2. Baseline: a pass-through Faust agent built like the worker (its Faust settings, batching
   and consumer patch, streams.drain; each batch forwarded to another topic with the worker's
   confluent-kafka output producer and acknowledged by the broker before the next) drains its
   copy: events/s between 10 % and 90 % of the copy reaching the output topic (its watermark,
   polled every 0.1 s). With --old-passthrough, also the pass-through of sessions 1-5 (each
   value sent with Faust's aiokafka producer, the batch's sends awaited, then a flush; no
   consumer patch) on the same copy (its own consumer group and output topic), for
   comparisons with earlier figures.
3. One `journeymap worker` (models on) drains the backlog: events/s through the journey agent
   (its /metrics, between 10 % and 90 % of the backlog) and end to end, from the first event
   taken in to 99 % of the backlog's `touchpoints` rows written (the chain releases, scores and
   writes an event once final; releases can come in bursts), polled every 0.5 s. RSS from
   /proc at a third of the backlog and at its end; RSS for 1M customers is extrapolated
   linearly from the growth between the two, per true customer seen (simulator truth): a
   rough figure, from a few thousand customers early in the run; bench/bench_state_memory.py
   measures the steady growth per customer over the 1M-line simulation.
   Also per CPU-second of each one's own process (/proc/<pid>/stat, between the same 10 % and
   90 % marks): events/s fall when other processes take the cores (on a shared 2-core machine
   the pass-through alone swung 2x between runs a minute apart), CPU time much less so.
   The worker's CPU per event of the live phase is printed too, user and system time (a live
   event costs more than a backlog event: smaller batches and fetches, the drift's model work).
4. Live: the events after the drift, each stamped `occurred_at = now` when produced, at half the
   lower of the two measured rates (or --rate). After --warm-seconds, one event in
   --sample-every is timed from produce to its `touchpoints` row being visible (ClickHouse
   polled every 0.2 s), and every alert from produce of the event that raised it (`ts_ms` = that
   event's produce time, in ms) to its arrival on the alerts topic, and every scores message the
   same way (the worker sends, per batch, each customer's latest scores message and every
   alert, together, after the batch's rows are written). The worker runs with
   journey.allowed_lateness_s = --lateness-s (0.25): rows are final,
   and written, once the partition's event time has passed them by the allowed lateness; with
   the default 1 h they would appear an hour later, by design.

With --trace the worker runs with bench/worker_trace.py loaded (bench/trace/sitecustomize.py):
the sampled live events' seconds from produce to each step inside the worker (ingest batch
handed over, re-keyed, journey batch, released by the chain, written, scores and alerts
acknowledged) are printed, and the trace (with samples of the event loop whenever it was
blocked for 0.3 s) stays in the run's log directory with sampled.json.

Every process started here is stopped by its PID; the run ends by itself (--max-seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from simulator.model import SimConfig, simulate  # noqa: E402
from streams.producer import EventProducer  # noqa: E402
from streams.services import clickhouse_server_url  # noqa: E402
from streams.settings import load_settings  # noqa: E402

TOPICS = ("raw", "resolved", "dlq", "merges", "late", "scores", "alerts", "alerts_dlq")
WORKER_PORT, PASS_PORT = 16391, 16392


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise TimeoutError(f"--max-seconds reached while {what}")


# -- the pass-through agent (run as a subprocess of this script) --------------------------------


def passthrough_main(bootstrap: str, src: str, dst: str, group: str, batch_max: int,
                     within: float, workdir: str, old: bool = False) -> None:
    import faust
    from faust.worker import Worker

    from streams import drain
    from streams.delivery import OutputProducer

    if not old:
        drain.install()  # as the worker does (streams/commands/worker.py)
    out = OutputProducer(bootstrap)
    app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://",
                    web_host="127.0.0.1", web_bind="127.0.0.1", web_port=PASS_PORT,
                    value_serializer="raw", key_serializer="raw",
                    consumer_auto_offset_reset="earliest", producer_acks=-1,
                    broker_commit_every=batch_max, autodiscover=False)
    if not old:  # the worker's fetch settings (kafka.consumer_fetch_*), as create_app sets them
        k = load_settings().kafka
        drain.fetch_sizes(app, k.consumer_fetch_min_bytes, k.consumer_fetch_max_wait_ms)
    src_topic = app.topic(src, key_type=bytes, value_type=bytes, internal=False)
    dst_topic = app.topic(dst, key_type=bytes, value_type=bytes, internal=False)

    @app.agent(src_topic)
    async def copy(stream: Any) -> None:
        async for batch in stream.take_events(batch_max, within=within):
            if old:  # sessions 1-5: one aiokafka send per record
                sends = [dst_topic.send(key=ev.message.key, value=ev.message.value)
                         for ev in batch]
                for fut in await asyncio.gather(*sends):
                    await fut
                await app.producer.flush()
                continue
            for ev in batch:
                out.send(dst, ev.message.key, ev.message.value or b"")
            await asyncio.to_thread(out.deliver)

    Path(workdir).mkdir(parents=True, exist_ok=True)
    Worker(app, loglevel="warning", workdir=workdir, redirect_stdouts=False
           ).execute_from_commandline()


# -- helpers ------------------------------------------------------------------------------------


def stop_pid(proc: subprocess.Popen[bytes], what: str) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        print(f"  {what} (pid {proc.pid}) ignored SIGTERM for 60 s; killing it")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` so far, its threads included (a forked
    checkpoint child's own time is not: it runs beside the worker, as the broker does)."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid` so far (see :func:`cpu_s`)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def metrics(port: int) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("journeymap_") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def read_metrics(deadline: Deadline, patience_s: float = 90.0) -> dict[str, float]:
    """The worker's counters; a worker too busy to answer for `patience_s` is an error."""
    until = time.monotonic() + patience_s
    while time.monotonic() < until:
        deadline.check("reading the worker's metrics")
        m = metrics(WORKER_PORT)
        if m is not None:
            return m
        time.sleep(0.5)
    raise TimeoutError(f"the worker's /metrics did not answer for {patience_s:g} s")


def high_watermark(consumer: Consumer, topic: str, partitions: int) -> int:
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
               for p in range(partitions))


def shifted(lines: list[bytes], shift_ms: int) -> list[bytes]:
    """The lines with occurred_at moved by shift_ms (relative timing kept)."""
    out = []
    for line in lines:
        body = orjson.loads(line)
        body["occurred_at"] = rfc3339(int(event_ms(line)) + shift_ms)
        out.append(orjson.dumps(body))
    return out


def sustained(samples: list[tuple[float, float]], n: int) -> tuple[float, float]:
    """(events/s between 10 % and 90 % of n, seconds from first to last) from (t, count)."""
    def first_at(fraction: float) -> float:
        return next(t for t, c in samples if c >= fraction * n)

    t10, t90 = first_at(0.1), first_at(0.9)
    start = next(t for t, c in samples if c > 0)
    return 0.8 * n / max(t90 - t10, 1e-3), samples[-1][0] - start


def per_cpu_second(samples: list[tuple[float, float]], cpus: list[float], n: int) -> float:
    """Events per CPU-second of the process between 10 % and 90 % of n: `cpus[i]` is its CPU
    time when `samples[i]` was taken. Unlike events/s it does not fall when other processes
    take the machine's cores (the broker, ClickHouse, anything else running)."""
    def cpu_at(fraction: float) -> float:
        return next(cpu for (_, c), cpu in zip(samples, cpus, strict=True) if c >= fraction * n)

    return 0.8 * n / max(cpu_at(0.9) - cpu_at(0.1), 1e-3)


def produce_all(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    with EventProducer(bootstrap, topic, compression="lz4") as producer:
        producer.send_many(lines)
        if producer.close(60).n_undelivered:
            raise RuntimeError(f"could not produce the backlog to {topic}")


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{ms % 1000:03d}Z")


def event_ms(line: bytes) -> float:
    """occurred_at of a simulator line (RFC 3339 text or epoch ms) in epoch ms."""
    value = orjson.loads(line)["occurred_at"]
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(value).timestamp() * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cli(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, timeout=180, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"journeymap {' '.join(args)} failed:\n{done.stderr.decode()}")


# -- phases -------------------------------------------------------------------------------------


def drain_passthrough(env: dict[str, str], bootstrap: str, src: str, dst: str, group: str,
                      n: int, partitions: int, workdir: Path, deadline: Deadline,
                      old: bool = False) -> tuple[float, float]:
    """(events/s, events per CPU-second of the pass-through's process) over the copy."""
    s = load_settings()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--passthrough", bootstrap, src, dst, group,
         str(s.worker.batch_max), str(s.worker.batch_within_s),
         str(workdir / ("pt-old" if old else "pt")), "old" if old else "new"],
        env=env, cwd=ROOT, stdout=(workdir / "passthrough.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{group}-watch"})
    try:
        samples: list[tuple[float, float]] = []
        cpus: list[float] = []
        done = 0
        while done < n:
            deadline.check("the pass-through drained its topic")
            if proc.poll() is not None:
                raise RuntimeError(f"the pass-through exited; see {workdir / 'passthrough.log'}")
            done = high_watermark(watcher, dst, partitions)
            samples.append((time.monotonic(), done))
            cpus.append(cpu_s(proc.pid))
            time.sleep(0.1)
        return sustained(samples, n)[0], per_cpu_second(samples, cpus, n)
    finally:
        watcher.close()
        stop_pid(proc, "the pass-through")


def start_worker(env: dict[str, str], workdir: Path, trace: Path | None = None,
                 *, models: bool = True) -> subprocess.Popen[bytes]:
    if trace is not None:  # bench/worker_trace.py, loaded by bench/trace/sitecustomize.py
        env = {**env, "JOURNEYMAP_BENCH_TRACE": str(trace),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "bench" / "trace"), env["PYTHONPATH"]])}
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--web-port", str(WORKER_PORT),
         "--workdir", str(workdir / "worker"), "--loglevel", "warning",
         *(() if models else ("--no-models",))],
        env=env, cwd=ROOT, stdout=(workdir / "worker.log").open("wb"), stderr=subprocess.STDOUT,
    )


def drain_worker(proc: subprocess.Popen[bytes], n: int, workdir: Path, deadline: Deadline,
                 customers_at: list[int], client: Any) -> dict[str, float]:
    """Sustained rate over the backlog, two ways: events through the journey agent (its
    /metrics) and `touchpoints` rows written (the whole pipeline: events are scored and written
    when the chain releases them). RSS at a third of the backlog and at its end, with the true
    customers seen by then (simulator truth)."""
    journey: list[tuple[float, float]] = []
    cpus: list[float] = []  # the worker's CPU time at each sample of `journey`
    written: list[tuple[float, float]] = []
    mid: tuple[float, int] | None = None
    last_change = time.monotonic()
    last_state: tuple[float, float] = (-1.0, -1.0)
    m: dict[str, float] | None = None
    while True:
        deadline.check("the worker drained the backlog")
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited; see {workdir / 'worker.log'}")
        m = metrics(WORKER_PORT) or m
        now = time.monotonic()
        if m is not None:
            taken = m.get("journeymap_events_in_total", 0.0)
            journeyed = sum(m.get(f"journeymap_{k}_total", 0.0)
                            for k in ("applied", "late", "duplicates"))
            rows = float(client.query("SELECT count() FROM touchpoints").result_rows[0][0])
            journey.append((now, journeyed))
            cpus.append(cpu_s(proc.pid))
            written.append((now, rows))
            if mid is None and journeyed >= n / 3:
                mid = (rss_mb(proc.pid)[0], customers_at[min(int(journeyed), n) - 1])
            if (journeyed, rows) != last_state:
                last_state, last_change = (journeyed, rows), now
            applied = m.get("journeymap_applied_total", 0.0)
            accepted = m.get("journeymap_accepted_total", 0.0)
            if (taken >= n and journeyed >= accepted and rows >= applied
                    and now - last_change > 1.0):
                break
            # (the newest events of the backlog wait for later ones by the allowed lateness,
            # which never come in this phase: their rows are not counted)
            if taken >= n and now - last_change > 10.0:
                print(f"  nothing moved for 10 s: {journeyed:,.0f} of {accepted:,.0f} accepted "
                      f"events through the journey agent, {rows:,.0f} of {applied:,.0f} applied "
                      "events written; measuring what was done")
                break
        time.sleep(0.5)
    assert mid is not None and m is not None
    rss, hwm = rss_mb(proc.pid)
    rate, seconds = sustained(journey, int(last_state[0]))
    # Rows can arrive in bursts (the chain holds releases while a merge's transfer is on its
    # way), so the whole pipeline is timed end to end: first event taken in -> 99 % written.
    start = next(t for t, c in journey if c > 0)
    end = next(t for t, c in written if c >= 0.99 * last_state[1])
    rows_seconds = end - start
    rows_rate = last_state[1] / max(rows_seconds, 1e-3)
    half = next(c for t, c in written if t >= start + rows_seconds / 2)
    return {"rate": rate, "seconds": seconds, "rows_rate": rows_rate,
            "per_cpu": per_cpu_second(journey, cpus, int(last_state[0])),
            "rows_seconds": rows_seconds, "rows": last_state[1], "rows_at_half": half,
            "rss_mid_mb": mid[0], "customers_mid": mid[1],
            "rss_mb": rss, "hwm_mb": hwm, "journeyed": last_state[0],
            "taken": m.get("journeymap_events_in_total", 0.0),
            "customers": customers_at[-1]}


class TopicWatcher(threading.Thread):
    """Every message that arrives on a topic from now on (JSON), with its wall arrival time."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        assigned = []
        for p in range(partitions):
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
            assigned.append(TopicPartition(topic, p, high))
        self.consumer.assign(assigned)
        self.got: list[tuple[dict[str, Any], float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.05)
            if msg is not None and msg.error() is None:
                self.got.append((orjson.loads(msg.value()), time.time()))
        self.consumer.close()


class RowWatcher(threading.Thread):
    """First time each sampled event_id is visible in `touchpoints`."""

    def __init__(self, client: Any) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.pending: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.produced: dict[str, float] = {}  # every sampled event's produce time
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.polls = 0
        self.poll_s = 0.0

    def add(self, event_id: str, produced: float) -> None:
        with self.lock:
            self.pending[event_id] = produced
            self.produced[event_id] = produced

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                ids = list(self.pending)
            if ids:
                t0 = time.time()
                rows = self.client.query("SELECT event_id FROM touchpoints WHERE event_id IN "
                                         "%(ids)s", parameters={"ids": ids}).result_rows
                now = time.time()
                self.polls += 1
                self.poll_s += now - t0
                with self.lock:
                    for (event_id,) in rows:
                        produced = self.pending.pop(event_id, None)
                        if produced is not None:
                            self.seen[event_id] = now - produced
            self.stop.wait(0.2)


def live(bootstrap: str, topic: str, lines: list[bytes], rate: float, warm_s: float,
         measure_s: float, sample_every: int, rows: RowWatcher) -> tuple[int, float, float]:
    """Produce `lines` re-stamped with the wall clock at `rate`; returns (n, start, seconds)."""
    producer = EventProducer(bootstrap, topic, compression="none", linger_ms=2)
    start = time.time()
    measured_from = start + warm_s
    i = 0
    for line in lines:
        due = start + i / rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
        now = time.time()
        if now - start > warm_s + measure_s:
            break
        body = orjson.loads(line)
        body["occurred_at"] = rfc3339(int(now * 1000))
        producer.send(orjson.dumps(body))
        if now >= measured_from and i % sample_every == 0:
            rows.add(body["event_id"], now)
        i += 1
    producer.close(30)
    return i, start, time.time() - start


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=None,
                    help="live events/s (default: half the measured sustained rate)")
    ap.add_argument("--warm-seconds", type=float, default=8.0)
    ap.add_argument("--live-seconds", type=float, default=30.0)
    ap.add_argument("--sample-every", type=int, default=10)
    ap.add_argument("--lateness-s", type=float, default=0.25,
                    help="journey.allowed_lateness_s of the worker: rows, scores and alerts "
                         "leave once final, so this is a floor under produce -> row and alert "
                         "latency (default 0.25 s; the live producer here is in order, so events "
                         "go late only when the re-keying reorders them across raw partitions, "
                         "by up to a batch: the count of live events dropped as late is printed)")
    ap.add_argument("--partitions", type=int, default=1,
                    help="partitions per topic (default 1: one worker consumes them all "
                         "anyway; with several, draining a backlog interleaves the raw "
                         "partitions on the way to the customer-keyed topic, and a short allowed "
                         "lateness then drops much of the history as late)")
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--keep", action="store_true", help="keep topics, database and logs")
    ap.add_argument("--trace", action="store_true",
                    help="trace the worker (bench/worker_trace.py) and break the sampled live "
                         "events' latency down by step")
    ap.add_argument("--no-models", action="store_true",
                    help="run the worker without the online models (`journeymap worker "
                         "--no-models`): what the rest of the pipeline makes, the ceiling of "
                         "taking the models off the worker's main thread")
    ap.add_argument("--old-passthrough", action="store_true",
                    help="also run the pass-through of sessions 1-5 (aiokafka sends, no "
                         "consumer patch) and report the worker's ratios to it")
    args = ap.parse_args()
    deadline = Deadline(args.max_seconds)

    settings = load_settings()
    bootstrap = settings.kafka.bootstrap_servers
    partitions = args.partitions
    ch_url = clickhouse_server_url(settings)
    name = f"bench{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    env = {
        **os.environ,
        # this tree first, then the caller's path (e.g. a site directory with other builds)
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "JOURNEYMAP_CLICKHOUSE__URL": ch_url,
        "JOURNEYMAP_CLICKHOUSE__DATABASE": name,
        "JOURNEYMAP_KAFKA__CONSUMER_GROUP": name,
        "JOURNEYMAP_JOURNEY__ALLOWED_LATENESS_S": str(args.lateness_s),
        "JOURNEYMAP_KAFKA__PARTITIONS": str(partitions),
    }
    for t in TOPICS:
        env[f"JOURNEYMAP_KAFKA__TOPICS__{t.upper()}"] = f"{name}.{t}"
    pt_in, pt_out, pt_old = f"{name}.pt-in", f"{name}.pt-out", f"{name}.pt-old"
    admin = AdminClient({"bootstrap.servers": bootstrap})

    cfg = SimConfig(customers=args.customers, seed=args.seed)
    print(f"simulating {args.customers:,} customers (seed {args.seed}) ...", flush=True)
    sim = simulate(cfg)
    drift_at = cfg.drift_at_ms or 0
    cut = next(i for i, line in enumerate(sim.lines) if event_ms(line) >= drift_at)
    backlog, after = sim.lines[:cut], sim.lines[cut:]
    owner, seen = sim.truth.customer_of_event(), set()
    customers_at = []  # true customers among the first i + 1 backlog events
    for line in backlog:
        seen.add(owner.get(orjson.loads(line)["event_id"]))
        customers_at.append(len(seen))
    print(f"{len(sim.lines):,} events: backlog {len(backlog):,} before the drift "
          f"({cfg.drift_segment} conversion x{cfg.drift_conversion_factor}), "
          f"{len(after):,} after it for the live phase")
    print(f"run {name}: Kafka {bootstrap}, {partitions} partitions, fetches of "
          f"{settings.kafka.consumer_fetch_min_bytes:,} bytes or "
          f"{settings.kafka.consumer_fetch_max_wait_ms} ms; ClickHouse {ch_url}; "
          f"logs in {workdir}", flush=True)

    worker = None
    results: dict[str, Any] = {}
    try:
        cli(env, "topics", "create")
        cli(env, "migrate")
        for f in admin.create_topics([NewTopic(t, partitions, 1) for t in (pt_in, pt_out, pt_old)]
                                     ).values():
            f.result(30)
        # The history before the drift, moved so that it ends now: the live events that follow
        # (stamped with the wall clock) continue it without a jump in event time.
        backlog = shifted(backlog, int(time.time() * 1000) - drift_at)
        produce_all(bootstrap, pt_in, backlog)
        produce_all(bootstrap, env["JOURNEYMAP_KAFKA__TOPICS__RAW"], backlog)
        load1 = os.getloadavg()[0]
        import clickhouse_connect

        parts = urllib.parse.urlsplit(ch_url)
        client = clickhouse_connect.get_client(
            host=parts.hostname, port=parts.port or 8123, database=name,
            username=settings.clickhouse.user,
            password=settings.clickhouse.password.get_secret_value())

        print("pass-through Faust agent draining the backlog ...", flush=True)
        pt_rate, pt_per_cpu = drain_passthrough(env, bootstrap, pt_in, pt_out, f"{name}-pt",
                                                len(backlog), partitions, workdir, deadline)
        print(f"  pass-through: {pt_rate:,.0f} events/s", flush=True)
        pt_old_rate = None
        if args.old_passthrough:
            print("pass-through of sessions 1-5 (aiokafka sends, no consumer patch) ...",
                  flush=True)
            pt_old_rate, _ = drain_passthrough(env, bootstrap, pt_in, pt_old, f"{name}-pt-old",
                                            len(backlog), partitions, workdir, deadline,
                                            old=True)
            print(f"  old pass-through: {pt_old_rate:,.0f} events/s", flush=True)

        print("journeymap worker (models on) draining the same backlog ...", flush=True)
        trace = workdir / "trace.jsonl" if args.trace else None
        worker = start_worker(env, workdir, trace, models=not args.no_models)
        w = drain_worker(worker, len(backlog), workdir, deadline, customers_at, client)
        print(f"  worker: {w['rate']:,.0f} events/s through the journey agent, "
              f"{w['rows_rate']:,.0f} events/s end to end into ClickHouse "
              f"({w['rows']:,.0f} rows in {w['rows_seconds']:.0f} s)", flush=True)

        rate = args.rate or min(w["rate"], w["rows_rate"]) / 2
        print(f"live: {rate:,.0f} events/s, {args.warm_seconds:g} s warm-up then "
              f"{args.live_seconds:g} s measured ...", flush=True)
        alerts = TopicWatcher(bootstrap, env["JOURNEYMAP_KAFKA__TOPICS__ALERTS"], 1)
        scores = TopicWatcher(bootstrap, env["JOURNEYMAP_KAFKA__TOPICS__SCORES"], partitions)
        rows = RowWatcher(client)
        before = read_metrics(deadline)
        live_cpu0 = cpu_split(worker.pid)
        for thread in (alerts, scores, rows):
            thread.start()
        n_live, live_start, live_s = live(
            bootstrap, env["JOURNEYMAP_KAFKA__TOPICS__RAW"], after, rate, args.warm_seconds,
            args.live_seconds, args.sample_every, rows)
        wait_until = time.monotonic() + 30
        while rows.pending and time.monotonic() < wait_until:
            time.sleep(0.2)
        time.sleep(2)
        for thread in (alerts, scores, rows):
            thread.stop.set()
            thread.join(10)
        after_m = read_metrics(deadline)
        live_cpu = [b - a for a, b in zip(live_cpu0, cpu_split(worker.pid), strict=True)]
        late_live = (after_m.get("journeymap_late_total", 0.0)
                     - before.get("journeymap_late_total", 0.0))
        load2 = os.getloadavg()[0]

        table_alerts = int(client.query("SELECT uniqExact(alert_id) FROM alerts"
                                        ).result_rows[0][0])
        live_rows = int(client.query(
            "SELECT count() FROM touchpoints WHERE occurred_at >= fromUnixTimestamp64Milli("
            "%(ms)s)", parameters={"ms": int(live_start * 1000)}).result_rows[0][0])
        applied_live = {k: after_m.get(f"journeymap_{k}_total", 0.0)
                        - before.get(f"journeymap_{k}_total", 0.0)
                        for k in ("events_in", "applied", "late", "duplicates")}
        print(f"  live phase: produced {n_live:,}; worker took in "
              f"{applied_live['events_in']:,.0f}, applied {applied_live['applied']:,.0f} "
              f"(late {applied_live['late']:,.0f}, duplicates "
              f"{applied_live['duplicates']:,.0f}); {live_rows:,} of them are rows in touchpoints; "
              f"{len(scores.got):,} scores messages", flush=True)
        lat = list(rows.seen.values())
        measured_ms = (live_start + args.warm_seconds) * 1000
        live_alerts = [(a, got) for a, got in alerts.got if a["ts_ms"] >= live_start * 1000]
        alert_lat = [got - a["ts_ms"] / 1000 for a, got in live_alerts]
        score_lat = [got - sc["ts_ms"] / 1000 for sc, got in scores.got
                     if sc["ts_ms"] >= measured_ms]
        results = dict(pt_rate=pt_rate, pt_per_cpu=pt_per_cpu, pt_old_rate=pt_old_rate, w=w,
                       rate=rate, n_live=n_live,
                       live_s=live_s, lat=lat, missing=len(rows.pending), alerts=live_alerts,
                       alert_lat=alert_lat, all_alerts=len(alerts.got), polls=rows.polls,
                       poll_s=rows.poll_s, load=(load1, load2), score_lat=score_lat,
                       late_live=late_live, lateness_s=args.lateness_s,
                       table_alerts=table_alerts, live_cpu=live_cpu,
                       live_in=applied_live["events_in"],
                       turns={k: after_m.get(f"journeymap_checkpoint_child_seconds_{k}", 0.0)
                              - before.get(f"journeymap_checkpoint_child_seconds_{k}", 0.0)
                              for k in ("count", "sum")})
        if trace is not None:
            results["breakdown"] = breakdown(trace, rows.produced, rows.seen)
            (workdir / "sampled.json").write_bytes(orjson.dumps(
                {"produced": rows.produced, "visible": rows.seen}))
    finally:
        if worker is not None:
            stop_pid(worker, "the worker")
        if not args.keep:
            cleanup(admin, env, name, ch_url, settings, [pt_in, pt_out, pt_old])
    report(results, args)


STEPS = ("ingest_taken", "ingest_done", "journey_taken", "released", "write_start", "write_end",
         "delivered")


def breakdown(trace: Path, produced: dict[str, float], seen: dict[str, float]
              ) -> dict[str, list[float]]:
    """Seconds from produce to each traced step (bench/worker_trace.py), for the sampled live
    events: the first time each step names the event; `delivered` (scores and alerts
    acknowledged) is the first delivery after the event's write_end; `visible` from the row
    watcher."""
    import bisect

    first: dict[str, dict[str, float]] = {step: {} for step in STEPS}
    delivered: list[float] = []
    with trace.open("rb") as f:
        for line in f:
            rec = orjson.loads(line)
            if rec["s"] == "delivered":
                delivered.append(rec["t"])
                continue
            at = first.get(rec["s"])
            if at is None:
                continue
            for event_id in rec["ids"]:
                if event_id in produced and event_id not in at:
                    at[event_id] = rec["t"]
    delivered.sort()
    out: dict[str, list[float]] = {step: [] for step in (*STEPS, "visible")}
    for event_id, t0 in produced.items():
        for step in STEPS[:-1]:
            if event_id in first[step]:
                out[step].append(first[step][event_id] - t0)
        end = first["write_end"].get(event_id)
        if end is not None and (i := bisect.bisect_left(delivered, end)) < len(delivered):
            out["delivered"].append(delivered[i] - t0)
        if event_id in seen:
            out["visible"].append(seen[event_id])
    return out


def cleanup(admin: AdminClient, env: dict[str, str], name: str, ch_url: str, settings: Any,
            extra_topics: list[str]) -> None:
    topics = [env[f"JOURNEYMAP_KAFKA__TOPICS__{t.upper()}"] for t in TOPICS] + extra_topics
    internal = [t for t in admin.list_topics(timeout=10).topics if t.startswith(name)]
    for f in admin.delete_topics(sorted(set(topics + internal)), operation_timeout=30).values():
        with contextlib.suppress(Exception):  # a topic that was never created
            f.result(30)
    import clickhouse_connect
    import redis

    parts = urllib.parse.urlsplit(ch_url)
    client = clickhouse_connect.get_client(
        host=parts.hostname, port=parts.port or 8123, username=settings.clickhouse.user,
        password=settings.clickhouse.password.get_secret_value())
    client.command(f"DROP DATABASE IF EXISTS {name}")
    r = redis.Redis.from_url(settings.redis.url)
    keys = list(r.scan_iter(f"*{name}*"))
    if keys:
        r.delete(*keys)


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    if not res:
        return
    w = res["w"]
    print("\n== results ==")
    print(f"machine load average (1 min) before / after the run: "
          f"{res['load'][0]:.1f} / {res['load'][1]:.1f} on {os.cpu_count()} cores")
    print(f"baseline pass-through Faust agent: {res['pt_rate']:10,.0f} events/s")
    print(f"journeymap worker, events through the journey agent: {w['rate']:10,.0f} events/s  "
          f"ratio {w['rate'] / res['pt_rate']:.3f}")
    print(f"per CPU-second of each one's own process (not slowed by other load): pass-through "
          f"{res['pt_per_cpu']:,.0f}, worker's journey agent {w['per_cpu']:,.0f} events, "
          f"ratio {w['per_cpu'] / res['pt_per_cpu']:.3f}")
    print(f"journeymap worker, whole pipeline (backlog taken in -> 99 % of its touchpoints "
          f"rows written, {w['rows_seconds']:.0f} s): {w['rows_rate']:10,.0f} events/s  "
          f"ratio {w['rows_rate'] / res['pt_rate']:.3f}   (targets >= 10,000/s and >= 0.5; "
          f"{w['rows']:,.0f} rows of {w['journeyed']:,.0f} events, "
          f"{w['rows_at_half']:,.0f} of them written by half that time)")
    old = res.get("pt_old_rate")
    if old:
        print(f"old pass-through (sessions 1-5: aiokafka sends, no consumer patch): "
              f"{old:10,.0f} events/s; worker ratios to it: journey agent "
              f"{w['rate'] / old:.3f}, whole pipeline {w['rows_rate'] / old:.3f}")
    lat = res["lat"]
    if lat:
        print(f"produce -> touchpoints row visible at {res['rate']:,.0f}/s "
              f"({res['n_live']:,} events in {res['live_s']:.0f} s, {len(lat)} sampled, "
              f"{res['missing']} not visible after 30 s): p50 {percentile(lat, 0.5):.3f} s  "
              f"p99 {percentile(lat, 0.99):.3f} s  max {max(lat):.3f} s  (target p99 <= 2 s; "
              f"ClickHouse polled every 0.2 s, a poll took "
              f"{res['poll_s'] / max(res['polls'], 1):.3f} s; allowed lateness "
              f"{res['lateness_s']} s; {res['late_live']:,.0f} live events dropped as late)")
    if res.get("live_in"):
        user, system = res["live_cpu"]
        print(f"worker CPU in the live phase (its own process, children not counted): "
              f"{user + system:.1f} s for {res['live_in']:,.0f} events = "
              f"{(user + system) / res['live_in'] * 1e6:,.0f} us per event, of it system "
              f"{system / res['live_in'] * 1e6:,.0f} us (the backlog: "
              f"{1e6 / w['per_cpu']:,.0f} us in all)")
    turns = res.get("turns") or {}
    if turns.get("count"):
        print(f"checkpoint turns in the live phase: {turns['count']:.0f}, their child process "
              f"{turns['sum'] / turns['count']:.2f} s on average from fork to stored")
    al = res["alert_lat"]
    if al:
        print(f"produce -> alert on the alerts topic: {len(al)} alerts, p50 "
              f"{percentile(al, 0.5):.3f} s  p99 {percentile(al, 0.99):.3f} s  max {max(al):.3f} s "
              "(target p99 <= 1 s)")
        for (a, _), seconds in list(zip(res["alerts"], al, strict=True))[:5]:  # alerts are few
            print(f"    {seconds:.3f} s  {a['severity']} {a['segment']} {a['metric']}: "
                  f"{a['message']}")
    else:
        print(f"produce -> alert: no alert raised in the live phase "
              f"({res['all_alerts']} alerts in total)")
    print(f"alerts: {res['all_alerts']} on the alerts topic during the live phase, "
          f"{res['table_alerts']} in the alerts table (whole run)")
    sl = res["score_lat"]
    if sl:
        print(f"produce -> scores message (each customer's latest of a batch, sent with the "
              f"batch's alerts): {len(sl):,} events, p50 {percentile(sl, 0.5):.3f} s  "
              f"p99 {percentile(sl, 0.99):.3f} s  max {max(sl):.3f} s")
        third = max(len(sl) // 3, 1)
        print(f"    p50 in the first / last third of the measured window: "
              f"{percentile(sl[:third], 0.5):.3f} s / {percentile(sl[-third:], 0.5):.3f} s "
              "(growing = the worker falls behind at this rate)")
    bd = res.get("breakdown")
    if bd:
        print("where a sampled live event's time goes (seconds from produce; worker traced):")
        for step, values in bd.items():
            if values:
                print(f"    {step:14s} n={len(values):5d}  p50 {percentile(values, 0.5):7.3f}  "
                      f"p99 {percentile(values, 0.99):7.3f}")
    grown = w["customers"] - w["customers_mid"]
    per_customer = (w["rss_mb"] - w["rss_mid_mb"]) / max(grown, 1)
    print(f"worker RSS: {w['rss_mid_mb']:.0f} MB at {w['customers_mid']:,} resolved customers, "
          f"{w['rss_mb']:.0f} MB (peak {w['hwm_mb']:.0f} MB) at {w['customers']:,} = "
          f"{per_customer * 1024:.1f} kB per added customer -> "
          f"~{w['rss_mb'] + per_customer * (1e6 - w['customers']):,.0f} MB for 1M customers "
          "(linear extrapolation of the growth between the two points: a few thousand "
          "customers in a run's first seconds, so the worker's start-up growth is in it; the "
          "steady figure per customer: bench/bench_state_memory.py --customers 100000)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--passthrough":
        b, src, dst, group, batch_max, within, wd, kind = sys.argv[2:10]
        sys.argv = [sys.argv[0], "worker"]
        passthrough_main(b, src, dst, group, int(batch_max), float(within), wd,
                         old=kind == "old")
    else:
        main()

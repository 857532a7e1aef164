"""The Faust app: topics and two thin agents around the processor chain.

``ingest`` (touchpoints.raw -> touchpoints.resolved): decode each message (bad ones to
touchpoints.dlq with the reason and the original bytes), resolve identities against the shared
Redis graph, and re-key accepted events by customer: key = customer id, value = the original
event bytes. Merges go to identity.merges and, as a control message keyed by the merged-away
customer, onto touchpoints.resolved so they reach that customer's partition in order.

``journey`` (touchpoints.resolved): per partition, the same chain as the replay (journeys,
windowed transitions, funnels, attribution paths) plus the online models, writing ClickHouse
rows (shard = partition), scores (each batch's also to customer_score_history) and alerts. A
merge moves the merged-away customer's state to the winner's partition with a ``transfer``
message keyed by the winner.

Delivery: each partition's state is checkpointed to Redis together with the offset of its last
message (:mod:`sinks.checkpoints`). On assignment a worker loads the checkpoint and seeks to the
next offset (or to the beginning when there is none), so state and input always agree. Rows are
flushed to ClickHouse before a batch is acknowledged and before a checkpoint is written; they are
full values under deterministic keys, so re-processing after a crash rewrites the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import pickle
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.types import TP
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from online_models.suite import CustomerModelState, ModelConfig, ModelSuite, Scores
from processors.chain import ChainOutput, JourneyChain
from processors.errors import CheckpointError, ServiceUnavailable
from processors.events import ResolvedEvent, TouchpointEvent
from processors.identity import (
    MergeRecord,
    ResolveResult,
    merge_waves,
    merges_to_send,
)
from processors.identity_native import engine_of as identity_engine_of
from processors.identity_native import new_resolver
from processors.journeys_native import engine_of as journey_engine_of
from processors.validation import (
    Accepted,
    DeadLetter,
    DecodeEngine,
    Source,
    decode_batch,
    decode_engine,
    decode_events,
    sources_of,
)
from sinks import clickhouse as ch
from sinks.alerts import encode_alert
from sinks.checkpoints import CheckpointStore
from streams import drain
from streams.batching import take_ready
from streams.corpus import new_model_suite
from streams.delivery import Outgoing, OutputProducer, ProducerFatalError
from streams.envelope import H_EVENTS, EnvelopeError, partition_of, unpack
from streams.envelope import count as envelope_count
from streams.envelope import group as envelopes
from streams.heap import WORKER_FULL_EVERY_S, HeapFreezer
from streams.outputs import (
    Rows,
    add_rows,
    chain_rows,
    score_history_rows,
    score_released,
    sentiments_of,
    snapshot_rows,
)
from streams.raw_batches import RawBatches
from streams.replay import model_config
from streams.serve import publish_partitions, serving_store
from streams.settings import Settings

log = logging.getLogger("journeymap.worker")

# header on touchpoints.resolved: absent = an event; "merge" (at the merged-away customer's
# partition), "expect" (at the winner's: hold the frontier) or "transfer" (the customer's state)
H_TYPE = "jm-type"
# A merge record still in the identity outbox this long after its commit was left behind by a
# worker that stopped before producing it; any worker then produces it (duplicates are dropped).
MERGE_RECOVERY_AFTER_S = 30.0
Message = tuple[bytes, bytes, dict[str, bytes]]  # key, value, headers


class Metrics:
    """Prometheus counters served at /metrics on the worker's web port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("journeymap_events_in", "raw messages consumed", registry=r)
        self.accepted = Counter("journeymap_accepted", "events accepted", registry=r)
        self.dead = Counter(
            "journeymap_dead_lettered", "messages dead-lettered", ["stage"], registry=r
        )
        self.late = Counter("journeymap_late", "events past the allowed lateness", registry=r)
        self.duplicates = Counter("journeymap_duplicates", "duplicate events", registry=r)
        self.merges = Counter("journeymap_merges", "identity merges", registry=r)
        self.applied = Counter("journeymap_applied", "events applied to journeys", registry=r)
        self.sink_batches = Counter("journeymap_sink_batches", "ClickHouse flushes", registry=r)
        self.sink_rows = Counter("journeymap_sink_rows", "rows flushed", ["table"], registry=r)
        self.sink_failures = Counter(
            "journeymap_sink_failures", "ClickHouse flushes that failed", registry=r
        )
        self.checkpoints = Counter("journeymap_checkpoints", "partition checkpoints", registry=r)
        self.checkpoint_child_seconds = Histogram(
            "journeymap_checkpoint_child_seconds",
            "wall time of a checkpoint turn's child process, from its fork to every partition "
            "and the models stored (the worker copies the pages it writes meanwhile)",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, float("inf")),
            registry=r,
        )
        self.transfers_awaited = Gauge(
            "journeymap_transfers_awaited",
            "merged customers announced to this worker's partitions and still on their way "
            "(their partitions hold their frontier meanwhile)",
            registry=r,
        )
        self.latency = Gauge(
            "journeymap_processing_latency_seconds",
            "wall time from the moment a batch's oldest event entered Kafka (its raw-topic "
            "timestamp, carried onto touchpoints.resolved) to the flush of the batch's rows",
            ["agent"],
            registry=r,
        )
        self.lag = Gauge(
            "journeymap_consumer_lag",
            "messages of an assigned partition not processed yet (highwater minus position)",
            ["topic", "partition"],
            registry=r,
        )
        self.merges_recovered = Counter(
            "journeymap_merges_recovered",
            "merge records produced from the outbox for a worker that died before producing them",
            registry=r,
        )


@dataclass
class PartitionState:
    """Everything one touchpoints.resolved partition owns; pickled into its checkpoint."""

    chain: JourneyChain
    model_states: dict[str, CustomerModelState] = field(default_factory=dict)
    last_scores: dict[str, Scores] = field(default_factory=dict)
    offset: int = -1
    dirty_scores: set[str] = field(default_factory=set)
    # Streaming merges (see _journey_batch), by merge key (loser, evidence event): merges
    # announced here whose transfer has not arrived (-> winner), transfers adopted here, merge
    # controls done here; and the customers merged away from here (-> their winner).
    awaiting: dict[tuple[str, str], str] = field(default_factory=dict)
    adopted: set[tuple[str, str]] = field(default_factory=set)
    detached: set[tuple[str, str]] = field(default_factory=set)
    away: dict[str, str] = field(default_factory=dict)
    # Merges awaited here whose winner left before the transfer came (handed on with it): a
    # duplicate "expect" (an outbox re-send) must not hold this partition again for good.
    passed: set[tuple[str, str]] = field(default_factory=set)
    # Awaited merge -> the chain's (frontier, watermark) when it was announced here: the chain
    # holds at the earliest of them (see _hold).
    held_at: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("passed", set())  # checkpoints pickled before it existed
        if "held_at" not in state:  # held at one point for all of them, as they were then
            hold = state["chain"].hold
            state["held_at"] = {k: hold for k in state["awaiting"]} if hold else {}
        self.__dict__.update(state)


class Runtime:
    """What the agents share inside one worker process."""

    def __init__(self, settings: Settings, *, with_models: bool = True) -> None:
        from sinks.identity_redis import RedisIdentityStore

        self.settings = settings
        self.config = settings.processing()
        self.metrics = Metrics()
        # identity.engine: the native core decides on the Redis store when it is installed
        self.resolver = new_resolver(
            self.config.identity,
            self.config.identity_salt,
            RedisIdentityStore(settings.redis.url, prefix=f"jm:id:{settings.kafka.consumer_group}",
                               owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                               cache_max_keys=settings.redis.identity_cache_keys),
        )
        log.info("identity engine: %s", identity_engine_of(self.resolver))
        # decode.engine: the native fast path decodes what it is sure of (ConfigError if
        # `native` is asked for and not built)
        self.decode_engine = self.config.decode.engine
        log.info("decode engine: %s", decode_engine(self.decode_engine))
        self.checkpoints = CheckpointStore(
            settings.redis.url, settings.kafka.consumer_group,
            retry_total_s=settings.clickhouse.retry_total_s,
        )
        self.serving = serving_store(settings)  # live customer state for the serving API
        self.store = ch.connect(settings.clickhouse)
        ch.check_schema(self.store)
        # Flushed by _write only (never on the event loop by an `add` that finds the interval
        # passed); clickhouse.flush_interval_s is the time budget of the rows _write defers.
        self.writer = self.store.writer(
            flush_rows=settings.clickhouse.flush_rows,
            flush_interval_s=float("inf"),
            retry_total_s=settings.clickhouse.retry_total_s,
        )
        self.flush_budget_s = settings.clickhouse.flush_interval_s
        self.deferred_since: float | None = None  # the oldest row _write left buffered
        # identity commits whose identity_links rows wait in the writer (the ingest agent's
        # deferred links): acknowledged in the links outbox by the write that stores them
        self.links_buffered: list[str] = []
        # the group's latest snapshot, or fresh (then it learns the sentiment corpus once)
        self.models = initial_models(
            settings, self.checkpoints, model_config(self.config, settings.models)
        ) if with_models else None
        self.models_saved_at = time.monotonic()
        self.models_child: asyncio.Task[None] | None = None  # saving the models in a child
        # confluent-kafka (streams.delivery), off the event loop: the journey agent's scores,
        # alerts and late events, and the ingest agent's resolved events and merge messages
        self.outputs = OutputProducer(settings.kafka.bootstrap_servers)
        self.ingest_out = OutputProducer(settings.kafka.bootstrap_servers)
        self.rows: dict[str, int] = {}
        self.sink_lock = asyncio.Lock()
        self.app: faust.App | None = None
        self.emission_clock = ch.EmissionClock()
        self.partitions: dict[int, PartitionState] = {}
        # Partitions whose state a batch has changed but whose outputs (rows, transfers, forwards)
        # are not all flushed yet. Their state must not be checkpointed until the batch is done:
        # a checkpoint of a merge already detached, taken before its transfer is sent, would lose
        # the transfer for good after a crash (the restart resumes after that batch).
        self.in_flight: set[int] = set()
        self.next_offsets: dict[Any, int] = {}  # TP -> next offset to process (for the lag)
        # TP -> (offset, when): a hole was found before a batch and the consumer sought back to
        # fill it; later messages already fetched are dropped until the offset arrives.
        self.seeking: dict[Any, tuple[int, float]] = {}
        self.last_checkpoint: dict[int, float] = {}
        # partition -> the task waiting for a checkpoint being saved by a child process
        self.bg_checkpoints: dict[int, asyncio.Task[None]] = {}
        # (partition, merge key) -> when this worker first saw the merge's transfer awaited
        # (_report_awaited warns once about one awaited for long)
        self.awaited_since: dict[tuple[int, tuple[str, str]], float] = {}
        # partitions whose state a failed batch dropped: loaded again by the watchdog
        self.forgotten: set[int] = set()
        # journey TP -> (next offset to process, since when): a stall detector (_unstall)
        self.progress: dict[Any, tuple[int, float]] = {}
        self.checkpoint_every_s = settings.worker.checkpoint_every_s
        self.heap = HeapFreezer(WORKER_FULL_EVERY_S)  # _freeze_heap
        # touchpoints.resolved's partition count at start (streams.topics.check_topics), for
        # the ingest agent's envelopes until the consumer's own metadata has the topic
        self.resolved_partitions: int | None = None

    def new_partition(self) -> PartitionState:
        return PartitionState(JourneyChain(self.config))

    def segment_of(self, part: PartitionState, customer_id: str) -> str:
        state = part.model_states.get(customer_id)
        return state.segment if state is not None else "all"


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> faust.App:
    """The Faust app with its topics and agents. `runtime` is built at worker start."""
    k = settings.kafka
    t = k.topics
    app = faust.App(
        k.consumer_group,
        broker=[f"kafka://{s.strip()}" for s in k.bootstrap_servers.split(",")],
        store="memory://",
        web_host="127.0.0.1",
        web_port=settings.worker.web_port,
        web_bind=str(settings.worker.web_bind),
        topic_partitions=k.partitions,
        topic_replication_factor=k.replication_factor,
        consumer_auto_offset_reset="earliest",
        value_serializer="raw",
        key_serializer="raw",
        producer_acks=-1,
        broker_commit_every=settings.worker.batch_max,
        autodiscover=False,
    )
    drain.fetch_sizes(app, k.consumer_fetch_min_bytes, k.consumer_fetch_max_wait_ms)
    raw_topic = app.topic(t.raw, key_type=bytes, value_type=bytes, internal=False)
    # Not acked through Faust: its offsets are committed with each partition checkpoint
    # (_checkpoint), so the committed offset Faust seeks to after a rebalance is always the
    # checkpoint's next one. Faust's own commits ran ahead of the checkpoint, and its seek to them
    # after every rebalance skipped the events in between.
    resolved_topic = app.topic(t.resolved, key_type=bytes, value_type=bytes, acks=False)
    dlq_topic = app.topic(t.dlq, key_type=bytes, value_type=bytes)
    merges_topic = app.topic(t.merges, key_type=bytes, value_type=bytes)
    late_topic = app.topic(t.late, key_type=bytes, value_type=bytes)
    scores_topic = app.topic(t.scores, key_type=bytes, value_type=bytes)
    alerts_topic = app.topic(t.alerts, key_type=bytes, value_type=bytes)
    batch_max, within = settings.worker.batch_max, settings.worker.batch_within_s
    rt: dict[str, Runtime] = {}
    if runtime is not None:
        rt["runtime"] = runtime
        runtime.app = app

    def R() -> Runtime:
        if "runtime" not in rt:
            rt["runtime"] = Runtime(settings)
            rt["runtime"].app = app
        return rt["runtime"]

    @app.on_before_configured.connect
    def _noop(app: faust.App, **kwargs: Any) -> None:  # pragma: no cover - faust signal
        pass

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(
            generate_latest(R().metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0]
        )

    # -- ingest -----------------------------------------------------------------------------

    # touchpoints.raw carries one event per message: batches of messages straight from the
    # consumer, not through a Faust stream (streams.raw_batches); acknowledged after their work.
    raw = RawBatches(app, raw_topic, batch_max, within,
                     max_buffered=max(batch_max, settings.worker.raw_buffer_max))

    @app.task
    async def ingest() -> None:
        async for messages in raw.batches():
            try:
                await _ingest(R(), messages)
            except Exception as exc:  # not acknowledged: a restart reads the batch again
                log.exception("the ingest batch failed; stopping the worker")
                await app.crash(exc)
                raise
            raw.ack(messages)

    async def _ingest(runtime: Runtime, batch: list[Any]) -> None:
        """One batch of raw messages: validate, resolve, re-key, dead-letter, write."""
        m = runtime.metrics
        m.events_in.inc(len(batch))
        # One Rust validation call per batch; dead letters keep their own reasons and offsets.
        accepted, dead = decode_batch(zip(
            [msg.value or b"" for msg in batch],
            sources_of(batch),  # positions made per partition run
            strict=True,
        ), runtime.decode_engine)
        resolved = await asyncio.to_thread(
            _resolve, runtime, [a.event for a in accepted]
        ) if accepted else None
        sends = [dlq_topic.send(key=b"validate", value=d.to_json()) for d in dead]
        produced: list[Outgoing] = []
        m.dead.labels("validate").inc(len(dead))
        letters: list[DeadLetter] = []
        if resolved is not None:
            m.accepted.inc(len(resolved.resolved))
            for (event, reason), i in zip(resolved.dead, resolved.dead_at, strict=True):
                letter = DeadLetter(
                    event.model_dump_json().encode(), reason, accepted[i].source,
                    stage="resolve",
                )
                letters.append(letter)
                sends.append(dlq_topic.send(key=b"resolve", value=letter.to_json()))
                m.dead.labels("resolve").inc()
            m.merges.inc(len(resolved.merges))
            # `resolved.resolved` keeps the order of `accepted`, the dead left out
            dead_at = set(resolved.dead_at)
            kept = [msg for i, (_, msg) in enumerate(_pairs(accepted, batch))
                    if i not in dead_at]
            produced.extend(_rekeyed(runtime, zip(  # the raw timestamp: latency end to end
                [rev.customer_id.encode() for rev in resolved.resolved],
                [msg.value for msg in kept],
                [int(msg.timestamp * 1000) if msg.timestamp else None for msg in kept],
                strict=True,
            )))
        now_ms = int(time.time() * 1000)
        out = ChainOutput(dead=dead)
        if resolved is not None:
            out.links.extend(resolved.links)
            out.merges.extend(resolved.merges)
            out.conflicts.extend(resolved.conflicts)
            out.dead.extend(letters)
        rows = chain_rows(out, now_ms, 0, {})
        # The rows are written while the batch is produced (latency: the events do not wait
        # for ClickHouse); both are done before the batch is acknowledged and before its
        # merges and links leave the identity outbox. A batch whose only rows are identity
        # links leaves them buffered with the journey agent's deferred rows instead: the
        # links outbox keeps them until a write has stored them (`_write` acknowledges them
        # then), so the batch does not wait for an insert.
        own = [table for table, table_rows in rows.items() if table_rows]
        defer = (own == ["identity_links"] and resolved is not None and not resolved.merges
                 and resolved.commit_id is not None)
        await asyncio.gather(
            _write(runtime, rows, only=() if defer else own) if own else asyncio.sleep(0),
            _produce_ingested(runtime, resolved, produced, sends),
        )
        if defer:
            runtime.links_buffered.append(resolved.commit_id)  # type: ignore[union-attr]
        elif resolved is not None and (resolved.merges or resolved.commit_id):
            await asyncio.to_thread(_acknowledge, runtime.resolver.store, resolved)
        _observe(runtime, "ingest", batch, {})

    async def _produce_ingested(runtime: Runtime, resolved: ResolveResult | None,
                                produced: list[Outgoing], sends: list[Any]) -> None:
        """An ingest batch's messages, acknowledged by the broker: merges first (and any
        earlier related merge of another batch still unsent), wave after wave in commit order,
        then the re-keyed events with the last wave, and the dead letters."""
        producer = runtime.ingest_out
        if resolved is not None and resolved.merges:
            store = runtime.resolver.store
            outbox = await asyncio.to_thread(store.outbox)  # type: ignore[attr-defined]
            waves = merge_waves(merges_to_send(resolved.merges,
                                               [(e.seq, e.merge) for e in outbox]))
            for i, wave in enumerate(waves):
                expects, others = _merge_records(wave)
                for message in expects:
                    producer.send(*message)
                await _deliver(producer)
                for message in others:
                    producer.send(*message)
                if i < len(waves) - 1:  # the last wave's go with the batch's events
                    await _deliver(producer)
        for message in produced:
            producer.send(*message)
        for fut in await asyncio.gather(*sends):
            await fut
        await app.producer.flush()
        await _deliver(producer)

    def _merge_records(merges: Sequence[MergeRecord]) -> tuple[list[Outgoing], list[Outgoing]]:
        """A merge's messages: "expect" (delivered first: the winner's partition holds its
        frontier before this batch's events and before the transfer can reach it), the record
        on identity.merges, and the "merge" control for the merged-away customer's partition."""
        expects: list[Outgoing] = []
        others: list[Outgoing] = []
        for merge in merges:
            body = orjson.dumps(merge._asdict())
            expects.append(
                (t.resolved, merge.winner.encode(), body, [(H_TYPE, b"expect")], None, None)
            )
            others.append((t.merges, merge.loser.encode(), body, None, None, None))
            others.append(
                (t.resolved, merge.loser.encode(), body, [(H_TYPE, b"merge")], None, None)
            )
        return expects, others

    def _rekeyed(runtime: Runtime, events: Iterable[tuple[bytes, bytes, int | None]]
                 ) -> list[Outgoing]:
        """An ingest batch's events (customer key, raw value, raw timestamp) as messages on
        touchpoints.resolved: one envelope per partition (streams.envelope) over the topic's
        partition count (the consumer's metadata, else the count found at start), one keyed
        message per event when neither knows it."""
        n = app.consumer.topic_partitions(t.resolved) or runtime.resolved_partitions
        if not n:
            return [(t.resolved, key, value, None, ts, None) for key, value, ts in events]
        return [(t.resolved, None, value, [(H_TYPE, H_EVENTS)], ts, p)
                for p, value, ts in envelopes(events, n)]

    def _merge_messages(merges: Sequence[MergeRecord]) -> tuple[list[Any], list[Any]]:
        """_merge_records as Faust sends (the outbox recovery, rare, sends through Faust)."""
        expects, others = _merge_records(merges)
        topics = {t.resolved: resolved_topic, t.merges: merges_topic}
        first, then = (
            [topics[topic].send(key=key, value=value, headers=dict(headers or ()))
             for topic, key, value, headers, _, _ in messages]
            for messages in (expects, others)
        )
        return first, then

    @app.timer(interval=2.0)
    async def report_lag() -> None:
        # Also while an agent waits (ClickHouse down, a long batch): ask the broker for the
        # end of each partition the agents have started on.
        runtime = R()
        known = dict(runtime.next_offsets)
        tps = [tp for tp in app.consumer.assignment() if tp in known]
        if not tps:
            return
        try:
            highs = await app.consumer.highwaters(*tps)
        except Exception as exc:  # a rebalance or a broker hiccup: the next tick will do
            log.debug("consumer lag not refreshed: %r", exc)
            return
        assigned = app.consumer.assignment()  # again: a rebalance may have run meanwhile
        for tp in tps:
            high, done = highs.get(tp), runtime.next_offsets.get(tp)
            if high is not None and done is not None and tp in assigned:
                runtime.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - done))
                if tp.topic == t.resolved:
                    await _unstall(runtime, tp, high - done, done)

    @app.timer(interval=5.0)
    async def heartbeat() -> None:
        # Its own timer: recover_merges can wait minutes for ClickHouse, and a lapsed heartbeat
        # would let another worker send this live worker's merges beside its own.
        store = R().resolver.store
        await asyncio.to_thread(store.heartbeat)  # type: ignore[attr-defined]

    @app.timer(interval=5.0)
    async def recover_merges() -> None:
        # The identity commit keeps every merge record in an outbox until it is produced; one
        # still there long after its commit, whose worker's heartbeat has stopped, belongs to a
        # worker that died in between.
        runtime = R()
        store = runtime.resolver.store
        links = await asyncio.to_thread(store.pending_links, MERGE_RECOVERY_AFTER_S,  # type: ignore[attr-defined]
                                        orphaned=True)
        for commit_id, batch_links in links:  # a stopped worker's identity_links rows
            log.warning("writing %d identity links that a stopped worker committed but never "
                        "wrote (identity outbox)", len(batch_links))
            await _write(runtime, chain_rows(ChainOutput(links=batch_links),
                                             int(time.time() * 1000), 0, {}))
            await asyncio.to_thread(store.ack_links, commit_id)  # type: ignore[attr-defined]
        pending = await asyncio.to_thread(store.pending_merges, MERGE_RECOVERY_AFTER_S,  # type: ignore[attr-defined]
                                          orphaned=True)
        if not pending:
            return
        log.warning("producing %d merge records that a stopped worker committed but never "
                    "sent (identity outbox)", len(pending))
        await _write(runtime, chain_rows(ChainOutput(merges=pending), int(time.time() * 1000),
                                         0, {}))
        # One merge after the other, in commit order: two merges of a cycle (L into W, then W
        # back into L) must reach the partitions in the order they were made.
        for merge in pending:
            expects, sends = _merge_messages([merge])
            for fut in [*await asyncio.gather(*expects), *await asyncio.gather(*sends)]:
                await fut
        await app.producer.flush()
        await asyncio.to_thread(store.ack_merges, pending)  # type: ignore[attr-defined]
        runtime.metrics.merges_recovered.inc(len(pending))

    # -- journey ----------------------------------------------------------------------------

    @app.agent(resolved_topic)
    async def journey(stream: faust.StreamT) -> None:
        # worker.batch_max counts events here: an envelope weighs the events it holds
        async for batch in take_ready(stream, batch_max, within, weight=_events_in):
            runtime = R()
            by_partition: dict[int, list[Any]] = {}
            for ev in batch:
                by_partition.setdefault(ev.message.partition, []).append(ev)
            outputs = []
            touched: list[tuple[int, PartitionState]] = []
            try:
                for p, events in sorted(by_partition.items()):
                    part = runtime.partitions.get(p)
                    if part is None:  # assigned before the checkpoint callback ran: load it now
                        part = await _load_partition(runtime, p)
                    touched.append((p, part))
                    events = await _contiguous(runtime, part, events)
                    if not events:
                        continue
                    runtime.in_flight.add(p)
                    with runtime.heap.batch():  # what the batch leaves alive is frozen
                        outputs.append((p, part, _journey_batch(runtime, part, events,
                                                                here=_here(p))))
                await _finish_batch(runtime, outputs)
            except BaseException:
                _forget(runtime, touched)
                raise
            finally:
                runtime.in_flight.difference_update(by_partition)
            # the next offset of each partition's state as it is now (a partition revoked and
            # assigned again meanwhile has a new state, loaded from its checkpoint)
            _observe(runtime, "journey", [ev.message for ev in batch],
                     {p: (runtime.partitions.get(p) or part).offset + 1 for p, part in touched})

    def _here(p: int) -> Any:
        """Whether a customer's messages go to partition `p` (the producer's partitioner over
        the topic's partitions), or None when the partition count is not known yet."""
        n = app.consumer.topic_partitions(t.resolved)
        if not n:
            return None
        return lambda customer_id: partition_of(customer_id.encode(), n) == p

    async def _finish_batch(runtime: Runtime, outputs: list[Any]) -> None:
        """Write, publish and produce one batch's outputs, then checkpoint what is due.

        Forwards and transfers go through Faust's producer (the merge protocol's order on
        touchpoints.resolved); late events, alerts and each customer's latest scores of the
        batch through runtime.outputs. Both are acknowledged by the broker before any
        checkpoint: a crash before it re-processes the batch and sends them again."""
        sends = []
        produced: list[tuple[str, bytes, bytes]] = []
        now_ms = int(time.time() * 1000)
        rows: list[Rows] = []
        for p, _part, (out, forwards, transfers, scores) in outputs:
            sentiments = sentiments_of(out.released, scores)
            out.links.clear()  # links and merges are written by the ingest agent
            out.merges.clear()
            rows.append(chain_rows(out, now_ms, p, sentiments, runtime.emission_clock))
            rows.append({"alerts": [ch.alert_row(a) for s in scores for a in s.alerts],
                         "customer_score_history": score_history_rows(scores)})
            for key, value, headers in forwards + transfers:
                sends.append(resolved_topic.send(key=key, value=value, headers=headers))
            produced.extend((t.dlq, b"journey", d.to_json()) for d in out.dead)
            produced.extend((t.late, late.event.customer_id.encode(),
                             orjson.dumps(ch.late_event_row(late, now_ms))) for late in out.late)
            produced.extend((t.alerts, alert.alert_id.encode(), encode_alert(alert))
                            for s in scores for alert in s.alerts)
            produced.extend((t.scores, s.customer_id.encode(), _scores_json(s))
                            for s in latest_scores(scores))
        # Scores, alerts and late events leave first and are acknowledged while the rows are
        # written (latency: an alert does not wait for ClickHouse); everything is acknowledged
        # and written before any checkpoint, as before. Only the touchpoints are written at
        # once unless a checkpoint is due; the other tables wait for the time budget (_write).
        now = time.monotonic()
        due = [(p, part) for p, part, _ in outputs
               if runtime.partitions.get(p) is part  # revoked meanwhile: not ours to save
               and now - runtime.last_checkpoint.get(p, 0.0) >= runtime.checkpoint_every_s]
        for topic, key, value in produced:
            runtime.outputs.send(topic, key, value)
        futs, _, _ = await asyncio.gather(
            asyncio.gather(*sends),
            _write(runtime, *rows, only=None if due else ("touchpoints",)),
            publish_partitions(runtime.serving, [(o[1], o[2][3]) for o in outputs]),
        )
        for fut in futs:
            await fut
        await app.producer.flush()
        await _deliver(runtime.outputs)
        # one forked child saves the turn's partitions and, when due, the models
        _checkpoint_turn(
            runtime,
            [(p, part) for p, part in due  # (revoked while the batch was written)
             if part is not None and runtime.partitions.get(p) is part],
            models=now - runtime.models_saved_at >= runtime.checkpoint_every_s)
        runtime.metrics.transfers_awaited.set(
            sum(len(part.awaiting) for part in runtime.partitions.values())
        )

    @app.timer(interval=2.0)
    async def watchdog() -> None:
        # A crashed Kafka fetcher (seen in aiokafka during rebalances: KeyError in
        # fetched_records) leaves a worker alive but deaf. Exit instead: whatever restarts the
        # worker resumes every partition from its checkpoint, so nothing is lost.
        fetcher = getattr(app, "_fetcher", None)
        if fetcher is not None and fetcher.crashed:
            log.critical("the Kafka fetcher crashed (%r); exiting for a restart",
                         fetcher.crash_reason)
            os._exit(70)
        if "runtime" in rt:
            runtime = rt["runtime"]
            await _seek_again(runtime)
            _report_awaited(runtime)
            while runtime.forgotten:  # states dropped by a failed batch (_forget)
                p = runtime.forgotten.pop()
                tp = TP(t.resolved, p)
                if p not in runtime.partitions and tp in app.consumer.assignment():
                    await _restore(runtime, tp)

    async def _restore(runtime: Runtime, tp: Any) -> None:
        part = await _load_partition(runtime, tp.partition)
        # state and input must agree: continue right after the checkpointed offset
        await seek(app.consumer, tp, part.offset + 1)
        runtime.next_offsets[tp] = part.offset + 1  # the lag is known from the start

    @app.on_partitions_assigned.connect
    async def on_assigned(app: faust.App, assigned: set[Any], **kwargs: Any) -> None:
        runtime = R()
        for tp in sorted(assigned):
            if tp.topic == t.resolved and tp.partition not in runtime.partitions:
                await _restore(runtime, tp)

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        runtime = R()
        for tp in revoked:
            runtime.next_offsets.pop(tp, None)
            runtime.seeking.pop(tp, None)
            with contextlib.suppress(KeyError):  # no batch seen on it yet
                runtime.metrics.lag.remove(tp.topic, str(tp.partition))
        await _write(runtime)
        for tp in revoked:
            if tp.topic == t.resolved and tp.partition in runtime.partitions:
                part = runtime.partitions.pop(tp.partition)
                if tp.partition in runtime.in_flight:
                    # Mid-batch: the next owner resumes from the previous checkpoint instead.
                    log.info("partition %d revoked mid-batch: checkpoint skipped", tp.partition)
                    continue
                await _checkpoint(runtime, tp.partition, part)

    @app.timer(interval=settings.clickhouse.flush_interval_s)
    async def write_deferred() -> None:
        # Rows _write left buffered are written by the next write once they have waited
        # clickhouse.flush_interval_s; this one writes them when no batch comes (a quiet stream).
        if "runtime" in rt and _deferred_due(rt["runtime"], time.monotonic()):
            await _write(rt["runtime"])

    @app.timer(interval=settings.worker.snapshot_every_s)
    async def write_snapshots() -> None:
        if "runtime" in rt:
            await _write_snapshots(rt["runtime"])

    @app.on_before_shutdown.connect
    async def on_shutdown(app: faust.App, **kwargs: Any) -> None:
        if "runtime" not in rt:
            return
        runtime = rt["runtime"]
        log.info("shutting down: flushing rows and checkpointing %d partitions",
                 len(runtime.partitions))
        await _write_snapshots(runtime)
        await _write(runtime)
        for p, part in list(runtime.partitions.items()):
            if part.awaiting:  # a stuck merge holds this partition: say which, for a diagnosis
                log.warning("partition %d: shutting down with %d transfers awaited: %s", p,
                            len(part.awaiting), sorted(part.awaiting.items()))
            if p in runtime.in_flight:  # a batch not fully produced: resume before it instead
                log.info("partition %d: mid-batch at shutdown, checkpoint skipped", p)
                continue
            await _checkpoint(runtime, p, part)
        if runtime.models_child is not None:
            await runtime.models_child
        _save_models(runtime)

    app.jm_topics = {  # type: ignore[attr-defined]
        "raw": raw_topic, "resolved": resolved_topic, "dlq": dlq_topic, "merges": merges_topic,
        "late": late_topic, "scores": scores_topic, "alerts": alerts_topic,
    }
    app.jm_runtime = R  # type: ignore[attr-defined]
    return app


def _acknowledge(store: Any, resolved: ResolveResult) -> None:
    """The batch's merges are produced and its rows written: out of the identity outbox."""
    if resolved.merges:
        store.ack_merges(resolved.merges)
    store.ack_links(resolved.commit_id)


def _forget(runtime: Runtime, touched: Sequence[tuple[int, PartitionState]]) -> None:
    """A journey batch failed between changing its partitions' states and producing all their
    outputs (a transfer computed but never sent would be lost for good): drop those states. A
    partition's next message loads it again from its checkpoint, and the hole behind makes the
    consumer seek back (`_contiguous`), so the failed batch is processed again from scratch. A
    worker that is stopping does not checkpoint them either."""
    for p, part in touched:
        if runtime.partitions.get(p) is part:
            del runtime.partitions[p]
            runtime.forgotten.add(p)
            log.warning("partition %d: a batch failed midway; its state is dropped and will be "
                        "loaded again from the checkpoint", p)


def _observe(runtime: Runtime, agent: str, batch: Sequence[Any], next_of: dict[int, int]
             ) -> None:
    """Latency and lag after a batch (its Kafka messages) is flushed and its outputs produced.

    Latency: now minus the oldest message timestamp (for touchpoints.resolved, the raw event's
    timestamp carried over by the ingest agent). Lag per partition: the consumer's highwater
    minus the next offset to process (`next_of`, else the batch's last offset + 1).
    """
    m = runtime.metrics
    stamps = [msg.timestamp for msg in batch if msg.timestamp]
    if stamps:
        m.latency.labels(agent).set(max(0.0, time.time() - min(stamps)))
    app = runtime.app
    if app is None:
        return
    last: dict[Any, int] = {}
    for msg in batch:
        last[msg.tp] = max(last.get(msg.tp, -1), msg.offset)
    assigned = app.consumer.assignment()
    for tp, offset in last.items():
        if tp not in assigned:  # revoked while the batch ran: its new owner reports it
            continue
        runtime.next_offsets[tp] = next_of.get(tp.partition, offset + 1)
        try:
            high = app.consumer.highwater(tp)
        except Exception:  # the partition was revoked meanwhile
            continue
        if high is not None:
            m.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - runtime.next_offsets[tp]))


async def _deliver(producer: OutputProducer) -> None:
    """Wait until the broker has everything produced; exit the worker if it never can."""
    try:
        await asyncio.to_thread(producer.deliver)
    except ProducerFatalError as exc:
        # Restarted, the worker resumes every partition from its checkpoint and the raw topic
        # from its committed offset: nothing unconfirmed was acknowledged.
        log.critical("%s; exiting for a restart", exc)
        os._exit(70)


def _pairs(accepted: Sequence[Accepted], batch: Sequence[Any]) -> list[tuple[Accepted, Any]]:
    """Match accepted events to their Kafka messages by source offset."""
    by_pos = {(msg.topic, msg.partition, msg.offset): msg for msg in batch}
    return [
        (a, by_pos[(a.source.topic, a.source.partition, a.source.offset)]) for a in accepted
    ]


async def _load_partition(runtime: Runtime, p: int) -> PartitionState:
    topic = runtime.settings.kafka.topics.resolved
    loaded = await asyncio.to_thread(runtime.checkpoints.load, topic, p)
    if loaded is None:
        part = runtime.new_partition()
        log.info("partition %d: no checkpoint, starting from the beginning of %s "
                 "(journey engine: %s)", p, topic, journey_engine_of(part.chain.journeys))
    else:
        part, offset = loaded
        part.offset = offset
        log.info("partition %d: restored checkpoint at offset %d (journey engine: %s)",
                 p, offset, journey_engine_of(part.chain.journeys))
    part.chain.segment_of = lambda cid, part=part: runtime.segment_of(part, cid)
    runtime.partitions[p] = part
    runtime.last_checkpoint[p] = time.monotonic()
    return part


# A hole older than this is sought back again: the first seek was undone (a rebalance).
SEEK_AGAIN_AFTER_S = 5.0


async def _contiguous(runtime: Runtime, part: PartitionState, events: Sequence[Any]
                      ) -> list[Any]:
    """The events of one partition's batch that continue its state, without a hole.

    The state contains every message up to `part.offset`. Messages at or before it are kept
    (the chain skips them). A message past the next offset means the consumer is somewhere the
    state is not: it was assigned and loaded lazily before the rebalance callback sought it, or
    Faust sought it elsewhere. Then the consumer seeks back to the next offset and the rest of
    the batch is dropped (it comes again), unless retention deleted the missing messages.
    """
    expected = part.offset + 1
    keep = []
    for ev in events:
        offset = ev.message.offset
        if offset > expected and await _seek_back(runtime, ev.message.tp, expected, offset):
            break
        if offset >= expected:
            runtime.seeking.pop(ev.message.tp, None)  # the hole is filled (or cannot be)
        keep.append(ev)
        expected = max(expected, offset + 1)
    return keep


async def _seek_back(runtime: Runtime, tp: Any, expected: int, got: int) -> bool:
    """Seek `tp` back to `expected` (True), or say the hole cannot be filled (False)."""
    app = runtime.app
    if app is None:
        return False
    asked = runtime.seeking.get(tp)
    if asked is not None and asked[0] == expected and \
            time.monotonic() - asked[1] < SEEK_AGAIN_AFTER_S:
        return True  # sought already: these were fetched before it
    low = (await app.consumer.earliest_offsets(tp)).get(tp)
    if low is not None and low > expected:
        log.warning("partition %d: offsets %d..%d were deleted by retention before this "
                    "worker processed them; continuing at %d", tp.partition, expected,
                    low - 1, got)
        return False
    log.warning("partition %d: message at offset %d arrived while the state ends at %d; "
                "seeking back to %d", tp.partition, got, expected - 1, expected)
    await seek(app.consumer, tp, expected)
    runtime.seeking[tp] = (expected, time.monotonic())
    return True


async def _seek_again(runtime: Runtime) -> None:
    """Repeat a seek back whose hole is still open after SEEK_AGAIN_AFTER_S.

    Faust drops a fetched message below its read offset for the partition, and messages fetched
    before the seek but drained after it raise that offset again: the refetched hole can then be
    dropped whole, and with no later input nothing would come to trigger a new seek (seen once
    after a rebalance during a ClickHouse outage: the partition stalled until new input came).
    """
    app = runtime.app
    if app is None:
        return
    now = time.monotonic()
    assigned = app.consumer.assignment()
    for tp, (expected, when) in list(runtime.seeking.items()):
        if now - when < SEEK_AGAIN_AFTER_S:
            continue
        if tp not in assigned:
            runtime.seeking.pop(tp, None)
            continue
        log.warning("partition %d: offset %d has not arrived %.0f s after seeking back to it; "
                    "seeking again", tp.partition, expected, now - when)
        await seek(app.consumer, tp, expected)
        runtime.seeking[tp] = (expected, time.monotonic())


# A journey partition with messages left whose state has not moved on for this long is sought to
# the state's next offset again.
STALL_AFTER_S = 30.0


async def _unstall(runtime: Runtime, tp: Any, lag: int, done: int) -> None:
    """Seek a stalled journey partition back to where its state ends.

    A partition whose consumer position went past messages its state does not contain (a seek
    undone by a rebalance or by Faust's recovery, fetched messages dropped below Faust's read
    offset) gets no batch to notice the hole in until new input comes, which in a quiet stream
    may be never. Seeking to the state's next offset is always safe: what the state contains is
    skipped by offset."""
    now = time.monotonic()
    last = runtime.progress.get(tp)
    if lag <= 0 or last is None or last[0] != done:
        runtime.progress[tp] = (done, now)
        return
    part = runtime.partitions.get(tp.partition)
    if now - last[1] < STALL_AFTER_S or part is None or tp.partition in runtime.in_flight:
        return
    log.warning("partition %d: %d messages behind and no progress for %.0f s; seeking to the "
                "state's next offset %d", tp.partition, lag, now - last[1], part.offset + 1)
    runtime.progress[tp] = (done, now)
    if runtime.app is not None:
        await seek(runtime.app.consumer, tp, part.offset + 1)


# A merge whose transfer is awaited this long holds its partition far beyond a normal hand-over.
AWAITED_WARN_AFTER_S = 60.0


def _report_awaited(runtime: Runtime) -> None:
    """Warn once about each merge whose transfer has been awaited for AWAITED_WARN_AFTER_S: its
    partition releases nothing past the merge's announcement until the transfer comes."""
    now = time.monotonic()
    seen = runtime.awaited_since
    current = {(p, key): winner for p, part in runtime.partitions.items()
               for key, winner in part.awaiting.items()}
    for k in [k for k in seen if k not in current]:
        del seen[k]
    for (p, key), winner in current.items():
        since = seen.setdefault((p, key), now)
        if since <= now - AWAITED_WARN_AFTER_S:
            part = runtime.partitions[p]
            log.warning("partition %d: the transfer of %s into %s (evidence event %s) is awaited "
                        "for %.0f s; the partition holds at %s (away here: %s)", p, key[0],
                        winner, key[1], now - since, part.chain.hold,
                        part.away.get(winner) or part.away.get(key[0]))
            seen[(p, key)] = float("inf")  # once


async def _checkpoint(runtime: Runtime, p: int, part: PartitionState) -> None:
    """Save the partition's state with its offset, then commit the next offset to Kafka.

    The commit follows the save: a crash in between leaves the commit behind the checkpoint,
    and the messages in between are skipped by offset (never ahead of it, which would skip
    messages the state does not contain).

    In process (revocation and shutdown), after any child saving the partition has finished
    (its older state must not land last); the periodic checkpoints are :func:`_checkpoint_turn`.
    """
    running = runtime.bg_checkpoints.get(p)
    if running is not None and not running.done():
        await running
    topic = runtime.settings.kafka.topics.resolved
    offset = part.offset
    segment_of = part.chain.segment_of
    part.chain.segment_of = None  # a closure over the runtime does not pickle
    try:
        size = await asyncio.to_thread(runtime.checkpoints.save, topic, p, part, offset)
    finally:
        part.chain.segment_of = segment_of
    runtime.last_checkpoint[p] = time.monotonic()
    await _commit_checkpoint(runtime, p, offset)
    log.debug("partition %d: checkpoint at offset %d (%d bytes)", p, offset, size)


def _checkpoint_turn(runtime: Runtime, due: list[tuple[int, PartitionState]], *,
                     models: bool) -> None:
    """The periodic checkpoints: one forked child pickles and stores every partition in `due`
    as it is now, then the models' snapshot when `models` (CheckpointStore.save_turn_in_child),
    while the worker goes on; each partition's offset is committed when the child has stored
    everything. A partition (or the models) whose previous child is still at work skips this
    turn. One fork per turn: each fork holds the worker while the kernel copies its page tables,
    and one child per partition plus one for the models took both cores of a small machine from
    the worker for seconds after every turn (issue 6)."""
    due = [(p, part) for p, part in due
           if (running := runtime.bg_checkpoints.get(p)) is None or running.done()]
    busy = runtime.models_child is not None and not runtime.models_child.done()
    models = models and runtime.models is not None and not busy
    if not due and not models:
        return
    saves = [(p, part, part.offset) for p, part in due]
    held = [(part, part.chain.segment_of) for _, part in due]
    for part, _ in held:
        part.chain.segment_of = None  # a closure over the runtime does not pickle
    try:
        _freeze_heap(runtime)
        pid = runtime.checkpoints.save_turn_in_child(
            runtime.settings.kafka.topics.resolved, saves,
            runtime.models.snapshot if models else None)  # type: ignore[union-attr]
    finally:
        for part, segment_of in held:
            part.chain.segment_of = segment_of
    now = time.monotonic()
    for p, _, _ in saves:
        runtime.last_checkpoint[p] = now
    if models:
        runtime.models_saved_at = now
    task = asyncio.ensure_future(_turn_stored(runtime, saves, models, pid, now))
    for p, _, _ in saves:
        runtime.bg_checkpoints[p] = task
    if models:
        runtime.models_child = task


def _freeze_heap(runtime: Runtime) -> None:
    """Before a checkpoint's fork: put every object alive now out of the collector's reach
    (streams.heap: full collections walked the whole state, a fifth of the worker's wall time at
    20k customers; the young generations are collected first; everything is collected once every
    WORKER_FULL_EVERY_S)."""
    runtime.heap.freeze(young=True)


def initial_models(settings: Settings, checkpoints: CheckpointStore,
                   config: ModelConfig) -> ModelSuite:
    """The consumer group's latest models snapshot (a restarted worker continues learning), or
    fresh models taught the sentiment corpus: when there is none, when it cannot be read, or
    when it was taken with other model settings (they take effect with fresh models)."""
    data = checkpoints.load_models()
    if data is not None:
        try:
            suite = ModelSuite.restore(data)
        except CheckpointError as exc:
            log.warning("the models snapshot %s is not restored (%s): starting fresh models",
                        checkpoints.models_key(), exc)
        else:
            if suite.config == config:
                log.info("models restored from %s (%d bytes, %d events learned)",
                         checkpoints.models_key(), len(data), suite.n_events)
                return suite
            log.warning("the models snapshot %s was taken with other model settings: starting "
                        "fresh models", checkpoints.models_key())
    return new_model_suite(config, settings.models.sentiment_corpus)


def _save_models(runtime: Runtime) -> None:
    """Store the models' snapshot under the group (CheckpointStore.save_models) in process, at
    shutdown; while running, each checkpoint turn's child stores it (:func:`_checkpoint_turn`).
    A restarted worker continues from it (`initial_models`); events between the snapshot and a
    crash are learned again, which moves the models a little, not the analyst tables."""
    models = runtime.models
    if models is None:
        return
    runtime.models_saved_at = time.monotonic()
    try:
        size = runtime.checkpoints.save_models(models.snapshot())
    except ServiceUnavailable as exc:
        log.warning("the models are not saved (%s): a restart continues from the snapshot "
                    "before", exc)
    else:
        log.info("models saved (%d bytes, %d events learned)", size, models.n_events)


async def _turn_stored(runtime: Runtime, saves: list[tuple[int, PartitionState, int]],
                       models: bool, pid: int, forked_at: float) -> None:
    """Wait for a checkpoint turn's child process; commit each partition's offset once the
    child has stored everything (a failed turn is tried again at the next one)."""
    if not await asyncio.to_thread(runtime.checkpoints.wait_child, pid):
        log.warning("checkpoint turn of partitions %s%s not stored (Redis unreachable?); the "
                    "next turn will try again", [p for p, _, _ in saves],
                    " and the models" if models else "")
        for p, _, _ in saves:
            runtime.last_checkpoint[p] = 0.0
        if models:
            runtime.models_saved_at = 0.0
        return
    runtime.metrics.checkpoint_child_seconds.observe(time.monotonic() - forked_at)
    for p, part, offset in saves:
        if runtime.partitions.get(p) is part:  # still ours: the commit may follow the save
            await _commit_checkpoint(runtime, p, offset)
        log.debug("partition %d: checkpoint at offset %d stored by a child process", p, offset)


async def _commit_checkpoint(runtime: Runtime, p: int, offset: int) -> None:
    app = runtime.app
    if app is not None and offset >= 0:
        tp = TP(runtime.settings.kafka.topics.resolved, p)
        if tp in app.consumer.assignment():
            await app.consumer._commit({tp: offset + 1})
    runtime.metrics.checkpoints.inc()


async def seek(consumer: Any, tp: Any, offset: int) -> None:
    """Seek `tp` to `offset`, from the consumer's own thread (what Faust's `Consumer.seek` does,
    without its thread race).

    Faust's `Consumer.seek` calls aiokafka's `seek` from the caller's thread, but aiokafka's
    fetcher belongs to Faust's consumer thread, which may be going through its fetched records
    at that moment: the seek deleted a partition's records under it, and the fetcher crashed
    with a KeyError in `Fetcher.fetched_records` (seen in e2e worker logs right after a worker
    restored a partition's checkpoint and sought to it; the worker died). Faust's own
    `seek_wait` goes through the thread's `call_thread`; so does this.
    """
    thread = consumer._thread
    await thread.call_thread(thread.seek, tp, offset)
    consumer._read_offset[tp] = offset if offset else None  # as Consumer.seek: read again


def _resolve(runtime: Runtime, events: list[TouchpointEvent]) -> ResolveResult:
    """Resolve one ingest batch (in a thread) with the collector paused and what the batch left
    alive frozen after it, as the journey batch runs: the worker's identity cache and the
    batch's events are not walked again at every collection (bench_identity.py: the client's
    CPU per event ~0.8x of the default collector's)."""
    with runtime.heap.batch():
        return runtime.resolver.resolve_batch(events)


def _journey_batch(runtime: Runtime, part: PartitionState, events: Sequence[Any], *,
                   here: Callable[[str], bool] | None = None,
                   ) -> tuple[ChainOutput, list[Message], list[Message], list[Scores]]:
    """One partition's share of a batch, in offset order: apply, merge, score. No awaits.

    A merge of L into W crosses partitions in three messages: "expect" keyed by W (sent first by
    the ingest agent), "merge" keyed by L, and the "transfer" of L's state that L's partition
    sends to W's after detaching L. W's partition holds its frontier from the "expect" until
    the "transfer" arrives, so nothing of W is released or finalized before L's events have
    joined it. Each merge is known by its loser and evidence event, and every step is
    idempotent, so duplicates from re-processing after a crash change nothing. A customer merged
    away can become a winner again (an earlier identifier turned up): its "expect" revives it.

    `here(customer)` says whether a customer's messages come to this partition. A transfer or a
    forwarded event for such a customer is applied at once, as if it had arrived as the next
    message (one of the orders Kafka could deliver anyway), instead of being sent to the end of
    this partition: there it waited behind everything not yet read, and the partition held its
    frontier all that time, with every later event waiting and every merge scanning them all
    (issue 6: with one partition, ~500 merges awaited and 24k events waiting at 13k customers).
    """
    m = runtime.metrics
    chain = part.chain
    out = ChainOutput()
    run = _Run()
    forwards: list[Message] = []
    transfers: list[Message] = []
    for ev in events:
        msg = ev.message
        if msg.offset <= part.offset:
            continue  # already in the checkpointed state
        part.offset = msg.offset
        kind = dict(msg.headers).get(H_TYPE) if msg.headers else None
        if kind is None or kind == H_EVENTS:
            source = Source(msg.topic, msg.partition, msg.offset)
            if kind is None:
                items = [(msg.key or b"", msg.value or b"")]
            else:
                try:
                    items = unpack(msg.value or b"")
                except EnvelopeError as exc:
                    _dead_letter(out, m, msg.value or b"",
                                 f"not a readable envelope of events: {exc}", source)
                    continue
            for key_bytes, value in items:
                try:
                    key = key_bytes.decode()
                except UnicodeDecodeError:
                    _dead_letter(out, m, value, f"the customer key {key_bytes!r} is not UTF-8",
                                 source)
                    continue
                if (winner := chain.winner_of(key)) is not None:
                    # resolved before its merge reached us: the event belongs to the winner now
                    if here is None or not here(winner):
                        forwards.append((winner.encode(), value, {}))
                        continue
                    key = winner  # the winner is ours: as if the forward had arrived next
                run.add(key, value, source)
            continue
        if run:  # the events before a control message come first
            chain.process_resolved(run.take(out, m, chain.decode_engine), (), out)
        mr = MergeRecord(**orjson.loads(msg.value)) if kind != b"transfer" else None
        if kind == b"expect" and mr is not None:
            if _mkey(mr) not in part.adopted and _mkey(mr) not in part.passed:
                part.awaiting[_mkey(mr)] = mr.winner
                part.away.pop(mr.winner, None)  # canonical again (an earlier identifier)
                chain.revive(mr.winner)
        elif kind == b"merge" and mr is not None:
            if _mkey(mr) not in part.detached:
                _route(part, _detach(part, mr), out, transfers, here)
        elif kind == b"transfer":
            _route(part, _adopt(part, *pickle.loads(msg.value), out), out, transfers, here)
        _hold(part)
    chain.process_resolved(run.take(out, m, chain.decode_engine), (), out)
    scores = _score(runtime, part, out)
    m.applied.inc(len(out.applied))
    m.duplicates.inc(len(out.duplicates))
    m.late.inc(len(out.late))
    return out, forwards, transfers, scores


class _Run:
    """A journey batch's events between two control messages, decoded together.

    One :func:`decode_events` call per run instead of one validation per event. The ingest
    agent validated every event already, so a message that fails here was not written by it
    (another producer on the customer-keyed topic, or a schema change between versions): it
    becomes a dead letter (stage ``journey``, written to the `dead_letters` table with the
    batch), never dropped in silence.
    """

    __slots__ = ("keys", "messages")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.messages: list[tuple[bytes, Source]] = []

    def __bool__(self) -> bool:
        return bool(self.keys)

    def add(self, key: str, value: bytes, source: Source) -> None:
        """One event: its customer, its bytes, and its message (an envelope's events share
        the envelope's)."""
        self.keys.append(key)
        self.messages.append((value, source))

    def take(self, out: ChainOutput, metrics: Any,
             engine: DecodeEngine = "auto") -> list[ResolvedEvent]:
        """The run's events with their customers, in order; the run is empty after. `engine`:
        the chain's decode.engine."""
        decoded, at, dead = decode_events(self.messages, engine)
        if dead:
            keys = self.keys
            events = [ResolvedEvent(keys[i], ev) for i, ev in zip(at, decoded, strict=True)]
            out.dead.extend(dataclasses.replace(letter, stage="journey") for letter in dead)
            metrics.dead.labels("journey").inc(len(dead))
            log.warning("%d event(s) on the customer-keyed topic are not valid events; "
                        "dead-lettered (stage journey), first: %s", len(dead), dead[0].reason)
        else:
            events = list(map(ResolvedEvent, self.keys, decoded))
        self.keys, self.messages = [], []
        return events


def _events_in(ev: Any) -> int:
    """How many events a message on touchpoints.resolved holds (controls and events: 1)."""
    msg = ev.message
    if msg.headers and dict(msg.headers).get(H_TYPE) == H_EVENTS:
        return max(envelope_count(msg.value or b""), 1)
    return 1


def _dead_letter(out: ChainOutput, metrics: Metrics, raw: bytes, reason: str,
                 source: Source) -> None:
    """A message (or an envelope's event) on the customer-keyed topic that cannot be read: a
    dead letter (stage ``journey``) with its bytes, never dropped in silence."""
    out.dead.append(DeadLetter(raw, reason, source, stage="journey"))
    metrics.dead.labels("journey").inc()
    log.warning("dead-lettered a message on the customer-keyed topic (stage journey): %s",
                reason)


def _route(part: PartitionState, transfer: Message | None, out: ChainOutput,
           transfers: list[Message], here: Callable[[str], bool] | None) -> None:
    """Send a transfer to its winner's partition, or adopt it here when that is this one (as if
    it had arrived as the next message; see _journey_batch). A transfer passed on again from
    here to here is adopted again, a bounded number of times."""
    for _ in range(MAX_LOCAL_HOPS):
        if transfer is None or here is None or not here(transfer[0].decode()):
            break
        transfer = _adopt(part, *pickle.loads(transfer[1]), out)
    if transfer is not None:
        transfers.append(transfer)


MAX_LOCAL_HOPS = 64  # after that many, a transfer goes through Kafka as before


def _hold(part: PartitionState) -> None:
    """Hold the chain at the frontier the oldest awaited merge found when it was announced.

    Each awaited merge needs nothing released past the frontier of its announcement until its
    transfer arrives; the earliest of those points satisfies all of them. Holding at the first
    announcement until no merge at all was awaited (as before) froze a partition that kept
    receiving merges until its input paused (issue 6): now the hold moves on as the oldest
    transfers arrive.
    """
    journeys = part.chain.journeys
    for key in part.awaiting:
        part.held_at.setdefault(key, (journeys.frontier_ms, journeys.watermark_ms))
    for key in [k for k in part.held_at if k not in part.awaiting]:
        del part.held_at[key]
    if part.held_at:
        part.chain.hold = (min(f for f, _ in part.held_at.values()),
                           min(w for _, w in part.held_at.values()))
    else:
        part.chain.hold = None


def _mkey(mr: MergeRecord) -> tuple[str, str]:
    """What identifies one merge, also after its winner was rewritten by a forward."""
    return mr.loser, mr.evidence_event_id


def _transfer(mr: MergeRecord, package: Any, model_state: Any,
              carried: list[tuple[str, str]]) -> Message:
    return (mr.winner.encode(), pickle.dumps((mr, package, model_state, carried)),
            {H_TYPE: b"transfer"})


def _detach(part: PartitionState, mr: MergeRecord) -> Message:
    """L's partition: detach L and send it to W. Transfers still awaited for L go with it."""
    chain = part.chain
    part.detached.add(_mkey(mr))
    carried = sorted(k for k, w in part.awaiting.items()
                     if w == mr.loser or chain.winner_of(w) == mr.loser)
    for k in carried:
        del part.awaiting[k]
    part.passed.update(carried)
    part.away[mr.loser] = mr.winner
    package = chain.detach_customer(mr.loser, mr.winner)
    return _transfer(mr, package, part.model_states.pop(mr.loser, None), carried)


def _adopt(part: PartitionState, mr: MergeRecord, package: Any, model_state: Any,
           carried: list[tuple[str, str]], out: ChainOutput) -> Message | None:
    """A transfer arrived: merge it into its winner here, or pass it on if the winner left."""
    key = _mkey(mr)
    if key in part.adopted:
        return None  # a duplicate (the merge was re-processed after a crash)
    bounced = mr.winner in part.away and mr.winner == mr.loser
    if bounced:
        # The loser's own state came home (passed on from its winner, which had been merged
        # back into it), but the loser left here too (a merge cycle whose messages crossed):
        # passing it on again would bounce it between the two for ever. Revive it here.
        log.warning("merge cycle crossed: %s's own state came home (merge %s, carrying %s)",
                    mr.loser, key, carried)
        part.away.pop(mr.loser)
        part.chain.revive(mr.loser)
    if mr.winner in part.away:  # the winner was merged away from here meanwhile
        part.passed.add(key)
        return _transfer(mr._replace(winner=part.away[mr.winner]), package, model_state,
                         carried)
    part.adopted.add(key)
    part.awaiting.pop(key, None)
    if mr.loser == mr.winner:
        # L was merged into W, then W into L before L's transfer reached W: L's old state came
        # home. Adopt it under an alias and merge that into L like any other merged customer.
        mr = mr._replace(loser=f"{mr.loser}@{mr.evidence_event_id}")
    for k in carried:
        # A bounce brings back the merges this partition handed on when the cycle crossed; their
        # transfers went on to the other side, which adopts them as its own bounce: waiting for
        # them here would hold this partition for good. (The ingest side sends related merges
        # in commit order, so that a cycle does not cross; this is the safety net.)
        if bounced and k in part.passed:
            log.warning("merge %s handed back by the crossed cycle is not awaited again", k)
        elif k not in part.adopted:
            part.awaiting[k] = mr.winner
    _hold(part)  # lifted before the merge, so the adopted events are released with it
    part.chain.attach_customer(package, mr, out)
    if model_state is not None:
        part.model_states.setdefault(mr.winner, model_state)
    return None


def _score(runtime: Runtime, part: PartitionState, out: ChainOutput) -> list[Scores]:
    if runtime.models is None:
        return []
    scores = score_released(runtime.models, part.model_states, part.last_scores, out.released)
    part.dirty_scores.update(s.customer_id for s in scores)
    return scores


async def _write_snapshots(runtime: Runtime) -> None:
    """The snapshot tables, as the replay writes them at its end (streams.outputs.snapshot_rows):
    funnel_dropoff per partition, the customer_scores changed since the last snapshot, and
    attribution and segments when this worker owns every partition (else it would write a part
    of them as the whole). Full values under the same keys as the replay's: rewriting is
    harmless, so a crash before the next checkpoint only writes them again."""
    if not runtime.partitions:
        return
    parts = sorted(runtime.partitions.items())
    scores = []
    taken: list[tuple[PartitionState, set[str]]] = []
    for _, part in parts:
        dirty, part.dirty_scores = part.dirty_scores, set()
        taken.append((part, dirty))
        for cid in dirty:
            if cid in part.away:  # merged away since: its winner's scores are the ones
                part.last_scores.pop(cid, None)
            elif (s := part.last_scores.get(cid)) is not None:
                scores.append(s)
    whole = len(parts) >= runtime.settings.kafka.partitions
    rows = snapshot_rows([(p, part.chain) for p, part in parts], runtime.models, scores,
                         int(time.time() * 1000), whole=whole)
    try:
        await _write(runtime, rows)
    except BaseException:
        for part, dirty in taken:  # not written: the next snapshot (or checkpoint) keeps them
            part.dirty_scores |= dirty
        raise


def latest_scores(scores: Sequence[Scores]) -> list[Scores]:
    """Each customer's last scores of a batch, in the order of those last ones: the `scores`
    topic carries a customer's live state (keyed by customer, newest wins), and one message
    per released event was most of the worker's producing after a backlog (issue 6)."""
    last = {s.customer_id: i for i, s in enumerate(scores)}
    return [scores[i] for i in sorted(last.values())]


def _scores_json(s: Scores) -> bytes:
    return orjson.dumps({
        "customer_id": s.customer_id, "ts_ms": s.ts_ms, "segment": s.segment,
        "p_convert": s.p_convert, "p_churn": s.p_churn,
        "top_features": [list(f) for f in s.top_features],
        "next_best_action": s.next_best_action, "expected_lift": s.expected_lift,
        "lookalike": s.lookalike, "sentiment": s.sentiment,
    })


async def _ack_links(runtime: Runtime, commits: list[str]) -> None:
    """The identity_links rows of `commits` (the oldest of `runtime.links_buffered`) are
    written: out of the links outbox. Redis unreachable: they stay listed for the next write
    (the rows are idempotent; a worker that dies first leaves them to the outbox sweep)."""
    try:
        await asyncio.to_thread(runtime.resolver.store.ack_links, *commits)
    except Exception as exc:
        log.warning("acknowledging %d identity commits failed (%s); retried after the next "
                    "write", len(commits), exc)
        return
    del runtime.links_buffered[:len(commits)]


def _deferred_due(runtime: Runtime, now: float) -> bool:
    """Whether the oldest row left buffered by a write with `only` has waited its budget."""
    since = runtime.deferred_since
    return since is not None and now - since >= runtime.flush_budget_s


async def _write(runtime: Runtime, *rows: Rows, only: Collection[str] | None = None) -> None:
    """Buffer rows and write them (all that is buffered, or only the tables `only` names).

    The ingest and journey agents share one writer: the lock keeps its buffers to one user at a
    time (the flush runs in a thread). While ClickHouse is unreachable the flush is retried and
    the batch waits; any other failure is a bug, and the worker stops rather than acknowledge
    rows it did not write (a restart resumes from the last checkpoint).

    `only`: the tables the caller needs written now (the ingest agent's own, before it acks its
    batch; the journey agent's `touchpoints`, for latency); the rest stays buffered until a
    later call writes everything: one without `only` (before every checkpoint), or any call
    once the oldest row left behind has waited `clickhouse.flush_interval_s` (issue 6: fewer
    inserts per batch, each insert costing the shared ClickHouse server a round trip).
    """
    if (only is not None and not any(any(r.values()) for r in rows)
            and not _deferred_due(runtime, time.monotonic())):
        # Nothing of the caller's to write and nothing deferred is due: a batch of merge
        # messages only (a third of the journey batches of a live stream) does not wait for
        # the lock while the other agent's insert holds it.
        return
    async with runtime.sink_lock:
        # (commits listed before this write added its rows: theirs are buffered already)
        links = runtime.links_buffered[:]
        for table_rows in rows:
            add_rows(runtime.writer, table_rows, runtime.rows)
        now = time.monotonic()
        if only is not None and not _deferred_due(runtime, now):
            if not only:  # rows to buffer and nothing to write now (the ingest agent's links)
                if runtime.writer.pending_rows and runtime.deferred_since is None:
                    runtime.deferred_since = now
                return
            flush = functools.partial(runtime.writer.flush, tables=list(only))
        else:
            flush = runtime.writer.flush
        while True:
            try:
                await asyncio.to_thread(flush)
                runtime.metrics.sink_batches.inc()
                if not runtime.writer.pending_rows:
                    runtime.deferred_since = None
                elif runtime.deferred_since is None:
                    runtime.deferred_since = now
                if links and not runtime.writer.holds("identity_links"):
                    await _ack_links(runtime, links)
                return
            except ServiceUnavailable as exc:
                runtime.metrics.sink_failures.inc()
                log.warning("ClickHouse unreachable (%s); keeping the rows and retrying", exc)
                await asyncio.sleep(1.0)
            except Exception as exc:
                runtime.metrics.sink_failures.inc()
                log.exception("writing to ClickHouse failed; stopping the worker")
                if runtime.app is not None:
                    await runtime.app.crash(exc)
                raise

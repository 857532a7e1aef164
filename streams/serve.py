"""Publishing the serving state (:mod:`sinks.serving`) from the worker and from the replay.

The worker calls :func:`publish_partitions` after each ClickHouse flush: the customers scored in
the batch get their new state in Redis (one pipelined round trip per 1,000 customers), and the
customers `journeymap forget` removed lose the in-memory state the partition still holds (journey,
pending events, funnel runs, model state, scores), which the next checkpoint then no longer has.
The replay calls :func:`publish_replay` once at the end (``--serve-redis``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from processors.errors import ServiceUnavailable
from sinks.serving import ServingStore, state_of
from streams.settings import Settings

log = logging.getLogger("journeymap.serving")

if TYPE_CHECKING:
    from online_models.suite import Scores
    from processors.chain import JourneyChain
    from streams.replay import Replayer


def identity_prefix(settings: Settings) -> str:
    """The workers' identity graph prefix (see streams.app.Runtime)."""
    return f"jm:id:{settings.kafka.consumer_group}"


def serving_prefix(settings: Settings) -> str:
    return settings.serving.redis_prefix or f"jm:serve:{settings.kafka.consumer_group}"


def serving_store(settings: Settings, redis_url: str | None = None) -> ServingStore:
    return ServingStore(
        redis_url or settings.redis.url, serving_prefix(settings), identity_prefix(settings)
    )


def latest_states(
    chain: JourneyChain, scores: Iterable[Scores], now_ms: int
) -> list[dict[str, Any]]:
    """One state per customer: the latest of their scores, with their open funnel stages."""
    latest: dict[str, Scores] = {}
    for s in scores:
        latest[s.customer_id] = s
    return [state_of(s, chain.funnels.customer(cid), now_ms) for cid, s in latest.items()]


def drop_forgotten(part: Any, forgotten: set[str]) -> list[str]:
    """Drop forgotten customers' journeys, model states and scores from a worker partition;
    returns those it held."""
    held = sorted(
        cid for cid in forgotten
        if cid in part.model_states or cid in part.chain.journeys
        or cid in part.last_scores
    )
    for cid in held:
        part.chain.forget_customer(cid)
        part.model_states.pop(cid, None)
        part.last_scores.pop(cid, None)
    return held


def _publish_sync(store: ServingStore, batches: Sequence[tuple[Any, list[Scores]]]) -> int:
    now_ms = int(time.time() * 1000)
    forgotten = store.forgotten()
    dropped: list[str] = []
    states: list[dict[str, Any]] = []
    for part, scores in batches:
        if forgotten:
            dropped += drop_forgotten(part, forgotten)
        states += latest_states(
            part.chain, (s for s in scores if s.customer_id not in forgotten), now_ms
        )
    if dropped:
        store.drop(dropped)
        store.clear_forgotten(dropped)
    return store.write(states)


async def publish_partitions(
    store: ServingStore | None, batches: Sequence[tuple[Any, list[Scores]]],
    retry_total_s: float = 30.0,
) -> int:
    """Worker hook, after each flush: `batches` is (PartitionState, the batch's scores) per
    partition. Forgotten customers a partition still holds are dropped first (each batch reads
    the small `forgotten` hash: one round trip)."""
    if store is None or not batches:
        return 0
    delay, waited = 0.2, 0.0
    while True:
        try:
            return await asyncio.to_thread(_publish_sync, store, batches)
        except ServiceUnavailable as exc:
            if waited >= retry_total_s:
                # The serving state is a cache of customer_scores (ClickHouse has the rows):
                # do not stall the pipeline; the customers' next events write it again.
                log.warning("serving state not written for this batch (%s); continuing", exc)
                return 0
            log.warning("Redis unreachable for the serving state (%s); retrying in %.1fs",
                        exc, delay)
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)


def publish_replay(replayer: Replayer, store: ServingStore) -> tuple[int, int]:
    """Write every scored customer of a finished replay, and its identifier lookup.

    Returns (customers, identifiers) written.
    """
    now_ms = int(time.time() * 1000)
    n_states = store.write(latest_states(replayer.chain, replayer.last_scores.values(), now_ms))
    graph = replayer.chain.resolver.store.graph.partition()  # type: ignore[attr-defined]
    n_ids = store.write_identifiers(graph.items())
    return n_states, n_ids

"""Chain outputs -> ClickHouse rows: one mapping shared by the replay and the streaming worker,
so that both write the same analyst tables from the same events."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from online_models.suite import CustomerModelState, ModelSuite, Scores
from processors.attribution import attribute
from processors.chain import ChainOutput, JourneyChain
from processors.events import ResolvedEvent
from processors.identity import MergeRecord
from sinks import clickhouse as ch

Rows = dict[str, list[dict[str, Any]]]


def merge_rows_of(merges: list[MergeRecord]) -> list[MergeRecord]:
    """The identity_merges rows of a batch's merges, in order.

    A winner renamed by earlier evidence (a new canonical id) may be an id that was merged away
    before (L -> W, later W -> L): its own row (W -> W) comes first and replaces its stale one in
    identity_merges (kept by loser), so customer_map does not follow the old merge in a cycle.
    """
    rows: list[MergeRecord] = []
    for mr in merges:
        if mr.reason == "earlier_evidence":
            rows.append(mr._replace(loser=mr.winner))
        rows.append(mr)
    return rows


def chain_rows(
    out: ChainOutput,
    now_ms: int,
    shard: int,
    sentiments: Mapping[str, float],
    clock: ch.EmissionClock | None = None,
) -> Rows:
    """Rows of the per-batch tables. Facts are written once final (see processors.chain).

    `clock` gives transition panes strictly increasing versions across calls (one per process).
    """
    version = clock(now_ms) if clock is not None else now_ms
    return {
        "dead_letters": [ch.dead_letter_row(d, now_ms) for d in out.dead],
        "late_events": [ch.late_event_row(x, now_ms) for x in out.late],
        "identity_links": [ch.identity_link_row(x) for x in out.links],
        "identity_merges": [ch.identity_merge_row(x) for x in merge_rows_of(out.merges)],
        "identity_conflicts": [ch.identity_conflict_row(x) for x in out.conflicts],
        "touchpoints": [
            ch.touchpoint_row(ev, now_ms, sentiments.get(ev.event.event_id))
            for ev in out.released
        ],
        "transition_cells": [ch.transition_cell_row(c, shard, version) for c in out.cells],
        "funnel_progress": [t.as_row() for t in out.funnel_transitions],
    }


def add_rows(writer: ch.SinkWriter, rows: Rows, counts: dict[str, int] | None = None) -> None:
    for table, table_rows in rows.items():
        if table_rows:
            writer.add(table, table_rows)
            if counts is not None:
                counts[table] = counts.get(table, 0) + len(table_rows)


def score_released(
    models: ModelSuite,
    states: dict[str, CustomerModelState],
    last_scores: dict[str, Scores],
    released: list[ResolvedEvent],
) -> list[Scores]:
    """Feed released events (event-time order) to the models; one Scores per event."""
    scores: list[Scores] = []
    for ev in released:
        state = states.get(ev.customer_id)
        if state is None:
            state = states[ev.customer_id] = models.new_customer()
        s = models.update(ev, state)
        last_scores[ev.customer_id] = s
        scores.append(s)
    return scores


def score_history_rows(scores: Sequence[Scores]) -> list[dict[str, Any]]:
    """`customer_score_history` rows of a batch's scores (event-time order): the last score of
    each customer per event-time day. A later batch of the same day rewrites the row with a
    newer version (`ts`); the replay and the worker write the same rows from the same events."""
    last: dict[tuple[str, int], Scores] = {}
    for s in scores:
        last[(s.customer_id, s.ts_ms // 86_400_000)] = s
    return [ch.customer_score_history_row(s) for s in last.values()]


def sentiments_of(released: list[ResolvedEvent], scores: list[Scores]) -> dict[str, float]:
    """event_id -> sentiment score, for the events whose text was scored."""
    return {
        ev.event.event_id: s.sentiment_score
        for ev, s in zip(released, scores, strict=False)
        if s.sentiment_score is not None
    }


def snapshot_rows(
    shards: Sequence[tuple[int, JourneyChain]],
    models: ModelSuite | None,
    scores: Collection[Scores],
    now_ms: int,
    *,
    whole: bool = True,
) -> Rows:
    """Rows of the snapshot tables, as of `now_ms`: one place for the replay (at its end) and
    the streaming worker (on a schedule and at shutdown), so both write the same rows.

    `funnel_dropoff` per shard (the chain of one partition; 0 in the replay), the given
    customers' `customer_scores`, and, when `whole` (these chains hold every customer: the
    replay, or a worker owning every partition), `attribution` over all their paths and the
    `segments` of the models. A worker holding only some partitions would write a part as if
    it were the whole, under the same keys: it leaves those two out.
    """
    rows: Rows = {
        "funnel_dropoff": [
            ch.funnel_dropoff_row(s, now_ms, shard)
            for shard, chain in shards for s in chain.funnels.snapshot()
        ],
    }
    if whole and shards:
        # the paths of every partition together (removal effects do not add up), as of the
        # newest event time of them all (a quiet partition's own watermark lags behind)
        now = max(chain.journeys.watermark_ms for _, chain in shards)
        attribution = {
            level: attribute(
                [path for _, chain in shards for path in chain.paths.paths(level, now)], (1, 2)
            )
            for level in ("touchpoint", "channel")
        }
        rows["attribution"] = [
            a.as_row(now_ms, level) for level, results in attribution.items() for a in results
        ]
    if models is not None:
        rows["customer_scores"] = [ch.customer_score_row(s, now_ms) for s in scores]
        if whole:
            rows["segments"] = [ch.segment_row(p, now_ms) for p in models.profiles()]
    return rows

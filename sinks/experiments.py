"""Experiments in ClickHouse (migration 0007): interventions, assignments, outcomes and results.

Every value travels as a query parameter or through `insert`; nothing is formatted into SQL.
The statistics are :mod:`processors.experiments`; this module only reads and writes rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from processors.experiments import (
    Assignment,
    ExperimentReport,
    Intervention,
    VariantOutcome,
)
from sinks.clickhouse import SinkWriter, Store

_INTERVENTION_COLUMNS = (
    "intervention_id, name, description, segment, channel, experiment, variants, control, "
    "outcome_touchpoints, started_at, ended_at, planned_n_per_variant, created_at, created_by"
)


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _write(store: Store, table: str, rows: Sequence[dict[str, Any]]) -> int:
    if not rows:
        return 0
    writer: SinkWriter = store.writer(flush_rows=len(rows) + 1, flush_interval_s=3600.0)
    writer.add(table, rows)
    writer.flush()
    return len(rows)


def record_intervention(store: Store, intervention: Intervention) -> None:
    _write(store, "interventions", [intervention.as_row()])


def record_assignments(store: Store, assignments: Sequence[Assignment]) -> int:
    return _write(store, "experiment_assignments", [a.as_row() for a in assignments])


def interventions(store: Store, experiment: str | None = None) -> list[Intervention]:
    """Every intervention (or those of one experiment), oldest first."""
    sql = f"SELECT {_INTERVENTION_COLUMNS} FROM interventions FINAL"
    params: dict[str, Any] = {}
    if experiment is not None:
        sql += " WHERE experiment = {experiment:String}"
        params["experiment"] = experiment
    rows = store.client.query(sql + " ORDER BY started_at, intervention_id",
                              parameters=params or None).result_rows
    return [
        Intervention(
            intervention_id=r[0], name=r[1], description=r[2], segment=r[3], channel=r[4],
            experiment=r[5], variants=tuple(r[6]), control=r[7], outcome_touchpoints=tuple(r[8]),
            started_at_ms=_ms(r[9]) or 0, ended_at_ms=_ms(r[10]), planned_n_per_variant=int(r[11]),
            created_at_ms=_ms(r[12]) or 0, created_by=r[13],
        )
        for r in rows
    ]


def assigned(store: Store, experiment: str, customer_ids: Sequence[str]) -> dict[str, str]:
    """customer -> variant, for those of `customer_ids` already assigned in `experiment`."""
    if not customer_ids:
        return {}
    rows = store.client.query(
        "SELECT customer_id, variant FROM experiment_assignments FINAL "
        "WHERE experiment = {e:String} AND customer_id IN {ids:Array(String)}",
        parameters={"e": experiment, "ids": list(customer_ids)},
    ).result_rows
    return {str(c): str(v) for c, v in rows}


def outcomes(store: Store, experiment: str) -> list[VariantOutcome]:
    rows = store.client.query(
        "SELECT variant, segment, n_assigned, n_converted FROM experiment_outcomes "
        "WHERE experiment = {e:String} ORDER BY variant, segment",
        parameters={"e": experiment},
    ).result_rows
    return [VariantOutcome(str(v), str(s), int(n), int(x)) for v, s, n, x in rows]


def save_results(store: Store, report: ExperimentReport, as_of_ms: int) -> int:
    return _write(
        store, "experiment_results",
        [c.as_row(report.experiment, as_of_ms) for c in report.comparisons],
    )


def customers_in_segment(store: Store, segment: str, limit: int) -> list[tuple[str, str]]:
    """(customer, segment of their latest touchpoint) of the customers in `segment` ('*' = all),
    by customer id. From `touchpoints`, which the replay and the workers both write."""
    rows = store.client.query(
        "SELECT customer_id, toString(argMax(segment, occurred_at)) AS seg "
        "FROM touchpoints FINAL GROUP BY customer_id "
        "HAVING {seg:String} = '*' OR seg = {seg:String} "
        "ORDER BY customer_id LIMIT {n:UInt64}",
        parameters={"seg": segment, "n": limit},
    ).result_rows
    return [(str(c), str(s)) for c, s in rows]

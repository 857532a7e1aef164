"""Deleting customers from ClickHouse (`journeymap forget`): real mutations, then a record.

Which rows belong to a customer:

* every MergeTree table of the database with a ``customer_id`` column (found in
  ``system.columns``, so tables added later are covered): ``touchpoints``, ``late_events``,
  ``identity_links``, ``funnel_progress``, ``customer_scores``, ``customer_score_history``,
  ``experiment_assignments``...;
* ``identity_merges`` (``loser`` or ``winner``) and ``identity_conflicts`` (``customer_a`` or
  ``customer_b``);
* ``alerts`` whose evidence names the customer; ``segments`` lose the customer from their
  ``examples`` (an UPDATE mutation: the segment row itself is not the customer's);
* ``dead_letters`` whose original bytes contain the raw identifier given (the only identifier
  journeymap ever saw raw: the others exist as hashes only).

Each is an ``ALTER TABLE ... DELETE/UPDATE WHERE ...`` with ``mutations_sync = 2`` (the command
returns when the parts are rewritten), the ids passed as query parameters. Table names come from
``system.tables`` and are checked against the identifier pattern before they are quoted.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sinks.clickhouse import Store

_IDENT: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SYNC: Final = " SETTINGS mutations_sync = 2"


@dataclass(frozen=True, slots=True)
class Target:
    """Rows of `table` matching `where` (parameters: ids, raw) are the customer's."""

    table: str
    where: str
    update: str | None = None  # an UPDATE expression instead of a DELETE


SPECIAL: Final = (
    Target("identity_merges", "loser IN {ids:Array(String)} OR winner IN {ids:Array(String)}"),
    Target("identity_conflicts",
           "customer_a IN {ids:Array(String)} OR customer_b IN {ids:Array(String)}"),
    Target("alerts", "multiSearchAny(evidence, {ids:Array(String)})"),
    Target("segments", "hasAny(examples, {ids:Array(String)})",
           update="examples = arrayFilter(x -> NOT has({ids:Array(String)}, x), examples)"),
)
DEAD_LETTERS: Final = Target(
    "dead_letters", "positionCaseInsensitive(base64Decode(raw_b64), {raw:String}) > 0"
)


@dataclass
class DeletionReport:
    customer_ids: list[str]
    rows_removed: dict[str, int] = field(default_factory=dict)
    rows_left: dict[str, int] = field(default_factory=dict)
    redis_keys_removed: dict[str, int] = field(default_factory=dict)


def targets(store: Store, raw: str | None) -> list[Target]:
    """Every table holding customer rows in this database."""
    rows = store.client.query(
        "SELECT t.name FROM system.tables AS t INNER JOIN system.columns AS c "
        "ON c.database = t.database AND c.table = t.name "
        "WHERE t.database = {db:String} AND t.engine LIKE '%MergeTree' "
        "AND c.name = 'customer_id' ORDER BY t.name",
        parameters={"db": store.database},
    ).result_rows
    found = [Target(str(r[0]), "customer_id IN {ids:Array(String)}") for r in rows]
    existing = set(_tables(store))
    found += [t for t in SPECIAL if t.table in existing]
    if raw and DEAD_LETTERS.table in existing:
        found.append(DEAD_LETTERS)
    for t in found:
        if not _IDENT.match(t.table):
            raise ValueError(f"unexpected table name {t.table!r}")
    return found


def _tables(store: Store) -> list[str]:
    return [
        str(r[0]) for r in store.client.query(
            "SELECT name FROM system.tables WHERE database = {db:String}",
            parameters={"db": store.database},
        ).result_rows
    ]


def _params(t: Target, ids: Sequence[str], raw: str | None) -> dict[str, Any]:
    return {"raw": raw or ""} if t is DEAD_LETTERS else {"ids": list(ids)}


def count_rows(store: Store, t: Target, ids: Sequence[str], raw: str | None) -> int:
    """Rows of the customer physically present (no FINAL: old versions count too)."""
    return int(store.client.query(
        f"SELECT count() FROM `{t.table}` WHERE {t.where}", parameters=_params(t, ids, raw)
    ).result_rows[0][0])


def delete_customers(store: Store, ids: Sequence[str], raw: str | None) -> DeletionReport:
    """Remove the customers `ids` from every table; counts before and after, per table."""
    report = DeletionReport(list(ids))
    for t in targets(store, raw):
        before = count_rows(store, t, ids, raw)
        if before:
            action = f"UPDATE {t.update}" if t.update else "DELETE"
            store.client.command(
                f"ALTER TABLE `{t.table}` {action} WHERE {t.where}{_SYNC}",
                parameters=_params(t, ids, raw),
            )
        report.rows_removed[t.table] = before
        report.rows_left[t.table] = count_rows(store, t, ids, raw) if before else 0
    return report


def record_deletion(store: Store, report: DeletionReport, kind: str, id_hash: str,
                    at_ms: int) -> str:
    deletion_id = uuid.uuid4().hex
    store.client.insert(
        "deletions",
        [[deletion_id, at_ms, kind, id_hash, len(report.customer_ids),
          report.rows_removed, report.redis_keys_removed]],
        column_names=["deletion_id", "requested_at", "id_kind", "id_hash", "n_customers",
                      "rows_removed", "redis_keys_removed"],
    )
    return deletion_id


def customers_of(store: Store, kind: str, id_hash: str) -> list[str]:
    """Customers an identifier was linked to in ClickHouse, with everyone merged with them."""
    ids = [str(r[0]) for r in store.client.query(
        "SELECT DISTINCT customer_id FROM identity_links FINAL "
        "WHERE kind = {k:String} AND id_hash = {h:String}",
        parameters={"k": kind, "h": id_hash},
    ).result_rows]
    return related_customers(store, ids)


def related_customers(store: Store, ids: Sequence[str]) -> list[str]:
    """`ids` plus every customer merged into them or they were merged into (customer_map)."""
    if not ids:
        return []
    rows = store.client.query(
        "SELECT customer_id, winner FROM customer_map "
        "WHERE customer_id IN {ids:Array(String)} OR winner IN {ids:Array(String)} "
        "OR winner IN (SELECT winner FROM customer_map WHERE customer_id IN {ids:Array(String)})",
        parameters={"ids": list(ids)},
    ).result_rows
    out = set(ids)
    for cid, winner in rows:
        out.update((str(cid), str(winner)))
    return sorted(out)


def identifier_hashes(store: Store, ids: Sequence[str]) -> list[tuple[str, str]]:
    """(kind, id_hash) of every identifier linked to the customers `ids`."""
    if not ids:
        return []
    return [(str(k), str(h)) for k, h in store.client.query(
        "SELECT DISTINCT toString(kind), id_hash FROM identity_links FINAL "
        "WHERE customer_id IN {ids:Array(String)}",
        parameters={"ids": list(ids)},
    ).result_rows]

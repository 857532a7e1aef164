"""`journeymap forget KIND:VALUE`: remove a customer from ClickHouse, Redis and worker state."""

from __future__ import annotations

import hashlib
import re
import sys
import time
from dataclasses import dataclass

import click

from processors.identity import KIND_CODE, IdentityResolver
from streams.cli import settings_from
from streams.settings import Settings

KINDS = (*KIND_CODE, "customer_id")
_CUSTOMER_ID = re.compile(r"^c_[0-9a-f]{16}$")


@dataclass
class Forgotten:
    kind: str
    id_hash: str
    customer_ids: list[str]
    rows_removed: dict[str, int]
    rows_left: dict[str, int]
    redis_keys_removed: dict[str, int]
    deletion_id: str | None


def parse_identifier(text: str) -> tuple[str, str]:
    kind, sep, value = text.partition(":")
    if not sep or kind not in KINDS or not value.strip():
        raise click.BadParameter(
            f"expected KIND:VALUE with KIND one of {', '.join(KINDS)} "
            "(e.g. email:ada@example.com or customer_id:c_0123456789abcdef)",
            param_hint="IDENTIFIER",
        )
    if kind == "customer_id" and not _CUSTOMER_ID.match(value):
        raise click.BadParameter("a customer_id is c_ and 16 lowercase hex characters",
                                 param_hint="IDENTIFIER")
    return kind, value


def forget_identifier(settings: Settings, kind: str, value: str, *, dry_run: bool = False,
                      redis_url: str | None = None) -> Forgotten:
    """Find the customer(s) behind an identifier and delete them everywhere.

    ClickHouse: mutations on every table holding their rows (sinks.deletion). Redis: the identity
    graph nodes, member set and record; the serving state and lookups; a `forgotten` mark the
    workers consume to drop in-memory state. Then a row in `deletions`.
    """
    from sinks import clickhouse as ch
    from sinks import deletion
    from streams.serve import serving_store

    config = settings.processing()
    serving = serving_store(settings, redis_url)
    store = ch.connect(settings.clickhouse)
    try:
        ch.check_schema(store)
        if kind == "customer_id":
            node_key = ""
            id_hash = hashlib.sha256(f"{config.identity_salt}customer_id:{value}".encode()
                                     ).hexdigest()
            found = serving.find(customer_id=value)
            ids = deletion.related_customers(store, [value])
            raw = None
        else:
            key = IdentityResolver(config.identity, config.identity_salt).key_of(kind, value)
            if key is None:
                raise ValueError(f"{kind} {value!r} is a placeholder value, linked to no one")
            node_key, id_hash, raw = key, key[1:], value.strip()
            found = serving.find(node_key=key)
            ids = deletion.customers_of(store, kind, id_hash)
        if found is not None:
            ids = deletion.related_customers(store, sorted({*ids, found.customer_id}))
        if not ids:
            return Forgotten(kind, id_hash, [], {}, {}, {}, None)
        node_keys = sorted(
            {KIND_CODE[k] + h for k, h in deletion.identifier_hashes(store, ids)}
            | {k for cid in ids for k in serving.node_keys_of(cid)}
            | ({node_key} if node_key else set())
        )
        if dry_run:
            counts = {t.table: deletion.count_rows(store, t, ids, raw)
                      for t in deletion.targets(store, raw)}
            return Forgotten(kind, id_hash, ids, counts, {}, {}, None)
        redis_removed: dict[str, int] = {"identity_nodes": 0, "serving_state": 0,
                                         "serving_members": 0, "serving_ids": 0}
        now_ms = int(time.time() * 1000)
        for cid in ids:
            # mark first: a worker touching the customer meanwhile drops its state
            serving.mark_forgotten(cid, now_ms)
            redis_removed["identity_nodes"] += len(serving.forget_identity(cid))
            for name, n in serving.forget(cid, node_keys).items():
                redis_removed[name] += n
        report = deletion.delete_customers(store, ids, raw)
        report.redis_keys_removed = redis_removed
        deletion_id = deletion.record_deletion(store, report, kind, id_hash, now_ms)
        return Forgotten(kind, id_hash, ids, report.rows_removed, report.rows_left,
                         redis_removed, deletion_id)
    finally:
        store.close()
        serving.close()


@click.command("forget")
@click.argument("identifier")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; change nothing.")
@click.pass_context
def forget(ctx: click.Context, identifier: str, dry_run: bool) -> None:
    """Delete a customer everywhere: IDENTIFIER is KIND:VALUE, KIND one of anonymous_id,
    device_id, user_id, email, crm_id, customer_id (e.g. `journeymap forget email:ada@x.org`).

    Finds every customer the identifier was linked to (and everyone merged with them), deletes
    their rows from every ClickHouse table with real mutations, removes them from Redis (identity
    graph, serving state) and marks them so running workers drop their in-memory state, then
    records the deletion (when, the salted hash of the identifier, rows removed per table) in the
    `deletions` table. Kafka topics keep raw events until their retention expires; see
    docs/serving.md#deletion for what that means.
    """
    from rich.console import Console
    from rich.table import Table

    kind, value = parse_identifier(identifier)
    settings = settings_from(ctx)
    console = Console()
    with console.status("finding the customer and deleting their rows (mutations wait for the "
                        "parts to be rewritten)..."):
        try:
            result = forget_identifier(settings, kind, value, dry_run=dry_run)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="IDENTIFIER") from None
    if not result.customer_ids:
        console.print(f"no customer is known by this {kind}; nothing deleted")
        sys.exit(1)
    verb = "would remove" if dry_run else "removed"
    table = Table("store", "what", verb, "left",
                  title=f"{len(result.customer_ids)} customer(s): "
                        f"{', '.join(result.customer_ids)}")
    for name, n in sorted(result.rows_removed.items()):
        left = "" if dry_run else str(result.rows_left.get(name, 0))
        table.add_row("ClickHouse", name, f"{n:,}", left)
    for name, n in sorted(result.redis_keys_removed.items()):
        table.add_row("Redis", name, f"{n:,}", "")
    console.print(table)
    if not dry_run:
        console.print(f"recorded as deletion {result.deletion_id} in the `deletions` table; "
                      "running workers drop the customer's in-memory state on their next batch")
        if any(result.rows_left.values()):
            raise click.ClickException("some rows are still there (see `left`): run it again")

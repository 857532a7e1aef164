"""Versioned schema migrations: `NNNN_name.sql`, applied in order by `journeymap migrate`."""

# Tables that may age out (clickhouse.ttl_days / clickhouse.ttl_days_by_table) and the event-time
# column their TTL counts from. Not here: identity_links and the customer map (dropping a link would
# split a customer), schema_migrations. Plain data, so the settings can validate table names without
# importing the ClickHouse client.
RETENTION_COLUMNS: dict[str, str] = {
    "touchpoints": "occurred_at",
    "dead_letters": "received_at",
    "late_events": "received_at",
    "identity_merges": "merged_at",
    "identity_conflicts": "ts",
    "transition_cells": "pane_start",
    "transition_panes": "pane_start",
    "funnel_progress": "ts",
    "attribution": "as_of",
    "customer_scores": "as_of",
    "customer_score_history": "day",
    "segments": "as_of",
    "alerts": "ts",
}
# The raw tables `clickhouse.ttl_days` applies to; the others keep rows unless given a TTL by name.
RAW_TABLES: tuple[str, ...] = ("touchpoints", "dead_letters", "late_events")

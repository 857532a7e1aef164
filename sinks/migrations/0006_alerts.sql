-- Alerts raised by the drift detectors and rules, keyed by their deterministic alert_id.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    ts DateTime64(3, 'UTC'),
    kind LowCardinality(String),
    severity LowCardinality(String),
    segment LowCardinality(String),
    metric LowCardinality(String),
    message String,
    evidence String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (kind, ts, alert_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Every accepted event, one row per event_id, every dead letter, and every late event.
-- ReplacingMergeTree on keys taken from the event itself: a redelivered event replaces its
-- earlier copy (the latest ingestion wins, so a re-resolved customer_id is kept).
CREATE TABLE IF NOT EXISTS touchpoints
(
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    customer_id String,
    channel LowCardinality(String),
    touchpoint LowCardinality(String),
    session_id String,
    segment LowCardinality(String),
    revenue Float64,
    properties Map(String, String),
    has_text Bool,
    sentiment Nullable(Float32),
    ingested_at DateTime64(3, 'UTC'),
    INDEX idx_customer customer_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (channel, touchpoint, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS dead_letters
(
    received_at DateTime64(3, 'UTC'),
    reason String,
    stage LowCardinality(String),
    source_topic LowCardinality(String),
    source_partition Int32,
    source_offset Int64,
    errors String,
    raw_b64 String
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY (source_topic, source_partition, source_offset, stage)
SETTINGS non_replicated_deduplication_window = 1000;

-- Events that came after the frontier (watermark minus the allowed lateness): valid, resolved,
-- but not applied to journeys, transitions or funnels. One row per event_id.
CREATE TABLE IF NOT EXISTS late_events
(
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    customer_id String,
    channel LowCardinality(String),
    touchpoint LowCardinality(String),
    segment LowCardinality(String),
    watermark DateTime64(3, 'UTC'),
    frontier DateTime64(3, 'UTC'),
    reason String,
    received_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (event_id)
SETTINGS non_replicated_deduplication_window = 1000;

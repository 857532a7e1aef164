-- One row per customer stage advance, and drop-off snapshots per funnel stage and cohort.
-- funnel_dropoff: one snapshot per shard (the partition whose worker tracks those customers; 0 in
-- the replay): counts add up over shards. segment '*' / cohort_week NULL are roll-ups.
CREATE TABLE IF NOT EXISTS funnel_progress
(
    customer_id String,
    funnel LowCardinality(String),
    from_stage LowCardinality(String),
    to_stage LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    time_in_prev_stage_ms Nullable(UInt64),
    segment LowCardinality(String),
    cohort_week Date
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (funnel, cohort_week, to_stage, customer_id, ts)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS funnel_dropoff
(
    shard UInt16 DEFAULT 0,
    funnel LowCardinality(String),
    stage LowCardinality(String),
    stage_index UInt8,
    segment LowCardinality(String),
    cohort_week Nullable(Date),
    entered UInt64,
    advanced UInt64,
    dropped UInt64,
    median_time_to_advance_ms Nullable(Float64),
    p90_time_to_advance_ms Nullable(Float64),
    as_of DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(as_of)
ORDER BY (funnel, segment, cohort_week, stage_index, stage, shard)
SETTINGS non_replicated_deduplication_window = 1000, allow_nullable_key = 1;

-- Attribution snapshots, the latest score per customer, segment snapshots.
CREATE TABLE IF NOT EXISTS attribution
(
    as_of DateTime64(3, 'UTC'),
    model LowCardinality(String),
    level LowCardinality(String),
    key LowCardinality(String),
    removal_effect Nullable(Float64),
    conversions_attributed Float64,
    revenue_attributed Float64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(as_of)
ORDER BY (model, level, as_of, key)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS customer_scores
(
    customer_id String,
    as_of DateTime64(3, 'UTC'),
    ts DateTime64(3, 'UTC'),
    segment LowCardinality(String),
    p_convert Float32,
    p_churn Float32,
    next_best_action LowCardinality(String),
    expected_lift Float32,
    lookalike Nullable(Float32),
    top_features String,
    sentiment LowCardinality(String),
    sentiment_score Nullable(Float32)
)
ENGINE = ReplacingMergeTree(as_of)
ORDER BY customer_id
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS segments
(
    segment LowCardinality(String),
    as_of DateTime64(3, 'UTC'),
    size UInt64,
    sample_share Float64,
    centroid String,
    conversion_rate Float64,
    examples Array(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (segment, as_of)
SETTINGS non_replicated_deduplication_window = 1000;

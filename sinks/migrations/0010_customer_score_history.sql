-- Each customer's scores over time: the last score of each customer per event-time day (UTC).
-- `customer_scores` keeps only the latest score; this table lets "falling propensity" compare a
-- customer's score now with their score before a window started. Written by the replay and the
-- streaming worker from the scores of every released event (streams.outputs.score_history_rows):
-- a full value under a deterministic key (customer_id, day), the latest event time of the day
-- winning (`ts` is the version), so re-processing the same events rewrites the same rows.
CREATE TABLE IF NOT EXISTS customer_score_history
(
    customer_id String,
    day Date,
    ts DateTime64(3, 'UTC'),
    segment LowCardinality(String),
    p_convert Float32,
    p_churn Float32,
    lookalike Nullable(Float32),
    next_best_action LowCardinality(String)
)
ENGINE = ReplacingMergeTree(ts)
PARTITION BY toYYYYMM(day)
ORDER BY (customer_id, day)
SETTINGS non_replicated_deduplication_window = 1000;

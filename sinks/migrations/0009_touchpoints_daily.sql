-- A daily rollup of touchpoints, kept by ClickHouse itself: a materialized view folds every insert
-- into `touchpoints` into AggregatingMergeTree states, so daily counts per channel and touchpoint
-- read a few thousand rows instead of scanning every event. The states are exact distinct counts
-- (uniqExact) of event ids and customer ids, so a batch delivered twice (at-least-once) still
-- counts once. Customers are counted by the id the event carried when it was written; after
-- identity merges, join `touchpoints` with `customer_map` for exact per-customer figures.
CREATE TABLE IF NOT EXISTS touchpoints_daily
(
    day Date,
    channel LowCardinality(String),
    touchpoint LowCardinality(String),
    events AggregateFunction(uniqExact, String),
    customers AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, channel, touchpoint);

CREATE MATERIALIZED VIEW IF NOT EXISTS touchpoints_daily_mv TO touchpoints_daily AS
SELECT
    toDate(occurred_at) AS day,
    channel,
    touchpoint,
    uniqExactState(event_id) AS events,
    uniqExactState(customer_id) AS customers
FROM touchpoints
GROUP BY day, channel, touchpoint;

-- Rows written before this migration: fold them in once (the view sees only new inserts).
INSERT INTO touchpoints_daily
SELECT
    toDate(occurred_at) AS day,
    channel,
    touchpoint,
    uniqExactState(event_id),
    uniqExactState(customer_id)
FROM touchpoints
GROUP BY day, channel, touchpoint;

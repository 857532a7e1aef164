-- Transition counts as the transition processor emits them: one row per cell of a pane (one
-- windows.step_s of event time), finest key, per shard (the Kafka partition whose worker counted
-- it; 0 in the replay). Each emission of a pane carries the FULL current value of every cell of
-- that pane, with one updated_at for the whole emission; a pane is emitted again when late events
-- or identity merges change it. A cell can vanish from a newer emission (its count went back to
-- zero), so "the latest row of each cell" is not enough: the current value of a pane is the cells
-- of its latest emission only. transition_panes records that latest emission per (shard, pane).
CREATE TABLE IF NOT EXISTS transition_cells
(
    shard UInt16,
    pane_start DateTime('UTC'),
    pane_size_s UInt32,
    segment LowCardinality(String),
    channel LowCardinality(String),
    prev2 LowCardinality(String),
    src LowCardinality(String),
    dst LowCardinality(String),
    gap_bucket UInt8,
    n Int64,
    gap_sum_ms Int64,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMM(pane_start)
ORDER BY (pane_start, pane_size_s, segment, channel, src, dst, prev2, gap_bucket, shard)
SETTINGS non_replicated_deduplication_window = 1000;

-- The latest emission of each (shard, pane). max() is exact however often a block is inserted
-- again, so this materialized view stays right under retries and replays.
CREATE TABLE IF NOT EXISTS transition_panes
(
    shard UInt16,
    pane_start DateTime('UTC'),
    pane_size_s UInt32,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (pane_size_s, pane_start, shard);

CREATE MATERIALIZED VIEW IF NOT EXISTS transition_panes_mv TO transition_panes AS
SELECT shard, pane_start, pane_size_s, max(updated_at) AS updated_at
FROM transition_cells
GROUP BY shard, pane_start, pane_size_s;

-- The current cells: those of the latest emission of their (shard, pane).
CREATE OR REPLACE VIEW transition_cells_current AS
SELECT shard, pane_start, pane_size_s, segment, channel, prev2, src, dst, gap_bucket, n, gap_sum_ms
FROM transition_cells FINAL
WHERE (shard, pane_start, pane_size_s, updated_at) IN
    (SELECT shard, pane_start, pane_size_s, updated_at FROM transition_panes FINAL);

-- Per pane, summed over shards and gap buckets: first order (every cell) and second order
-- (cells with a prev2; prev2 = '' marks the first step of a journey, whose src is 'start').
CREATE OR REPLACE VIEW transitions AS
SELECT
    pane_start AS window_start,
    pane_size_s AS window_size_s,
    segment,
    channel,
    order,
    if(order = 1, '', prev2) AS src1,
    src,
    dst,
    sum(cell_n) AS n,
    toUInt64(greatest(n, 0)) AS gap_count,
    sum(cell_gap_sum_ms) AS gap_sum_ms,
    sumMap(map(gap_bucket, cell_n)) AS gap_hist,
    arrayMap(b -> toUInt64(greatest(gap_hist[b], 0)), range(toUInt8(50))) AS gap_buckets
FROM
(
    SELECT pane_start, pane_size_s, segment, channel, prev2, src, dst, gap_bucket,
           n AS cell_n, gap_sum_ms AS cell_gap_sum_ms
    FROM transition_cells_current
)
ARRAY JOIN if(prev2 = '', [toUInt8(1)], [toUInt8(1), toUInt8(2)]) AS order
GROUP BY window_start, window_size_s, segment, channel, order, src1, src, dst
HAVING n != 0;

-- When the latest complete window ends: every shard has finalized the panes before it.
CREATE OR REPLACE VIEW transition_latest AS
SELECT min(shard_end) AS window_end, max(shard_end) AS newest_pane_end, count() AS n_shards
FROM
(
    SELECT shard, max(pane_start + pane_size_s) AS shard_end
    FROM transition_panes FINAL
    GROUP BY shard
);

-- P(dst | src) and P(dst | src1, src) over the panes inside [window_end - window_size_s,
-- window_end), for one segment ('*' = all segments, summed), all channels summed.
-- window_end is a time ('2026-03-08 00:00:00') or 'latest' (the end of transition_latest).
CREATE OR REPLACE VIEW transition_matrix AS
WITH
    {window_end:String} AS end_text,
    ifNull((SELECT toDateTime(window_end, 'UTC') FROM transition_latest), toDateTime(0, 'UTC'))
        AS latest_end,
    if(end_text IN ('latest', ''), latest_end, parseDateTimeBestEffort(end_text, 'UTC')) AS end_at,
    toDateTime(end_at - {window_size_s:UInt32}, 'UTC') AS start_at
SELECT
    start_at AS window_start,
    end_at AS window_end,
    {window_size_s:UInt32} AS window_size_s,
    {segment:String} AS segment,
    order,
    src1,
    src,
    dst,
    n,
    n / sum(n) OVER (PARTITION BY order, src1, src) AS p,
    gap_sum_ms / n AS mean_gap_ms
FROM
(
    SELECT
        order,
        if(order = 1, '', prev2) AS src1,
        src,
        dst,
        sum(cell_n) AS n,
        sum(cell_gap_sum_ms) AS gap_sum_ms
    FROM
    (
        SELECT pane_start, pane_size_s, segment, prev2, src, dst,
               n AS cell_n, gap_sum_ms AS cell_gap_sum_ms
        FROM transition_cells_current
    )
    ARRAY JOIN if(prev2 = '', [toUInt8(1)], [toUInt8(1), toUInt8(2)]) AS order
    WHERE pane_start >= start_at AND pane_start + pane_size_s <= end_at
      AND ({segment:String} IN ('*', '') OR segment = {segment:String})
    GROUP BY order, src1, src, dst
    HAVING n > 0
);

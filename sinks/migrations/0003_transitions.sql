-- Windowed first- and second-order transition counts. Each row holds the FULL current value of
-- its cell (never a delta), so rewriting a cell is idempotent; the newest updated_at wins.
CREATE TABLE IF NOT EXISTS transitions
(
    window_start DateTime('UTC'),
    window_size_s UInt32,
    segment LowCardinality(String),
    channel LowCardinality(String),
    order UInt8,
    src1 LowCardinality(String),
    src LowCardinality(String),
    dst LowCardinality(String),
    n Int64,
    gap_count UInt64,
    gap_sum_ms UInt64,
    gap_buckets Array(UInt64),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_size_s, segment, channel, order, window_start, src1, src, dst)
SETTINGS non_replicated_deduplication_window = 1000;

-- Probabilities P(dst | src1, src) per window for one window size and segment.
CREATE OR REPLACE VIEW transition_matrix AS
SELECT
    window_start,
    channel,
    order,
    src1,
    src,
    dst,
    n,
    n / sum(n) OVER (PARTITION BY window_start, channel, order, src1, src) AS p,
    if(gap_count > 0, gap_sum_ms / gap_count, NULL) AS mean_gap_ms
FROM transitions FINAL
WHERE window_size_s = {window_size_s:UInt32} AND segment = {segment:String} AND n > 0;

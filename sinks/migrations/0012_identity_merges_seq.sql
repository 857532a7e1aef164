-- identity_merges keeps one row per loser: until now the last one inserted. With several workers,
-- or a batch written again after an outage, rows can reach ClickHouse in another order than the
-- merges were committed, and a revival (A into B, later B back into A: 0008) could then be
-- replaced by the stale merge it undid. Each merge now carries `seq`, its place in the identity
-- store's commit order (the Redis counter jm:id:<group>:mseq, or the replay's count), and the
-- table keeps the row with the highest seq per loser, whatever the order of the inserts.
-- Rows written before this migration get seq 0: the current row of each loser is kept as it is.
CREATE TABLE IF NOT EXISTS identity_merges_by_seq
(
    loser String,
    winner String,
    evidence_event_id String,
    merged_at DateTime64(3, 'UTC'),
    reason LowCardinality(String),
    seq UInt64
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY loser
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO identity_merges_by_seq
SELECT loser, winner, evidence_event_id, merged_at, reason, 0 AS seq FROM identity_merges FINAL;

RENAME TABLE identity_merges TO identity_merges_before_seq,
             identity_merges_by_seq TO identity_merges;

DROP TABLE identity_merges_before_seq;

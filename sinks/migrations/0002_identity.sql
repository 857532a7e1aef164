-- Hashed identifiers per customer, merges, refused links (conflicts), and customer_map: every
-- id -> its current winner.
CREATE TABLE IF NOT EXISTS identity_links
(
    customer_id String,
    kind LowCardinality(String),
    id_hash String,
    first_seen DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (kind, id_hash, customer_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS identity_merges
(
    loser String,
    winner String,
    evidence_event_id String,
    merged_at DateTime64(3, 'UTC'),
    reason LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY loser
SETTINGS non_replicated_deduplication_window = 1000;

-- Links an event asked for and the safeguards refused (the two customers stay apart).
CREATE TABLE IF NOT EXISTS identity_conflicts
(
    event_id String,
    ts DateTime64(3, 'UTC'),
    reason LowCardinality(String),
    customer_a String,
    customer_b String,
    id_hashes Array(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (reason, event_id, customer_a, customer_b)
SETTINGS non_replicated_deduplication_window = 1000;

-- Merges chain (a -> b, later b -> c): follow them to the end, at most 64 hops (cycle guard).
CREATE OR REPLACE VIEW customer_map AS
WITH RECURSIVE chain AS
(
    SELECT loser AS customer_id, winner, 1 AS depth FROM identity_merges FINAL
    UNION ALL
    SELECT chain.customer_id, m.winner, chain.depth + 1
    FROM chain INNER JOIN identity_merges AS m FINAL ON chain.winner = m.loser
    WHERE chain.depth < 64
)
SELECT customer_id, argMax(winner, depth) AS winner, toUInt8(max(depth)) AS hops
FROM chain
GROUP BY customer_id
UNION ALL
SELECT DISTINCT customer_id, customer_id AS winner, toUInt8(0) AS hops
FROM identity_links FINAL
WHERE customer_id NOT IN (SELECT loser FROM identity_merges);

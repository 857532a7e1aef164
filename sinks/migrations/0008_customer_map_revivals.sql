-- A customer id can become canonical again after it was merged away (ids derive from the
-- earliest identifier, and earlier evidence can arrive late: L -> W, later W -> L). The sink then
-- writes the revived winner's own row (W -> W) before the merge, replacing its stale row
-- (identity_merges is kept by loser), and the map treats such a row as "W is canonical".
CREATE OR REPLACE VIEW customer_map AS
WITH RECURSIVE chain AS
(
    SELECT loser AS customer_id, winner, 1 AS depth FROM identity_merges FINAL
    WHERE loser != winner
    UNION ALL
    SELECT chain.customer_id, m.winner, chain.depth + 1
    FROM chain INNER JOIN identity_merges AS m FINAL ON chain.winner = m.loser
    WHERE chain.depth < 64 AND m.loser != m.winner
)
SELECT customer_id, argMax(winner, depth) AS winner, toUInt8(max(depth)) AS hops
FROM chain
GROUP BY customer_id
UNION ALL
SELECT DISTINCT customer_id, customer_id AS winner, toUInt8(0) AS hops
FROM identity_links FINAL
WHERE customer_id NOT IN (SELECT loser FROM identity_merges FINAL WHERE loser != winner);

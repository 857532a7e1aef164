-- Transition corrections as single cells (issue 4). A pane is first written whole (every cell,
-- partial = 0), as before. A later correction of it may now carry only the cells it changed,
-- each with its full new value and partial = 1; a cell that became empty gets a row with n = 0
-- and gap_sum_ms = 0. A cell's current value is its latest row (the table's sorting key is the
-- cell, updated_at the version, so FINAL keeps that row), provided that row is not older than
-- the pane's latest whole emission: a whole emission replaces every cell of its pane, so a cell
-- it left out counts as zero. Rows written before this migration are whole emissions (partial
-- defaults to 0), and for them the rule is the old one: the cells of the latest emission.
ALTER TABLE transition_cells ADD COLUMN IF NOT EXISTS partial UInt8 DEFAULT 0;

-- transition_panes now records the latest WHOLE emission of each (shard, pane). Every row it
-- holds so far came from one (there were no partial rows), so it stays valid as it is. A partial
-- emission only corrects a pane already written whole, so transition_latest (the newest pane per
-- shard) does not change either.
DROP VIEW IF EXISTS transition_panes_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS transition_panes_mv TO transition_panes AS
SELECT shard, pane_start, pane_size_s, max(updated_at) AS updated_at
FROM transition_cells
WHERE partial = 0
GROUP BY shard, pane_start, pane_size_s;

-- The current cells: the latest row of each cell, at or after its pane's latest whole emission,
-- without the cells a correction emptied. The views transitions and transition_matrix read this.
CREATE OR REPLACE VIEW transition_cells_current AS
SELECT c.shard AS shard, c.pane_start AS pane_start, c.pane_size_s AS pane_size_s,
       c.segment AS segment, c.channel AS channel, c.prev2 AS prev2, c.src AS src, c.dst AS dst,
       c.gap_bucket AS gap_bucket, c.n AS n, c.gap_sum_ms AS gap_sum_ms
FROM transition_cells AS c FINAL
INNER JOIN
(
    SELECT shard, pane_start, pane_size_s, updated_at AS whole_at
    FROM transition_panes FINAL
) AS p
ON c.shard = p.shard AND c.pane_start = p.pane_start AND c.pane_size_s = p.pane_size_s
WHERE c.updated_at >= p.whole_at AND NOT (c.n = 0 AND c.gap_sum_ms = 0);

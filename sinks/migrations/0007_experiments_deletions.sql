-- Experiments (docs/experiments.md) and deletion records (`journeymap forget`, docs/serving.md).

-- One row per intervention: what changed, when, for which segment; `experiment` names the A/B
-- test it belongs to ('' for a change without a control group).
CREATE TABLE IF NOT EXISTS interventions
(
    intervention_id String,
    name String,
    description String,
    segment LowCardinality(String),
    channel LowCardinality(String),
    experiment String,
    variants Array(String),
    control String,
    outcome_touchpoints Array(String),
    started_at DateTime64(3, 'UTC'),
    ended_at Nullable(DateTime64(3, 'UTC')),
    planned_n_per_variant UInt64,
    created_at DateTime64(3, 'UTC'),
    created_by String
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY intervention_id
SETTINGS non_replicated_deduplication_window = 1000;

-- One row per (experiment, customer): the variant a customer was assigned (deterministically).
CREATE TABLE IF NOT EXISTS experiment_assignments
(
    experiment String,
    customer_id String,
    variant LowCardinality(String),
    segment LowCardinality(String),
    assigned_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (experiment, customer_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Per experiment, variant and segment: customers assigned, and those who reached one of the
-- experiment's outcome touchpoints at or after their assignment.
CREATE OR REPLACE VIEW experiment_outcomes AS
SELECT
    a.experiment AS experiment,
    a.variant AS variant,
    a.segment AS segment,
    count() AS n_assigned,
    countIf(o.customer_id != '') AS n_converted
FROM (SELECT experiment, customer_id, variant, segment FROM experiment_assignments FINAL) AS a
LEFT JOIN
(
    SELECT a2.experiment AS experiment, a2.customer_id AS customer_id
    FROM (SELECT experiment, customer_id, assigned_at FROM experiment_assignments FINAL) AS a2
    INNER JOIN
    (
        SELECT DISTINCT experiment, outcome
        FROM interventions FINAL
        ARRAY JOIN outcome_touchpoints AS outcome
        WHERE experiment != ''
    ) AS i ON i.experiment = a2.experiment
    INNER JOIN
    (
        SELECT customer_id, toString(touchpoint) AS touchpoint, occurred_at FROM touchpoints FINAL
    ) AS t ON t.customer_id = a2.customer_id AND t.touchpoint = i.outcome
    WHERE t.occurred_at >= a2.assigned_at
    GROUP BY a2.experiment, a2.customer_id
) AS o ON o.experiment = a.experiment AND o.customer_id = a.customer_id
GROUP BY a.experiment, a.variant, a.segment;

-- Saved analyses (`journeymap experiments analyse --save`): one row per variant against the
-- control in one segment ('*' = every segment), with the test and its warnings.
CREATE TABLE IF NOT EXISTS experiment_results
(
    experiment String,
    as_of DateTime64(3, 'UTC'),
    segment LowCardinality(String),
    variant LowCardinality(String),
    control LowCardinality(String),
    n UInt64,
    conversions UInt64,
    control_n UInt64,
    control_conversions UInt64,
    rate Float64,
    control_rate Float64,
    diff Float64,
    ci_low Float64,
    ci_high Float64,
    z Float64,
    p_value Float64,
    required_n_per_variant UInt64,
    significant Bool,
    warnings Array(String)
)
ENGINE = ReplacingMergeTree(as_of)
ORDER BY (experiment, segment, variant, as_of)
SETTINGS non_replicated_deduplication_window = 1000;

-- One row per `journeymap forget`: when, the salted hash of the identifier given, and how many
-- rows each table lost. No customer id is kept: the record must not re-identify anyone.
CREATE TABLE IF NOT EXISTS deletions
(
    deletion_id String,
    requested_at DateTime64(3, 'UTC'),
    id_kind LowCardinality(String),
    id_hash String,
    n_customers UInt32,
    rows_removed Map(String, UInt64),
    redis_keys_removed Map(String, UInt64)
)
ENGINE = ReplacingMergeTree
ORDER BY (requested_at, deletion_id);

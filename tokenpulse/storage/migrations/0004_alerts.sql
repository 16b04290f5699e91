-- 0004: alert state, alert history, the notification log, budgets, and the
-- per-user rollup that the user-surge rule reads.

-- Current state of every alert instance (one row per fingerprint after
-- merges; read with FINAL). The evaluator reloads it at start, so a restart
-- neither pages twice nor forgets a resolve. `deliveries` is JSON:
-- {channel: {"state": "firing"|"resolved", "at": unix_s, "retry_at": unix_s}}.
CREATE TABLE IF NOT EXISTS {db}.alert_state
(
    fingerprint  String,
    rule         LowCardinality(String),
    labels       Map(String, String),
    annotations  Map(String, String),
    state        LowCardinality(String),
    value        Float64,
    active_at    DateTime64(3, 'UTC'),
    fired_at     Nullable(DateTime64(3, 'UTC')),
    resolved_at  Nullable(DateTime64(3, 'UTC')),
    last_seen    DateTime64(3, 'UTC'),
    deliveries   String,
    deleted      UInt8,
    updated_at   DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY fingerprint;

-- Alert history: one row per state change (pending, firing, resolved, inactive).
CREATE TABLE IF NOT EXISTS {db}.alerts
(
    at           DateTime64(3, 'UTC'),
    rule         LowCardinality(String),
    fingerprint  String,
    state        LowCardinality(String),
    previous     LowCardinality(String),
    severity     LowCardinality(String),
    labels       Map(String, String),
    value        Float64,
    summary      String,
    description  String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, rule)
TTL toDateTime(at) + INTERVAL {ttl_days} DAY;

-- Every notification attempt, delivered or not (secrets never stored).
CREATE TABLE IF NOT EXISTS {db}.alert_notifications
(
    at           DateTime64(3, 'UTC'),
    rule         LowCardinality(String),
    channel      LowCardinality(String),
    kind         LowCardinality(String),
    reason       String,
    fingerprints Array(String),
    ok           UInt8,
    http_status  UInt16,
    attempts     UInt8,
    error        String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, rule)
TTL toDateTime(at) + INTERVAL {ttl_days} DAY;

-- Budgets from the config (`budgets:`), rewritten by the evaluator at start.
-- dimension: total | tenant | feature | model | agent_role; value '*' = each value.
CREATE TABLE IF NOT EXISTS {db}.budgets
(
    name       String,
    dimension  LowCardinality(String),
    value      String,
    period     LowCardinality(String),
    limit_usd  Float64
)
ENGINE = MergeTree
ORDER BY (dimension, value, period);

-- Per minute and user: the user-surge rule compares the last 15 minutes with
-- the user's 7-day average. Kept 8 days whatever the span retention.
CREATE TABLE IF NOT EXISTS {db}.user_minute
(
    minute        DateTime('UTC'),
    tenant        LowCardinality(String),
    user_id       String,
    calls         UInt64,
    tokens        UInt64,
    cost_usd      Float64
)
ENGINE = SummingMergeTree
PARTITION BY toDate(minute)
ORDER BY (minute, tenant, user_id)
TTL minute + INTERVAL 8 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.user_minute_mv TO {db}.user_minute AS
SELECT
    toStartOfMinute(s.start_time) AS minute,
    s.tenant AS tenant,
    s.user_id AS user_id,
    count() AS calls,
    sum(s.input_tokens + s.output_tokens) AS tokens,
    sum(ifNull(s.cost_usd, 0)) AS cost_usd
FROM {db}.spans AS s
WHERE s.counted = 1 AND s.user_id != '' AND s.operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')
GROUP BY minute, s.tenant, s.user_id;

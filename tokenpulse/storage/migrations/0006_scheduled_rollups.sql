-- 0006: rollups written by a scheduled job (tokenpulse/storage/rollups.py), not by materialized
-- views, because they need a whole run: a call's agent role comes from the agent span that
-- contains it, which ends (and arrives) after its calls, and a tool's cost from the next LLM
-- call. The job rolls up whole hours once they are `rollup_settle_s` old; panels read these for
-- the rolled-up hours and compute the rest live (README "Queries, rollups and dashboards").

-- Tokens of counted LLM calls per minute and resolved agent role, per tenant and, in rows with
-- tenant = '', for all tenants together (so a panel over every tenant reads few rows).
CREATE TABLE IF NOT EXISTS {db}.role_minute
(
    tenant        LowCardinality(String),
    minute        DateTime('UTC'),
    role          LowCardinality(String),
    operation     LowCardinality(String),
    input_tokens  UInt64,
    output_tokens UInt64,
    calls         UInt64,
    computed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toDate(minute)
ORDER BY (tenant, minute, role, operation)
TTL minute + INTERVAL {ttl_days} DAY;

-- The same per hour, feature and role (the input:output ratio panel).
CREATE TABLE IF NOT EXISTS {db}.role_feature_hour
(
    tenant        LowCardinality(String),
    hour          DateTime('UTC'),
    feature       LowCardinality(String),
    role          LowCardinality(String),
    operation     LowCardinality(String),
    input_tokens  UInt64,
    output_tokens UInt64,
    calls         UInt64,
    computed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, hour, feature, role, operation)
TTL hour + INTERVAL {ttl_days} DAY;

-- One row per tool call: the input-token growth it caused (as in tool_call_tokens).
CREATE TABLE IF NOT EXISTS {db}.tool_call_growth
(
    tenant        LowCardinality(String),
    start_time    DateTime64(9, 'UTC'),
    trace_id      String,
    span_id       String,
    tool_name     LowCardinality(String),
    tokens        Float64,
    computed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toDate(start_time)
ORDER BY (tenant, start_time, trace_id, span_id)
TTL toDateTime(start_time) + INTERVAL {ttl_days} DAY;

-- How far each rollup is done: one row per completed chunk; the watermark is max(done_to).
CREATE TABLE IF NOT EXISTS {db}.rollup_state
(
    name          LowCardinality(String),
    done_to       DateTime64(3, 'UTC'),
    seconds       Float64,
    at            DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (name, done_to)
TTL toDateTime(at) + INTERVAL 30 DAY;

-- One row per run (trace) by its start: tokens, LLM calls, cost and success, as the tokens_per_run
-- and cost_per_successful_run panels compute them from `runs`.
CREATE TABLE IF NOT EXISTS {db}.run_summary
(
    tenant        LowCardinality(String),
    start         DateTime64(9, 'UTC'),
    trace_id      String,
    tokens        UInt64,
    llm_calls     UInt64,
    cost_usd      Float64,
    success       UInt8,
    computed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toDate(start)
ORDER BY (start, trace_id)
TTL toDateTime(start) + INTERVAL {ttl_days} DAY;

-- 0003: rollups that panels and alerts read instead of spans.
-- Both count only what sums may count (counted = 1; see README "Count once").
-- Exporter retries are dropped before the insert (the writer's dedup window),
-- so they never reach these views; a repeat older than the window would.

-- Per minute, LLM calls by the main dimensions (attribution as known at ingest).
CREATE TABLE IF NOT EXISTS {db}.usage_minute
(
    minute             DateTime('UTC'),
    tenant             LowCardinality(String),
    feature            LowCardinality(String),
    model              LowCardinality(String),
    provider           LowCardinality(String),
    agent_role         LowCardinality(String),
    service            LowCardinality(String),
    environment        LowCardinality(String),
    calls              UInt64,
    errors             UInt64,
    unpriced_calls     UInt64,
    no_usage_calls     UInt64,
    input_tokens       UInt64,
    output_tokens      UInt64,
    cache_read_tokens  UInt64,
    cache_write_tokens UInt64,
    reasoning_tokens   UInt64,
    unpriced_tokens    UInt64,
    cost_usd           Float64
)
ENGINE = SummingMergeTree
PARTITION BY toDate(minute)
ORDER BY (tenant, minute, feature, model, provider, agent_role, service, environment)
TTL minute + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_minute_mv TO {db}.usage_minute AS
SELECT
    toStartOfMinute(s.start_time) AS minute,
    s.tenant AS tenant, s.feature AS feature, s.model AS model, s.provider AS provider,
    s.agent_role AS agent_role, s.service AS service, s.environment AS environment,
    count() AS calls,
    countIf(s.status_code = 'error') AS errors,
    countIf(s.price_status = 'unknown_model') AS unpriced_calls,
    countIf(s.usage_status = 'missing') AS no_usage_calls,
    sum(s.input_tokens) AS input_tokens,
    sum(s.output_tokens) AS output_tokens,
    sum(s.cache_read_tokens) AS cache_read_tokens,
    sum(s.cache_write_tokens) AS cache_write_tokens,
    sum(s.reasoning_tokens) AS reasoning_tokens,
    sumIf(s.input_tokens + s.output_tokens, s.price_status = 'unknown_model') AS unpriced_tokens,
    sum(ifNull(s.cost_usd, 0)) AS cost_usd
FROM {db}.spans AS s
WHERE s.counted = 1 AND s.operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')
GROUP BY minute, s.tenant, s.feature, s.model, s.provider, s.agent_role, s.service, s.environment;

-- Per run (trace): one row per trace after merges; query with GROUP BY trace_id.
-- Attribution is the trace's: a tagged root that arrives last still tags the run.
CREATE TABLE IF NOT EXISTS {db}.runs
(
    trace_id       String,
    start_time     SimpleAggregateFunction(min, DateTime64(9, 'UTC')),
    end_time       SimpleAggregateFunction(max, DateTime64(9, 'UTC')),
    llm_calls      SimpleAggregateFunction(sum, UInt64),
    tool_calls     SimpleAggregateFunction(sum, UInt64),
    input_tokens   SimpleAggregateFunction(sum, UInt64),
    output_tokens  SimpleAggregateFunction(sum, UInt64),
    cost_usd       SimpleAggregateFunction(sum, Float64),
    root_seen      SimpleAggregateFunction(max, UInt8),
    root_error     SimpleAggregateFunction(max, UInt8),
    outcome_success SimpleAggregateFunction(max, UInt8),
    outcome_failure SimpleAggregateFunction(max, UInt8),
    tenant         SimpleAggregateFunction(max, String),
    feature        SimpleAggregateFunction(max, String),
    session_id     SimpleAggregateFunction(max, String),
    service        SimpleAggregateFunction(max, String)
)
ENGINE = AggregatingMergeTree
ORDER BY trace_id
TTL toDateTime(start_time) + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.runs_mv TO {db}.runs AS
SELECT
    s.trace_id AS trace_id,
    min(s.start_time) AS start_time,
    max(s.end_time) AS end_time,
    countIf(s.counted = 1 AND s.operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')) AS llm_calls,
    countIf(s.operation = 'execute_tool') AS tool_calls,
    sumIf(s.input_tokens, s.counted = 1) AS input_tokens,
    sumIf(s.output_tokens, s.counted = 1) AS output_tokens,
    sumIf(ifNull(s.cost_usd, 0), s.counted = 1) AS cost_usd,
    max(toUInt8(s.parent_span_id = '')) AS root_seen,
    max(toUInt8(s.parent_span_id = '' AND s.status_code = 'error')) AS root_error,
    max(toUInt8(s.outcome = 'success')) AS outcome_success,
    max(toUInt8(s.outcome = 'failure')) AS outcome_failure,
    max(if(s.tenant = 'unattributed', '', s.tenant)) AS tenant,
    max(if(s.feature = 'unattributed', '', s.feature)) AS feature,
    max(s.session_id) AS session_id,
    max(s.service) AS service
FROM {db}.spans AS s
GROUP BY s.trace_id;

-- Per session (gen_ai.conversation.id / session.id): one row per session after
-- merges; first_input/last_input are aggregate states (argMinMerge/argMaxMerge).
CREATE TABLE IF NOT EXISTS {db}.sessions
(
    session_id     String,
    start_time     SimpleAggregateFunction(min, DateTime64(9, 'UTC')),
    end_time       SimpleAggregateFunction(max, DateTime64(9, 'UTC')),
    llm_calls      SimpleAggregateFunction(sum, UInt64),
    input_tokens   SimpleAggregateFunction(sum, UInt64),
    output_tokens  SimpleAggregateFunction(sum, UInt64),
    cost_usd       SimpleAggregateFunction(sum, Float64),
    max_input      SimpleAggregateFunction(max, UInt64),
    first_input    AggregateFunction(argMin, UInt64, DateTime64(9, 'UTC')),
    last_input     AggregateFunction(argMax, UInt64, DateTime64(9, 'UTC')),
    tenant         SimpleAggregateFunction(max, String)
)
ENGINE = AggregatingMergeTree
ORDER BY session_id
TTL toDateTime(start_time) + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.sessions_mv TO {db}.sessions AS
SELECT
    s.session_id AS session_id,
    min(s.start_time) AS start_time,
    max(s.end_time) AS end_time,
    count() AS llm_calls,
    sum(s.input_tokens) AS input_tokens,
    sum(s.output_tokens) AS output_tokens,
    sum(ifNull(s.cost_usd, 0)) AS cost_usd,
    max(s.input_tokens) AS max_input,
    argMinState(s.input_tokens, s.start_time) AS first_input,
    argMaxState(s.input_tokens, s.start_time) AS last_input,
    max(if(s.tenant = 'unattributed', '', s.tenant)) AS tenant
FROM {db}.spans AS s
WHERE s.session_id != '' AND s.counted = 1 AND s.operation IN ('chat', 'text_completion', 'generate_content')
GROUP BY s.session_id;

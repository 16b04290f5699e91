-- 0001: the spans table. One row per received span, enriched.
-- Columns are a public interface: see README "The spans table".
-- {db} and {ttl_days} are filled in by tokenpulse.storage.migrate.
CREATE TABLE IF NOT EXISTS {db}.spans
(
    trace_id            String,
    span_id             String,
    parent_span_id      String,
    name                LowCardinality(String),
    kind                LowCardinality(String),
    service             LowCardinality(String),
    scope_name          LowCardinality(String),
    scope_version       LowCardinality(String),
    start_time          DateTime64(9, 'UTC'),
    end_time            DateTime64(9, 'UTC'),
    duration_ms         Float64 DEFAULT greatest(0, toUnixTimestamp64Nano(end_time) - toUnixTimestamp64Nano(start_time)) / 1e6,
    status_code         LowCardinality(String),
    status_message      String,
    operation           LowCardinality(String),
    provider            LowCardinality(String),
    model               LowCardinality(String),
    request_model       LowCardinality(String),
    input_tokens        UInt64,
    output_tokens       UInt64,
    cache_read_tokens   UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    total_tokens        UInt64,
    usage_status        LowCardinality(String),
    cost_usd            Float64,
    reported_cost_usd   Float64,
    price_status        LowCardinality(String),
    price_id            LowCardinality(String),
    counted             UInt8,
    excluded_reason     LowCardinality(String),
    feature             LowCardinality(String),
    tenant              LowCardinality(String),
    user_id             String,
    agent_role          LowCardinality(String),
    agent_name          LowCardinality(String),
    session_id          String,
    route               LowCardinality(String),
    environment         LowCardinality(String),
    tool_name           LowCardinality(String),
    tool_call_id        String,
    error_type          LowCardinality(String),
    resource_attributes Map(String, String),
    attributes          Map(String, String),
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toDate(start_time)
ORDER BY (tenant, toStartOfHour(start_time), service, trace_id, span_id)
TTL toDateTime(start_time) + INTERVAL {ttl_days} DAY;

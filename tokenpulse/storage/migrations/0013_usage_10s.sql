-- 0013: tokens per tenant in 10-second buckets of the spans' end time, for detecting a tenant's
-- spike within seconds (rule tenant_spike). usage_minute buckets by start minute: a sliding
-- minute over it needs ~15 s of a 10x rise before it shows 3x, and a call's span arrives when it
-- ends. Counted inference calls only, as usage_minute. Kept one day: the rule reads the last
-- minute; baselines come from usage_minute.
CREATE TABLE IF NOT EXISTS {db}.usage_10s
(
    bucket DateTime('UTC'),
    tenant LowCardinality(String),
    calls  Int64,
    tokens Int64
)
ENGINE = SummingMergeTree
PARTITION BY toDate(bucket)
ORDER BY (tenant, bucket)
TTL bucket + INTERVAL 1 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_10s_mv TO {db}.usage_10s AS
SELECT
    toStartOfInterval(s.end_time, INTERVAL 10 SECOND) AS bucket,
    s.tenant AS tenant,
    count() AS calls,
    sum(s.input_tokens + s.output_tokens) AS tokens
FROM {db}.spans AS s
WHERE s.counted = 1 AND s.operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')
GROUP BY bucket, s.tenant

-- 0005: auto-throttle decisions and their audit log.

-- Current decision per tenant (one row per tenant after merges; read with FINAL).
-- causes: JSON {alert fingerprint: resolved_at unix seconds or null}; suppressed:
-- JSON [fingerprints an operator released by hand, which must not throttle again].
CREATE TABLE IF NOT EXISTS {db}.throttle_state
(
    tenant       String,
    throttled    UInt8,
    source       LowCardinality(String),
    rule         LowCardinality(String),
    reason       String,
    actor        String,
    since        DateTime64(3, 'UTC'),
    until        Nullable(DateTime64(3, 'UTC')),
    release_at   Nullable(DateTime64(3, 'UTC')),
    causes       String,
    suppressed   String,
    updated_at   DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY tenant;

-- Who or what throttled and released each tenant, and when.
CREATE TABLE IF NOT EXISTS {db}.throttle_audit
(
    at       DateTime64(3, 'UTC'),
    tenant   String,
    action   LowCardinality(String),
    source   LowCardinality(String),
    rule     LowCardinality(String),
    actor    String,
    reason   String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, tenant)
TTL toDateTime(at) + INTERVAL {ttl_days} DAY;

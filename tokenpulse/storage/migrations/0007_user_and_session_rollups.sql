-- 0007: two more tables of the scheduled rollup job (tokenpulse/storage/rollups.py), written
-- like the 0006 tables: they fill in the history that predates them, and the panels read them up
-- to the job's watermark and the spans after.

-- Spend per hour and (pseudonymized) user, for the cost_by_user panel. Users are many and each is
-- active in few minutes, so the per-minute user_minute table is nearly as long as the calls it
-- sums; an hour holds a user's whole session.
CREATE TABLE IF NOT EXISTS {db}.user_hour
(
    tenant        LowCardinality(String),
    hour          DateTime('UTC'),
    user_id       String,
    calls         UInt64,
    input_tokens  UInt64,
    output_tokens UInt64,
    cost_usd      Float64,
    computed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, tenant, user_id)  -- hour first: the panel over all tenants (the common case) reads a range
TTL hour + INTERVAL {ttl_days} DAY;

-- One row per counted LLM call of a session: its start and input tokens, ordered by session, so
-- the context_growth panel reads the turns of its top sessions by primary key instead of
-- scanning the window's spans for their session ids. Written by the scheduled rollup job
-- (queries/rollups/session_turns.sql).
CREATE TABLE IF NOT EXISTS {db}.session_turns
(
    session_id    String,
    start_time    DateTime64(9, 'UTC'),
    span_id       String,
    input_tokens  UInt64,
    computed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(start_time)
ORDER BY (session_id, start_time, span_id)
TTL toDateTime(start_time) + INTERVAL {ttl_days} DAY;

-- 0011: what the provider bills beyond tokens at one price (issue: prices, the whole billing model).
-- cache_write_1h_tokens: the part of cache_write_tokens written with Anthropic's 1-hour TTL, billed
-- at its own price; request_cost_usd: per-request fees; service_tier: the tier (priority, flex,
-- batch, ...) whose prices applied. cost_usd stays the sum of every *_cost_usd column.
ALTER TABLE {db}.spans
    ADD COLUMN IF NOT EXISTS cache_write_1h_tokens UInt64 DEFAULT 0 AFTER cache_write_tokens,
    ADD COLUMN IF NOT EXISTS request_cost_usd Nullable(Float64) AFTER reasoning_cost_usd,
    ADD COLUMN IF NOT EXISTS service_tier LowCardinality(String) DEFAULT '' AFTER price_id

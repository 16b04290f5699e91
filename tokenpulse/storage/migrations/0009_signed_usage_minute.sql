-- 0009: usage_minute's counts become signed (Int64), so that late attribution can move a trace's
-- calls from the 'unattributed' bucket to the tenant and feature its root span names: a pair of
-- rows, minus under the key the calls were stored with and plus under the resolved one, that the
-- SummingMergeTree adds up (rows summing to zero vanish at merge). See storage/late_attribution.py.
-- Readers are unchanged: every sum is still >= 0. cost_usd was Float64 already.
ALTER TABLE {db}.usage_minute
    MODIFY COLUMN calls Int64,
    MODIFY COLUMN errors Int64,
    MODIFY COLUMN unpriced_calls Int64,
    MODIFY COLUMN no_usage_calls Int64,
    MODIFY COLUMN input_tokens Int64,
    MODIFY COLUMN output_tokens Int64,
    MODIFY COLUMN cache_read_tokens Int64,
    MODIFY COLUMN cache_write_tokens Int64,
    MODIFY COLUMN reasoning_tokens Int64,
    MODIFY COLUMN unpriced_tokens Int64

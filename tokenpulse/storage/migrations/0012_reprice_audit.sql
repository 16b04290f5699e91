-- 0012: one row per `tokenpulse prices reprice` run that wrote (dry runs write nothing): who, when,
-- the range and filters, and the spend of the changed spans before and after (enrich/reprice.py).
CREATE TABLE IF NOT EXISTS {db}.reprice_audit
(
    at              DateTime64(3, 'UTC'),
    actor           String,
    since           DateTime64(6, 'UTC'),
    until           DateTime64(6, 'UTC'),
    model           String,
    provider        String,
    tenant          String,
    spans_checked   UInt64,
    spans_changed   UInt64,
    cost_before_usd Float64,
    cost_after_usd  Float64,
    summary         String
)
ENGINE = MergeTree
ORDER BY at

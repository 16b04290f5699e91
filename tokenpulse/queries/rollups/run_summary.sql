-- rollup: run_summary
-- description: One row per run (trace) that started in [from, to): its tokens, LLM calls, cost, success (as the cost_per_successful_run panel defines it) and tenant, from the `runs` rollup.
INSERT INTO run_summary (tenant, start, trace_id, tokens, llm_calls, cost_usd, success, computed_at)
SELECT
    max(tenant) AS run_tenant,
    min(start_time) AS run_start,
    trace_id,
    sum(input_tokens) + sum(output_tokens),
    sum(llm_calls),
    sum(cost_usd),
    multiIf(max(outcome_failure) = 1, 0, max(outcome_success) = 1, 1, max(root_seen) = 1 AND max(root_error) = 0),
    now64(3)
FROM runs
WHERE end_time >= {from:DateTime64(3, 'UTC')}
GROUP BY trace_id
HAVING run_start >= {from:DateTime64(3, 'UTC')} AND run_start < {to:DateTime64(3, 'UTC')}

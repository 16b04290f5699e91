-- title: Spans of a run
-- description: One run's span tree, in start order: each span's parent, name, operation, agent role, model, tokens and cost, whether it counts in sums and, when it does not, why (excluded_reason: duplicate_of, aggregate, not_inference), its price status, start offset and duration. The dashboard indents it by parent.
-- param: trace_id String "" The run (trace id, 32 hex characters)
SELECT span_id, parent_span_id, name, operation, agent_role, model, input_tokens, output_tokens, cost_usd, counted,
       excluded_reason, price_status, status_code,
       round(dateDiff('microsecond', min(start_time) OVER (), start_time) / 1000, 1) AS start_ms,
       round(dateDiff('microsecond', start_time, end_time) / 1000, 1) AS duration_ms
FROM spans_attributed
WHERE trace_id = {trace_id:String}
ORDER BY start_time, span_id
LIMIT 5000

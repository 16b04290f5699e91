-- rollup: tool_call_growth
-- description: One row per tool call that started in [from, to): the input-token growth it caused in the next LLM call of its run, as the tool_call_tokens panel defines it, with its run's tenant.
INSERT INTO tool_call_growth (tenant, start_time, trace_id, span_id, tool_name, tokens, computed_at)
WITH
tools AS (
    SELECT trace_id, span_id, tool_name, start_time, end_time
    FROM spans
    WHERE start_time >= {from:DateTime64(3, 'UTC')} AND start_time < {to:DateTime64(3, 'UTC')}
      AND operation = 'execute_tool'
),
calls AS (
    SELECT trace_id, start_time, input_tokens, output_tokens
    FROM spans
    WHERE start_time >= {from:DateTime64(3, 'UTC')} - toIntervalHour(1)
      AND counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content') AND input_tokens > 0
      AND trace_id IN (SELECT trace_id FROM tools)
),
gaps AS (
    SELECT t.tool_name AS tool_name, t.trace_id AS trace_id, t.span_id AS span_id, nxt.start_time AS next_start,
           toInt64(nxt.input_tokens) AS next_input, t.start_time AS tool_start
    FROM tools AS t ASOF INNER JOIN calls AS nxt ON t.trace_id = nxt.trace_id AND nxt.start_time >= t.end_time
),
growth AS (
    SELECT g.tool_name AS tool_name, g.trace_id AS trace_id, g.span_id AS span_id, g.tool_start AS tool_start,
           greatest(g.next_input - toInt64(prv.input_tokens) - toInt64(prv.output_tokens), 0)
             / count() OVER (PARTITION BY g.trace_id, g.next_start) AS tokens
    FROM gaps AS g ASOF INNER JOIN calls AS prv ON g.trace_id = prv.trace_id AND prv.start_time <= g.tool_start
),
tenants AS (
    SELECT trace_id, max(tenant) AS tenant FROM runs WHERE trace_id IN (SELECT trace_id FROM tools) GROUP BY trace_id
)
SELECT ifNull(r.tenant, ''), g.tool_start, g.trace_id, g.span_id, g.tool_name, g.tokens, now64(3)
FROM growth AS g
LEFT JOIN tenants AS r ON g.trace_id = r.trace_id
SETTINGS join_use_nulls = 1

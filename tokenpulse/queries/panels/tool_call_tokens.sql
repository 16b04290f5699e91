-- title: Tokens per tool call
-- description: What each tool costs in context: for a tool call, the input-token growth it causes in the next LLM call of the same run, i.e. next_call.input - (previous_call.input + previous_call.output), where previous_call is the last call that started before the tool and next_call the first that started after it ended (floored at 0; when several tools run between the same two calls, the growth is split evenly between them). Per tool: calls, total, mean, p50, p95 and max. Tool calls up to the tool_call_growth rollup's watermark are read from it; the rest is computed live.
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only runs of this tenant; empty for all
-- param: limit UInt32 20 Tools to show, by total growth
WITH
    now64() - toIntervalSecond({since:UInt32}) AS window_start,
    (SELECT max(done_to) FROM rollup_state WHERE name = 'tool_call_growth') AS rolled,
tools AS (
    SELECT trace_id, span_id, tool_name, start_time, end_time
    FROM spans
    WHERE start_time >= greatest(window_start, rolled) AND operation = 'execute_tool'
      AND ({tenant:String} = '' OR trace_id IN (
            SELECT trace_id FROM runs GROUP BY trace_id HAVING max(tenant) = {tenant:String}))
),
calls AS (
    -- only the calls of runs that used a tool in the live part of the window
    SELECT trace_id, start_time, input_tokens, output_tokens
    FROM spans
    WHERE start_time >= greatest(window_start, rolled) - toIntervalHour(1)
      AND counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content') AND input_tokens > 0
      AND trace_id IN (SELECT trace_id FROM tools)
),
gaps AS (
    SELECT t.tool_name AS tool_name, t.trace_id AS trace_id, t.span_id AS span_id, nxt.start_time AS next_start,
           toInt64(nxt.input_tokens) AS next_input, t.start_time AS tool_start
    FROM tools AS t ASOF INNER JOIN calls AS nxt ON t.trace_id = nxt.trace_id AND nxt.start_time >= t.end_time
),
growth AS (
    SELECT tool_name, trace_id, span_id, start_time, tokens
    FROM tool_call_growth FINAL
    WHERE start_time >= window_start AND start_time < rolled AND ({tenant:String} = '' OR tenant = {tenant:String})
    UNION ALL
    SELECT g.tool_name AS tool_name, g.trace_id AS trace_id, g.span_id AS span_id, g.tool_start AS start_time,
           greatest(g.next_input - toInt64(prv.input_tokens) - toInt64(prv.output_tokens), 0)
             / count() OVER (PARTITION BY g.trace_id, g.next_start) AS tokens
    FROM gaps AS g ASOF INNER JOIN calls AS prv ON g.trace_id = prv.trace_id AND prv.start_time <= g.tool_start
)
SELECT
    tool_name,
    count() AS tool_calls,
    toUInt64(sum(tokens)) AS total_tokens,
    toUInt64(avg(tokens)) AS mean_tokens,
    toUInt64(quantileExact(0.5)(tokens)) AS p50_tokens,
    toUInt64(quantileExact(0.95)(tokens)) AS p95_tokens,
    toUInt64(max(tokens)) AS max_tokens
FROM growth
GROUP BY tool_name
ORDER BY total_tokens DESC
LIMIT {limit:UInt32}

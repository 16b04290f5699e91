-- title: Tool call outliers
-- description: The individual tool calls that grew the next LLM call's input the most (growth defined as in tool_call_tokens), with their run, to open in a trace view.
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only runs of this tenant; empty for all
-- param: limit UInt32 20 Tool calls to show
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
SELECT tool_name, trace_id, span_id, start_time, toUInt64(tokens) AS tokens
FROM growth
ORDER BY tokens DESC
LIMIT {limit:UInt32}

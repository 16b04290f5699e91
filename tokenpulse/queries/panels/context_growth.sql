-- title: Context growth
-- description: Input tokens by turn (the n-th counted LLM call of a session, by start time) for the sessions that started in the window and whose input grew most from their first turn to their last (picked from the sessions rollup, so only their calls are read).
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
-- param: limit UInt32 5 Sessions to show
WITH top AS (
    SELECT session_id,
           toInt64(argMaxMerge(last_input)) - toInt64(argMinMerge(first_input)) AS growth,
           sum(llm_calls) AS turns
    FROM sessions
    WHERE end_time >= now64() - toIntervalSecond({since:UInt32})
    GROUP BY session_id
    HAVING min(start_time) >= now64() - toIntervalSecond({since:UInt32})
       AND ({tenant:String} = '' OR max(tenant) = {tenant:String})
    ORDER BY growth DESC, session_id
    LIMIT {limit:UInt32}
)
SELECT s.session_id AS session_id,
       row_number() OVER (PARTITION BY s.session_id ORDER BY s.start_time) AS turn,
       s.input_tokens AS input_tokens,
       top.growth AS growth,
       top.turns AS turns
FROM spans AS s INNER JOIN top ON s.session_id = top.session_id
WHERE s.start_time >= now64() - toIntervalSecond({since:UInt32})
  AND s.session_id IN (SELECT session_id FROM top)
  AND s.counted = 1 AND s.operation IN ('chat', 'text_completion', 'generate_content')
ORDER BY growth DESC, session_id, turn

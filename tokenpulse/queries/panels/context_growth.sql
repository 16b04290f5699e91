-- title: Context growth
-- description: Input tokens by turn (the n-th counted LLM call of a session, by start time) for the sessions whose input grew most from their first turn to their last.
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
-- param: limit UInt32 5 Sessions to show
WITH
turns AS (
    SELECT session_id, input_tokens, row_number() OVER (PARTITION BY session_id ORDER BY start_time) AS turn
    FROM spans
    WHERE start_time >= now64() - toIntervalSecond({since:UInt32})
      AND counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content') AND session_id != ''
      AND ({tenant:String} = '' OR tenant = {tenant:String})
),
top AS (
    SELECT session_id, toInt64(argMax(input_tokens, turn)) - toInt64(argMin(input_tokens, turn)) AS growth,
           max(turn) AS turns
    FROM turns
    GROUP BY session_id
    ORDER BY growth DESC, session_id
    LIMIT {limit:UInt32}
)
SELECT t.session_id AS session_id, t.turn AS turn, t.input_tokens AS input_tokens, top.growth AS growth,
       top.turns AS turns
FROM turns AS t INNER JOIN top ON t.session_id = top.session_id
ORDER BY growth DESC, session_id, turn

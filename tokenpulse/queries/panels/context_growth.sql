-- title: Context growth
-- description: Input tokens by turn (the n-th counted LLM call of a session, by start time) for the sessions that started in the window and whose input grew most from their first turn to their last (picked from the sessions rollup). Their turns are read by session from the session_turns rollup up to its watermark, and from the spans after it.
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
-- param: limit UInt32 5 Sessions to show
WITH
    now64() - toIntervalSecond({since:UInt32}) AS window_start,
    (SELECT max(done_to) FROM rollup_state WHERE name = 'session_turns') AS rolled,
top AS (
    SELECT session_id,
           toInt64(argMaxMerge(last_input)) - toInt64(argMinMerge(first_input)) AS growth,
           sum(llm_calls) AS turns
    FROM sessions
    WHERE end_time >= window_start
    GROUP BY session_id
    HAVING min(start_time) >= window_start
       AND ({tenant:String} = '' OR max(tenant) = {tenant:String})
    ORDER BY growth DESC, session_id
    LIMIT {limit:UInt32}
),
calls AS (
    -- one IN over both parts, so the top sessions are picked once
    SELECT session_id, start_time, input_tokens
    FROM (
        SELECT session_id, start_time, input_tokens
        FROM session_turns FINAL
        WHERE start_time >= window_start AND start_time < rolled
        UNION ALL
        SELECT session_id, start_time, input_tokens
        FROM spans
        WHERE start_time >= greatest(window_start, rolled)
          AND counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content')
    )
    WHERE session_id IN (SELECT session_id FROM top)
)
-- A session that started in the window has all its turns in it: its growth and turns are those of
-- its calls (equal to the sessions rollup's, which picked it).
SELECT session_id, turn, input_tokens, growth, turns
FROM (
    SELECT session_id,
           row_number() OVER w AS turn,
           input_tokens,
           toInt64(last_value(input_tokens) OVER whole) - toInt64(first_value(input_tokens) OVER whole) AS growth,
           count() OVER whole AS turns
    FROM calls
    WINDOW w AS (PARTITION BY session_id ORDER BY start_time),
           whole AS (PARTITION BY session_id ORDER BY start_time ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
ORDER BY growth DESC, session_id, turn

-- summary: Context bloat in session $session: input tokens rose $value turns in a row ($first_input -> $last_input)
-- description: The LLM calls of one session (gen_ai.conversation.id / session.id, else the trace) in the last $lookback s, in start order; value = the number of turns in the trailing streak where each call's input tokens exceed the previous call's. Fires at $min_turns turns or more, for sessions with a call in the last $window s.
-- interval: 5s
-- for: 0s
-- keep_firing_for: 5m
-- severity: warning
-- extra: first_input, last_input
-- param: min_turns UInt32 12 Turns of strictly rising input tokens that make bloat
-- param: window UInt32 300 Only sessions with a call this recent (seconds)
-- param: lookback UInt32 3600 How far back a session's turns are read (seconds)
WITH {now:DateTime64(3, 'UTC')} AS t
SELECT session, tenant, value, inputs[length(inputs) - value + 1] AS first_input, inputs[length(inputs)] AS last_input
FROM
(
    SELECT
        if(session_id != '', session_id, trace_id) AS session,
        any(tenant) AS tenant,
        arrayMap(x -> x.2, arraySort(groupArray((start_time, input_tokens)))) AS inputs,
        -- arrayDifference starts with 0, which ends the streak at the first turn at the latest
        arrayFirstIndex(d -> d <= 0, arrayReverse(arrayDifference(arrayMap(x -> toInt64(x), inputs)))) AS value,
        max(start_time) AS last_call
    FROM spans
    WHERE start_time > t - toIntervalSecond({lookback:UInt32}) AND start_time <= t
      AND counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content') AND input_tokens > 0
    GROUP BY session
)
WHERE last_call > t - toIntervalSecond({window:UInt32}) AND value >= {min_turns:UInt32}

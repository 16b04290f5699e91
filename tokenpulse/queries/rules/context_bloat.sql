-- summary: Context bloat in session $session: input tokens rose $value turns in a row ($first_input -> $last_input)
-- description: The LLM calls of one session (gen_ai.conversation.id / session.id, else the trace) in the last $lookback s, in start order (its latest 64 calls: session_inputs, migration 0014); value = the number of turns in the trailing streak where each call's input tokens exceed the previous call's. Fires at $min_turns turns or more, for sessions with a call in the last $window s.
-- interval: 5s
-- for: 0s
-- keep_firing_for: 5m
-- severity: warning
-- extra: first_input, last_input
-- param: min_turns UInt32 12 Turns of strictly rising input tokens that make bloat
-- param: window UInt32 300 Only sessions with a call this recent (seconds)
-- param: lookback UInt32 3600 How far back a session's turns are read (seconds)
WITH {now:DateTime64(3, 'UTC')} AS t,
    toInt64(toUnixTimestamp64Nano(t)) AS t_ns
SELECT session, tenant, value, inputs[length(inputs) - value + 1] AS first_input, inputs[length(inputs)] AS last_input
FROM
(
    SELECT session, tenant,
        -- the latest turns, newest first (-start_time ascending), within the lookback, in start order
        arrayReverse(arrayMap(x -> x.2, arrayFilter(x -> -x.1 <= t_ns
            AND -x.1 > t_ns - toInt64({lookback:UInt32}) * 1000000000, turns))) AS inputs,
        -- arrayDifference starts with 0, which ends the streak at the first turn at the latest
        arrayFirstIndex(d -> d <= 0, arrayReverse(arrayDifference(arrayMap(x -> toInt64(x), inputs)))) AS value
    FROM
    (
        SELECT session, max(tenant) AS tenant, max(last_call) AS last_call, groupArraySortedMerge(64)(turns) AS turns
        FROM session_inputs
        GROUP BY session
        HAVING last_call > t - toIntervalSecond({window:UInt32})
    )
)
WHERE value >= {min_turns:UInt32}

-- summary: $value runs over $min_tokens tokens in the last $window s (more than $max_runs pages)
-- description: Big runs at a rate, not one big run: a run (trace) counts when its LLM calls that started in the window used more than min_tokens tokens (input + output, counted spans only). Examples: $example_traces. Tenants: $tenants.
-- interval: 5s
-- for: 0s
-- keep_firing_for: 2m
-- severity: warning
-- extra: example_traces, tenants
-- param: min_tokens UInt64 50000 A run is big above this many tokens
-- param: max_runs UInt32 3 Fire when more than this many big runs are in the window
-- param: window UInt32 300 Window, seconds
WITH {now:DateTime64(3, 'UTC')} AS t
SELECT
    count() AS value,
    arrayStringConcat(arraySlice(groupArray(trace_id), 1, 3), ', ') AS example_traces,
    arrayStringConcat(arraySlice(arraySort(groupUniqArray(tenant)), 1, 5), ', ') AS tenants
FROM
(
    SELECT trace_id, any(tenant) AS tenant, sum(tokens) AS tokens
    FROM recent_calls  -- counted LLM calls and tool calls, narrow (migration 0014)
    WHERE start_time > t - toIntervalSecond({window:UInt32}) AND start_time <= t
    GROUP BY trace_id
    HAVING tokens > {min_tokens:UInt64}
    ORDER BY tokens DESC
)
HAVING value > {max_runs:UInt32}

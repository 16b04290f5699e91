-- title: Tokens per minute by agent role
-- description: Time series of tokens per minute for each agent role. A call without a role of its own takes the role of the innermost agent span of its run whose interval contains it (agent spans end, and are exported, after their calls); calls outside any agent show as (none). Whole minutes: the window starts at the minute of now - since. Hours up to the role_minute rollup's watermark are read from it; the rest is computed live.
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
WITH
    toStartOfMinute(now64() - toIntervalSecond({since:UInt32})) AS window_start,
    (SELECT max(done_to) FROM rollup_state WHERE name = 'role_minute') AS rolled,
agents AS (
    SELECT trace_id, groupArray((start_time, end_time, agent_role)) AS spans
    FROM agent_spans
    WHERE end_time >= greatest(window_start, rolled)
    GROUP BY trace_id
)
SELECT minute, role, sum(i + o) AS tokens, sum(i) AS input_tokens, sum(o) AS output_tokens, sum(n) AS calls
FROM
(
    SELECT minute, role, input_tokens AS i, output_tokens AS o, calls AS n
    FROM role_minute FINAL
    WHERE tenant = {tenant:String} AND minute >= window_start AND minute < rolled
    UNION ALL
    SELECT
        toStartOfMinute(c.start_time) AS minute,
        if(c.agent_role != '', c.agent_role,
           ifNull(nullIf(arraySort(x -> -toUnixTimestamp64Nano(x.1),
                                   arrayFilter(x -> x.1 <= c.start_time AND x.2 >= c.end_time, a.spans))[1].3, ''),
                  '(none)')) AS role,
        c.input_tokens AS i,
        c.output_tokens AS o,
        toUInt64(1) AS n
    FROM spans AS c
    LEFT JOIN agents AS a ON c.trace_id = a.trace_id
    WHERE c.start_time >= greatest(window_start, rolled)
      AND c.counted = 1
      AND c.operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')
      AND ({tenant:String} = '' OR c.tenant = {tenant:String})
)
GROUP BY minute, role
ORDER BY minute, role

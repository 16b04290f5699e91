-- title: Tokens per minute by agent role
-- description: Time series of tokens per minute for each agent role. A call without a role of its own takes the role of the innermost agent span of its run whose interval contains it (agent spans end, and are exported, after their calls); calls outside any agent show as (none).
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
WITH agents AS (
    SELECT trace_id, groupArray((start_time, end_time, agent_role)) AS spans
    FROM agent_spans
    WHERE end_time >= now64() - toIntervalSecond({since:UInt32})
    GROUP BY trace_id
)
SELECT
    toStartOfMinute(c.start_time) AS minute,
    if(c.agent_role != '', c.agent_role,
       ifNull(nullIf(arraySort(x -> -toUnixTimestamp64Nano(x.1),
                               arrayFilter(x -> x.1 <= c.start_time AND x.2 >= c.end_time, a.spans))[1].3, ''),
              '(none)')) AS role,
    sum(c.input_tokens + c.output_tokens) AS tokens,
    sum(c.input_tokens) AS input_tokens,
    sum(c.output_tokens) AS output_tokens,
    count() AS calls
FROM spans AS c
LEFT JOIN agents AS a ON c.trace_id = a.trace_id
WHERE c.start_time >= now64() - toIntervalSecond({since:UInt32})
  AND c.counted = 1
  AND c.operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')
  AND ({tenant:String} = '' OR c.tenant = {tenant:String})
GROUP BY minute, role
ORDER BY minute, role

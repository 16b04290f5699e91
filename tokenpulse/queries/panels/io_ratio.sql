-- title: Input:output ratio
-- description: Input tokens per output token of counted LLM calls, per hour, by feature and agent role (roles resolved as in tokens_per_minute_by_agent_role). A ratio drifting up means prompts grow faster than answers: context bloat.
-- param: since UInt32 86400 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
WITH agents AS (
    SELECT trace_id, groupArray((start_time, end_time, agent_role)) AS spans
    FROM agent_spans
    WHERE end_time >= now64() - toIntervalSecond({since:UInt32})
    GROUP BY trace_id
)
SELECT
    toStartOfHour(c.start_time) AS hour,
    c.feature AS feature,
    if(c.agent_role != '', c.agent_role,
       ifNull(nullIf(arraySort(x -> -toUnixTimestamp64Nano(x.1),
                               arrayFilter(x -> x.1 <= c.start_time AND x.2 >= c.end_time, a.spans))[1].3, ''),
              '(none)')) AS role,
    sum(c.input_tokens) AS input_tokens,
    sum(c.output_tokens) AS output_tokens,
    round(sum(c.input_tokens) / nullIf(sum(c.output_tokens), 0), 2) AS input_per_output
FROM spans AS c
LEFT JOIN agents AS a ON c.trace_id = a.trace_id
WHERE c.start_time >= now64() - toIntervalSecond({since:UInt32})
  AND c.counted = 1 AND c.operation IN ('chat', 'text_completion', 'generate_content')
  AND ({tenant:String} = '' OR c.tenant = {tenant:String})
GROUP BY hour, feature, role
ORDER BY hour, feature, role

-- title: Input:output ratio
-- description: Input tokens per output token of counted LLM calls, per hour, by feature and agent role (roles resolved as in tokens_per_minute_by_agent_role). A ratio drifting up means prompts grow faster than answers: context bloat. Whole hours: the window starts at the hour of now - since. Hours up to the role_feature_hour rollup's watermark are read from it; the rest is computed live.
-- param: since UInt32 86400 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
WITH
    toStartOfHour(now64() - toIntervalSecond({since:UInt32})) AS window_start,
    (SELECT max(done_to) FROM rollup_state WHERE name = 'role_feature_hour') AS rolled,
agents AS (
    SELECT trace_id, groupArray((start_time, end_time, agent_role)) AS spans
    FROM agent_spans
    WHERE end_time >= greatest(window_start, rolled)
    GROUP BY trace_id
)
SELECT hour, feature, role, sum(i) AS input_tokens, sum(o) AS output_tokens,
       round(sum(i) / nullIf(sum(o), 0), 2) AS input_per_output
FROM
(
    SELECT hour, feature, role, input_tokens AS i, output_tokens AS o
    FROM role_feature_hour FINAL
    WHERE tenant = {tenant:String} AND hour >= window_start AND hour < rolled AND operation != 'embeddings'
    UNION ALL
    SELECT
        toStartOfHour(c.start_time) AS hour,
        c.feature AS feature,
        if(c.agent_role != '', c.agent_role,
           ifNull(nullIf(arraySort(x -> -toUnixTimestamp64Nano(x.1),
                                   arrayFilter(x -> x.1 <= c.start_time AND x.2 >= c.end_time, a.spans))[1].3, ''),
                  '(none)')) AS role,
        c.input_tokens AS i,
        c.output_tokens AS o
    FROM spans AS c
    LEFT JOIN agents AS a ON c.trace_id = a.trace_id
    WHERE c.start_time >= greatest(window_start, rolled)
      AND c.counted = 1 AND c.operation IN ('chat', 'text_completion', 'generate_content')
      AND ({tenant:String} = '' OR c.tenant = {tenant:String})
)
GROUP BY hour, feature, role
ORDER BY hour, feature, role

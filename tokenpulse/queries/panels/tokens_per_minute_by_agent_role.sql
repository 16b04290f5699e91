-- title: Tokens per minute by agent role
-- description: Time series of tokens per minute for each agent role, with roles resolved at query time (a call takes the role of the innermost agent span around it; spans_attributed). Calls outside any agent show as (none).
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
SELECT
    toStartOfMinute(start_time) AS minute,
    if(agent_role = '', '(none)', agent_role) AS role,
    sum(s.input_tokens + s.output_tokens) AS tokens,
    sum(s.input_tokens) AS input_tokens,
    sum(s.output_tokens) AS output_tokens,
    count() AS calls
FROM spans_attributed AS s
WHERE start_time >= now64() - toIntervalSecond({since:UInt32})
  AND counted = 1
  AND operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')
  AND ({tenant:String} = '' OR tenant = {tenant:String})
GROUP BY minute, role
ORDER BY minute, role

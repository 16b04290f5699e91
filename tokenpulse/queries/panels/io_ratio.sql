-- title: Input:output ratio
-- description: Input tokens per output token of counted LLM calls, by feature and agent role (resolved at query time), per hour. A ratio drifting up means prompts grow faster than answers: context bloat.
-- param: since UInt32 86400 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
SELECT
    toStartOfHour(start_time) AS hour,
    feature,
    if(agent_role = '', '(none)', agent_role) AS role,
    sum(s.input_tokens) AS input_tokens,
    sum(s.output_tokens) AS output_tokens,
    round(sum(s.input_tokens) / nullIf(sum(s.output_tokens), 0), 2) AS input_per_output
FROM spans_attributed AS s
WHERE start_time >= now64() - toIntervalSecond({since:UInt32})
  AND counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content')
  AND ({tenant:String} = '' OR tenant = {tenant:String})
GROUP BY hour, feature, role
ORDER BY hour, feature, role

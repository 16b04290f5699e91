-- title: Cost and tokens by hour
-- description: Hourly spend and tokens of counted LLM calls, split by one dimension.
-- param: since UInt32 86400 Window, seconds back from now
-- param: by Identifier feature choices=feature,tenant,model,provider,agent_role,service,environment Dimension to group by
-- param: tenant String "" Only this tenant; empty for all
-- param: model String "" Only this model; empty for all
SELECT
    toStartOfHour(minute) AS hour,
    {by:Identifier} AS key,
    sum(u.calls) AS calls,
    sum(u.input_tokens + u.output_tokens) AS tokens,
    round(sum(u.cost_usd), 6) AS cost_usd
FROM usage_minute AS u
WHERE minute >= now() - toIntervalSecond({since:UInt32})
  AND ({tenant:String} = '' OR tenant = {tenant:String})
  AND ({model:String} = '' OR model = {model:String})
GROUP BY hour, key
ORDER BY hour, cost_usd DESC

-- title: Cost and tokens by user
-- description: Spend and tokens of counted LLM calls per (pseudonymized) user id, top N by cost; calls without a user id are the row ''.
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
-- param: limit UInt32 10 Users to show, by cost
SELECT
    user_id,
    count() AS calls,
    sum(s.input_tokens) AS input_tokens,
    sum(s.output_tokens) AS output_tokens,
    round(sum(ifNull(s.cost_usd, 0)), 6) AS cost_usd
FROM spans AS s
WHERE start_time >= now64() - toIntervalSecond({since:UInt32})
  AND counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')
  AND ({tenant:String} = '' OR tenant = {tenant:String})
GROUP BY user_id
ORDER BY cost_usd DESC, input_tokens DESC
LIMIT {limit:UInt32}

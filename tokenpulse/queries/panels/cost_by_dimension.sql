-- title: Cost and tokens by dimension
-- description: Spend and tokens of counted LLM calls grouped by one dimension (attribution as known at ingest), top N by cost. The unattributed row is never cut by the top N. Calls of models without a price are counted in unpriced_calls (with their tokens in unpriced_tokens), never as $0: cost_usd is NULL (unpriced) for a row whose calls are all unpriced.
-- param: since UInt32 3600 Window, seconds back from now
-- param: by Identifier feature choices=feature,tenant,model,provider,agent_role,service,environment Dimension to group by
-- param: tenant String "" Only this tenant; empty for all
-- param: model String "" Only this model; empty for all
-- param: feature String "" Only this feature; empty for all
-- param: limit UInt32 10 Rows to show, by cost
SELECT key, calls, input_tokens, output_tokens, cache_read_tokens, reasoning_tokens,
       if(calls > 0 AND unpriced_calls = calls, NULL, priced_cost) AS cost_usd,
       if(calls > 0 AND unpriced_calls = calls, NULL, round(priced_cost / nullIf(total_cost, 0) * 100, 2)) AS cost_share_pct,
       unpriced_calls, unpriced_tokens
FROM
(
    SELECT
        {by:Identifier} AS key,
        sum(u.calls) AS calls,
        sum(u.input_tokens) AS input_tokens,
        sum(u.output_tokens) AS output_tokens,
        sum(u.cache_read_tokens) AS cache_read_tokens,
        sum(u.reasoning_tokens) AS reasoning_tokens,
        round(sum(u.cost_usd), 6) AS priced_cost,
        sum(u.unpriced_calls) AS unpriced_calls,
        sum(u.unpriced_tokens) AS unpriced_tokens,
        sum(sum(u.cost_usd)) OVER () AS total_cost,
        row_number() OVER (ORDER BY sum(u.cost_usd) DESC, sum(u.input_tokens + u.output_tokens) DESC) AS rank
    FROM usage_minute AS u
    WHERE minute >= now() - toIntervalSecond({since:UInt32})
      AND ({tenant:String} = '' OR tenant = {tenant:String})
      AND ({model:String} = '' OR model = {model:String})
      AND ({feature:String} = '' OR feature = {feature:String})
    GROUP BY key
)
WHERE rank <= {limit:UInt32} OR key = 'unattributed'
ORDER BY rank

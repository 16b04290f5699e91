-- rollup: user_hour
-- description: Calls, tokens and cost of counted LLM calls per hour, tenant and user id ('' for calls without one), for calls that started in [from, to) (whole hours), as the cost_by_user panel sums them.
INSERT INTO user_hour (tenant, hour, user_id, calls, input_tokens, output_tokens, cost_usd, computed_at)
SELECT tenant, toStartOfHour(start_time) AS hour, user_id, count(), sum(input_tokens), sum(output_tokens),
       sum(ifNull(cost_usd, 0)), now64(3)
FROM spans
WHERE start_time >= {from:DateTime64(3, 'UTC')} AND start_time < {to:DateTime64(3, 'UTC')}
  AND counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')
GROUP BY tenant, hour, user_id

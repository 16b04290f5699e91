-- summary: $value calls to unpriced model $model ($provider) in the last $window s; their cost is unknown
-- description: LLM calls whose model has no price (price_status unknown_model): their cost_usd is NULL and spend is understated by $unpriced_tokens tokens. Add the model to a price file (docs/prices.md).
-- interval: 1m
-- for: 0s
-- keep_firing_for: 15m
-- repeat_interval: 24h
-- severity: info
-- extra: unpriced_tokens
-- param: window UInt32 900 Window, seconds
WITH {now:DateTime64(3, 'UTC')} AS t
SELECT model, provider, sum(unpriced_calls) AS value, sum(unpriced_tokens) AS unpriced_tokens
FROM usage_minute
WHERE minute >= toStartOfMinute(t - toIntervalSecond({window:UInt32})) AND minute <= t
GROUP BY model, provider
HAVING value > 0

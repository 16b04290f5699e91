-- summary: $value % of tokens in the last $window s have no $dimension (unattributed)
-- description: Share of LLM tokens (input + output) whose tenant or feature resolved to 'unattributed' at ingest, per dimension. Fires above $max_share_pct % with at least $min_tokens tokens in the window. Tag the spans (docs/enrichment.md) or set require_tags.
-- interval: 1m
-- for: 5m
-- keep_firing_for: 5m
-- severity: warning
-- extra: unattributed_tokens
-- param: max_share_pct Float64 10 Fire above this share, percent
-- param: window UInt32 900 Window, seconds
-- param: min_tokens UInt64 10000 Tokens needed in the window
WITH {now:DateTime64(3, 'UTC')} AS t
SELECT dimension, round(100 * unattributed_tokens / total, 1) AS value, unattributed_tokens
FROM
(
    SELECT d.1 AS dimension,
           sumIf(input_tokens + output_tokens, d.2 = 'unattributed') AS unattributed_tokens,
           sum(input_tokens + output_tokens) AS total
    FROM usage_minute
    ARRAY JOIN [('tenant', tenant), ('feature', feature)] AS d
    WHERE minute >= toStartOfMinute(t - toIntervalSecond({window:UInt32})) AND minute <= t
    GROUP BY dimension
)
WHERE total >= {min_tokens:UInt64} AND value > {max_share_pct:Float64}

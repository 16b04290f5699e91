-- summary: Feature $feature: output:input ratio $value vs baseline $baseline_ratio ($change x)
-- description: ratio = output tokens / input tokens of the feature's LLM calls in the last $window s; baseline = the same ratio over the $baseline s before that window. Fires when the ratio moved by more than $factor x either way, with at least $min_input input tokens in the window and 10x that in the baseline.
-- interval: 1m
-- for: 2m
-- keep_firing_for: 5m
-- severity: warning
-- extra: baseline_ratio, change
-- param: factor Float64 2 Fire when the ratio is this many times higher or lower than the baseline
-- param: window UInt32 900 Recent window, seconds
-- param: baseline UInt32 86400 Baseline window before it, seconds
-- param: min_input UInt64 20000 Input tokens needed in the recent window
WITH
    {now:DateTime64(3, 'UTC')} AS t,
    toStartOfMinute(t - toIntervalSecond({window:UInt32})) AS recent_start
SELECT feature, round(ratio, 4) AS value, round(base, 4) AS baseline_ratio, round(ratio / base, 2) AS change
FROM
(
    SELECT feature,
           sumIf(output_tokens, minute >= recent_start) / sumIf(input_tokens, minute >= recent_start) AS ratio,
           sumIf(output_tokens, minute < recent_start) / sumIf(input_tokens, minute < recent_start) AS base,
           sumIf(input_tokens, minute >= recent_start) AS recent_input,
           sumIf(input_tokens, minute < recent_start) AS base_input
    FROM usage_minute
    WHERE minute >= recent_start - toIntervalSecond({baseline:UInt32}) AND minute <= t
    GROUP BY feature
)
WHERE recent_input >= {min_input:UInt64} AND base_input >= 10 * {min_input:UInt64} AND base > 0
  AND (ratio > base * {factor:Float64} OR ratio * {factor:Float64} < base)

-- summary: Agent role $agent_role: token rate $value/min is $ratio x its baseline of $baseline/min
-- description: Per agent role (resolved at ingest, see docs/enrichment.md; spans without a role are left out). rate = tokens (input + output) of the current minute plus the previous minute's scaled by the part of it inside the last 60 s (a sliding minute, assuming the previous minute was even). baseline = the median (upper middle) of the per-minute totals of the $baseline_minutes whole minutes before the previous minute; minutes without traffic count as 0. No alert until $min_active_minutes of those minutes had traffic, or below $min_rate tokens/min.
-- interval: 5s
-- for: 0s
-- keep_firing_for: 1m
-- severity: warning
-- extra: baseline, ratio
-- param: factor Float64 3 Fire when the rate is more than this many times the baseline
-- param: baseline_minutes UInt32 60 Minutes in the baseline window
-- param: min_active_minutes UInt32 30 Minutes of the baseline window that must have traffic
-- param: min_rate UInt64 20000 Never fire below this many tokens/min
WITH
    {now:DateTime64(3, 'UTC')} AS t,
    toStartOfMinute(t) AS cur,
    toUnixTimestamp(t) - toUnixTimestamp(cur) AS elapsed
SELECT agent_role, round(rate) AS value, round(baseline) AS baseline, round(rate / greatest(baseline, 1), 1) AS ratio
FROM
(
    SELECT agent_role,
        sumIf(tokens, minute = cur) + sumIf(tokens, minute = cur - INTERVAL 1 MINUTE) * (60 - elapsed) / 60 AS rate,
        groupArrayIf(tokens, minute < cur - INTERVAL 1 MINUTE) AS history,
        length(history) AS active_minutes,
        arrayReduce('quantileExact',
            arrayConcat(history, arrayWithConstant({baseline_minutes:UInt32} - length(history), 0))) AS baseline
    FROM
    (
        SELECT agent_role, minute, sum(input_tokens + output_tokens) AS tokens
        FROM usage_minute
        WHERE minute >= cur - toIntervalMinute({baseline_minutes:UInt32} + 1) AND minute <= cur AND agent_role != ''
        GROUP BY agent_role, minute
    )
    GROUP BY agent_role
)
WHERE active_minutes >= {min_active_minutes:UInt32} AND rate >= {min_rate:UInt64} AND rate > {factor:Float64} * baseline

-- summary: Agent role $agent_role: token rate $value/min is $ratio x its baseline of $baseline/min ($history_minutes min of history)
-- description: Per agent role (resolved at ingest, see docs/enrichment.md; spans without a role are left out). rate = tokens (input + output) of the current minute plus the previous minute's scaled by the part of it inside the last 60 s (a sliding minute, assuming the previous minute was even). baseline = the median (upper middle) of the per-minute totals of the whole minutes before the previous minute, from the first with traffic in the last $baseline_minutes; minutes without traffic after it count as 0, so a fresh install has a baseline once $min_active_minutes minutes had traffic (and the message says how many minutes it rests on; `tokenpulse import` loads older spans). No alert until then, or below $min_rate tokens/min.
-- interval: 5s
-- for: 0s
-- keep_firing_for: 1m
-- severity: warning
-- extra: baseline, ratio, history_minutes
-- param: factor Float64 3 Fire when the rate is more than this many times the baseline
-- param: baseline_minutes UInt32 60 Minutes in the baseline window
-- param: min_active_minutes UInt32 5 Minutes of the baseline window that must have traffic
-- param: min_rate UInt64 20000 Never fire below this many tokens/min
WITH
    {now:DateTime64(3, 'UTC')} AS t,
    toStartOfMinute(t) AS cur,
    toUnixTimestamp(t) - toUnixTimestamp(cur) AS elapsed
SELECT agent_role, round(rate) AS value, round(baseline) AS baseline, round(rate / greatest(baseline, 1), 1) AS ratio, history_minutes
FROM
(
    SELECT agent_role,
        sumIf(tokens, minute = cur) + sumIf(tokens, minute = cur - INTERVAL 1 MINUTE) * (60 - elapsed) / 60 AS rate,
        groupArrayIf(tokens, minute < cur - INTERVAL 1 MINUTE) AS history,
        length(history) AS active_minutes,
        least(dateDiff('minute', minIf(minute, minute < cur - INTERVAL 1 MINUTE), cur - INTERVAL 1 MINUTE),
              {baseline_minutes:UInt32}) AS history_minutes,
        arrayReduce('quantileExact',
            arrayConcat(history, arrayWithConstant(greatest(history_minutes - active_minutes, 0), 0))) AS baseline
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

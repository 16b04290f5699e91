-- summary: Tenant $tenant burns $value tokens/min over the last $window_s s, $ratio x its own baseline of $baseline/min ($history_minutes min of history)
-- description: The tenant against itself, not against other tenants: rate = the tenant's tokens (input + output) of calls that ended in the last $window s (usage_10s, 10-second buckets, so the window is $window to $window + 10 s), per minute. baseline = the larger of the median and the trimmed mean (minutes above the 90th percentile left out: a past spike does not raise it) of the tenant's per-minute tokens (usage_minute) over the whole minutes from its first traffic in the last $baseline_minutes minutes up to 2 minutes ago (minutes without traffic count as 0; the mean keeps a tenant that sends in bursts from paging on every burst). A tenant with less than $min_history minutes of history is not judged, so a fresh install pages after $min_history minutes (import older spans with `tokenpulse import` to have a baseline at once). Never fires below $min_rate tokens/min, nor on fewer than $min_calls calls in the window (a small tenant's few calls bunching up by chance is not a spike). Calls stored 'unattributed' (their tenant learned later from the trace's root) count under 'unattributed' here.
-- interval: 2s
-- for: 0s
-- keep_firing_for: 1m
-- severity: critical
-- extra: baseline, ratio, history_minutes, window_s
-- param: factor Float64 3 Fire when the tenant's recent rate is more than this many times its own baseline
-- param: window UInt32 15 Recent window, seconds (rounded up to 10-second buckets)
-- param: baseline_minutes UInt32 60 Minutes of history the baseline is taken from
-- param: min_history UInt32 5 Minutes of history a tenant needs before it is judged
-- param: min_rate UInt64 20000 Never fire below this many tokens/min
-- param: min_calls UInt32 10 Never fire on fewer calls than this in the window
WITH
    {now:DateTime64(3, 'UTC')} AS t,
    toStartOfInterval(t - toIntervalSecond({window:UInt32}), INTERVAL 10 SECOND) AS since,
    toStartOfMinute(t) AS cur
SELECT r.tenant AS tenant, round(r.rate) AS value, round(b.baseline) AS baseline,
       round(r.rate / greatest(b.baseline, 1), 1) AS ratio, b.history_minutes AS history_minutes,
       round(r.seconds) AS window_s
FROM
(
    SELECT tenant, sum(calls) AS calls, sum(tokens) * 60 / (toUnixTimestamp64Milli(t) / 1000 - toUnixTimestamp(since)) AS rate,
           toUnixTimestamp64Milli(t) / 1000 - toUnixTimestamp(since) AS seconds
    FROM usage_10s
    WHERE bucket >= since AND bucket <= t
    GROUP BY tenant
) AS r
INNER JOIN
(
    SELECT tenant, history_minutes,
           arrayConcat(history, arrayWithConstant(greatest(history_minutes - length(history), 0), 0)) AS padded,
           greatest(toFloat64(arrayReduce('quantileExact', padded)),
                    arrayAvg(arrayFilter(x -> x <= arrayReduce('quantileExact(0.9)', padded), padded))) AS baseline
    FROM
    (
        SELECT tenant, groupArray(tokens) AS history,
               dateDiff('minute', min(minute), cur - INTERVAL 2 MINUTE) AS history_minutes
        FROM
        (
            SELECT tenant, minute, sum(input_tokens + output_tokens) AS tokens
            FROM usage_minute
            WHERE minute >= cur - toIntervalMinute({baseline_minutes:UInt32} + 2) AND minute < cur - INTERVAL 2 MINUTE
            GROUP BY tenant, minute
            HAVING tokens > 0
        )
        GROUP BY tenant
    )
    WHERE history_minutes >= {min_history:UInt32}
) AS b ON r.tenant = b.tenant
WHERE r.rate >= {min_rate:UInt64} AND r.rate > {factor:Float64} * b.baseline AND r.calls >= {min_calls:UInt32}

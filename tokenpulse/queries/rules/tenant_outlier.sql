-- summary: Tenant $tenant burns $value tokens/min, $ratio x the median tenant ($median_rate/min; $own)
-- description: rate = a sliding minute of tokens (input + output), as in token_rate_anomaly. The median is over every tenant with traffic in the last $active_window s (the 'unattributed' bucket is not a tenant); needs at least $min_tenants of them. A tenant that is big every day is not an outlier: with at least $min_history minutes of its own history (see tenant_spike for the baseline) it must also be more than $own_factor x its own baseline. Never fires below $min_rate tokens/min.
-- interval: 5s
-- for: 0s
-- keep_firing_for: 1m
-- severity: critical
-- action: throttle
-- extra: median_rate, ratio, tenants, own
-- param: factor Float64 10 Fire when a tenant's rate is more than this many times the median tenant's
-- param: active_window UInt32 900 A tenant is active with traffic in this many seconds
-- param: min_tenants UInt32 3 Active tenants needed for a meaningful median
-- param: min_rate UInt64 20000 Never fire below this many tokens/min
-- param: own_factor Float64 3 ... and more than this many times the tenant's own baseline, when it has one
-- param: baseline_minutes UInt32 60 Minutes of history the tenant's own baseline is taken from
-- param: min_history UInt32 5 Minutes of history that make an own baseline
WITH
    {now:DateTime64(3, 'UTC')} AS t,
    toStartOfMinute(t) AS cur,
    toUnixTimestamp(t) - toUnixTimestamp(cur) AS elapsed
SELECT o.tenant AS tenant, round(o.rate) AS value, round(o.median_rate) AS median_rate,
       round(o.rate / greatest(o.median_rate, 1), 1) AS ratio, o.tenants AS tenants,
       if(b.history_minutes >= {min_history:UInt32},
          concat(toString(round(o.rate / greatest(b.baseline, 1), 1)), ' x its own baseline'),
          'no history of its own yet') AS own
FROM
(
    SELECT tenant, rate, quantileExact(rate) OVER () AS median_rate, count() OVER () AS tenants
    FROM
    (
        SELECT tenant,
               sumIf(tokens, minute = cur) + sumIf(tokens, minute = cur - INTERVAL 1 MINUTE) * (60 - elapsed) / 60 AS rate
        FROM
        (
            SELECT tenant, minute, sum(input_tokens + output_tokens) AS tokens
            FROM usage_minute
            WHERE minute >= toStartOfMinute(t - toIntervalSecond({active_window:UInt32})) AND minute <= cur
              AND tenant != 'unattributed'
            GROUP BY tenant, minute
        )
        GROUP BY tenant
    )
) AS o
LEFT JOIN
(
    -- the tenant's own baseline, as tenant_spike computes it
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
) AS b ON o.tenant = b.tenant
WHERE o.tenants >= {min_tenants:UInt32} AND o.rate >= {min_rate:UInt64} AND o.rate > {factor:Float64} * o.median_rate
  AND (b.history_minutes < {min_history:UInt32} OR o.rate > {own_factor:Float64} * b.baseline)

-- summary: Tenant $tenant burns $value tokens/min, $ratio x the median tenant ($median_rate/min)
-- description: rate = a sliding minute of tokens (input + output), as in token_rate_anomaly. The median is over every tenant with traffic in the last $active_window s (the 'unattributed' bucket is not a tenant); needs at least $min_tenants of them. Never fires below $min_rate tokens/min.
-- interval: 5s
-- for: 0s
-- keep_firing_for: 1m
-- severity: critical
-- action: throttle
-- extra: median_rate, ratio, tenants
-- param: factor Float64 10 Fire when a tenant's rate is more than this many times the median tenant's
-- param: active_window UInt32 900 A tenant is active with traffic in this many seconds
-- param: min_tenants UInt32 3 Active tenants needed for a meaningful median
-- param: min_rate UInt64 20000 Never fire below this many tokens/min
WITH
    {now:DateTime64(3, 'UTC')} AS t,
    toStartOfMinute(t) AS cur,
    toUnixTimestamp(t) - toUnixTimestamp(cur) AS elapsed
SELECT tenant, round(rate) AS value, round(median_rate) AS median_rate,
       round(rate / greatest(median_rate, 1), 1) AS ratio, tenants
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
)
WHERE tenants >= {min_tenants:UInt32} AND rate >= {min_rate:UInt64} AND rate > {factor:Float64} * median_rate

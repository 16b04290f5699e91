-- summary: Budget $budget: $percent % of $limit_usd USD spent this $period ($dimension $key)
-- description: Spend (computed cost_usd of counted calls, from usage_minute) since the start of the UTC day or month, against the budgets in the config (table budgets; value '*' = each value of the dimension). One alert per threshold crossed ($thresholds %); the period start is a label, so each fires once per period and resolves when the period ends.
-- interval: 30s
-- for: 0s
-- keep_firing_for: 0s
-- repeat_interval: 0
-- severity: warning
-- action: throttle
-- extra: limit_usd, percent
-- param: thresholds String "50,80,100" Percent thresholds, comma-separated
WITH
    {now:DateTime64(3, 'UTC')} AS t,
    toStartOfDay(t) AS day_start,
    toStartOfMonth(t) AS month_start
SELECT budget, dimension, key, period, toString(period_start) AS period_start, threshold,
       multiIf(threshold >= 100, 'critical', threshold >= 80, 'warning', 'info') AS severity,
       round(spent, 2) AS value, limit_usd, round(100 * spent / limit_usd, 1) AS percent
FROM
(
    SELECT b.name AS budget, b.dimension AS dimension, u.key AS key, b.period AS period,
           if(b.period = 'day', toDateTime(day_start), toDateTime(month_start)) AS period_start,
           if(b.period = 'day', u.day_cost, u.month_cost) AS spent, b.limit_usd AS limit_usd
    FROM
    (
        SELECT d.1 AS dimension, d.2 AS key,
               sumIf(cost_usd, minute >= day_start) AS day_cost,
               sumIf(cost_usd, minute >= month_start) AS month_cost
        FROM usage_minute
        ARRAY JOIN [('total', ''), ('tenant', tenant), ('feature', feature), ('model', model),
                    ('agent_role', agent_role)] AS d
        WHERE minute >= least(toDateTime(day_start), toDateTime(month_start)) AND minute <= t
        GROUP BY dimension, key
    ) AS u
    INNER JOIN budgets AS b ON b.dimension = u.dimension AND (b.value = u.key OR b.value = '*')
    WHERE b.limit_usd > 0
)
ARRAY JOIN arrayMap(x -> toUInt32OrZero(trim(x)), splitByChar(',', {thresholds:String})) AS threshold
WHERE threshold > 0 AND spent >= limit_usd * threshold / 100

-- summary: Budget $budget ($dimension $key) will be spent by $crossing_utc UTC, in $hours_left h: $percent % of $limit_usd USD spent this $period, at $rate_usd_per_hour USD/h
-- description: A forecast, before the crossing: spend (computed cost_usd of counted calls, usage_minute) since the start of the UTC day or month, and the rate of the last $window s of it (never before the period's start). At that rate the budget is spent at crossing_utc; the alert fires when that is before the period ends and within $horizon s, once $min_elapsed s of the period have passed (no projection from a period's first minutes). The period start is a label: one alert per budget and period; the 100 % crossing (rule budget) silences it (alert_inhibit).
-- interval: 30s
-- for: 0s
-- keep_firing_for: 1h
-- repeat_interval: 0
-- severity: critical
-- extra: limit_usd, percent, crossing_utc, hours_left, rate_usd_per_hour
-- param: window UInt32 3600 The recent spend the rate is taken from, seconds
-- param: horizon UInt32 21600 Fire when the projected crossing is at most this many seconds away
-- param: min_elapsed UInt32 900 Seconds of the period that must have passed before projecting
WITH
    {now:DateTime64(3, 'UTC')} AS t,
    toDateTime(toStartOfDay(t)) AS day_start,
    toDateTime(toStartOfMonth(t)) AS month_start
SELECT budget, dimension, key, period, toString(period_start) AS period_start,
       round(spent, 2) AS value, limit_usd, round(100 * spent / limit_usd, 1) AS percent,
       formatDateTime(crossing, '%Y-%m-%d %H:%i') AS crossing_utc, round(seconds_left / 3600, 1) AS hours_left,
       round(rate * 3600, 2) AS rate_usd_per_hour
FROM
(
    SELECT b.name AS budget, b.dimension AS dimension, u.key AS key, b.period AS period,
           if(b.period = 'day', day_start, month_start) AS period_start,
           if(b.period = 'day', day_start + INTERVAL 1 DAY, month_start + INTERVAL 1 MONTH) AS period_end,
           if(b.period = 'day', u.day_cost, u.month_cost) AS spent, b.limit_usd AS limit_usd,
           if(b.period = 'day', u.day_recent, u.month_recent)
               / greatest(toUnixTimestamp(t) - toUnixTimestamp(greatest(period_start, t - toIntervalSecond({window:UInt32}))), 1)
               AS rate,
           (b.limit_usd - spent) / greatest(rate, 1e-12) AS seconds_left,
           t + toIntervalSecond(toInt64(least(seconds_left, 1e9))) AS crossing
    FROM
    (
        SELECT d.1 AS dimension, d.2 AS key,
               sumIf(cost_usd, minute >= day_start) AS day_cost,
               sumIf(cost_usd, minute >= month_start) AS month_cost,
               sumIf(cost_usd, minute >= day_start AND minute >= t - toIntervalSecond({window:UInt32})) AS day_recent,
               sumIf(cost_usd, minute >= month_start AND minute >= t - toIntervalSecond({window:UInt32})) AS month_recent
        FROM usage_minute
        ARRAY JOIN [('total', ''), ('tenant', tenant), ('feature', feature), ('model', model),
                    ('agent_role', agent_role)] AS d
        WHERE minute >= least(day_start, month_start) AND minute <= t
        GROUP BY dimension, key
    ) AS u
    INNER JOIN budgets AS b ON b.dimension = u.dimension AND (b.value = u.key OR b.value = '*')
    WHERE b.limit_usd > 0
)
WHERE spent < limit_usd AND rate > 0 AND crossing < period_end
  AND seconds_left <= {horizon:UInt32}
  AND toUnixTimestamp(t) - toUnixTimestamp(period_start) >= {min_elapsed:UInt32}

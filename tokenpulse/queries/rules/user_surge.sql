-- summary: User $user_id (tenant $tenant) at $value tokens/min, $over_pct % over their 7-day average
-- description: rate = tokens (input + output) over the last $window s, per minute; average = the user's tokens over the 7 days before that window divided by 7 x 1440 minutes. Fires when the rate is more than $surge_pct % over the average (rate > average x (1 + surge_pct/100)), the user was first seen at least $min_history s before, and the rate is at least $min_rate tokens/min. user_id is the pseudonym stored at ingest.
-- interval: 1m
-- for: 0s
-- keep_firing_for: 5m
-- severity: warning
-- extra: average, over_pct
-- param: surge_pct Float64 400 Fire when the rate is this many percent over the 7-day average
-- param: window UInt32 900 Recent window, seconds
-- param: min_history UInt32 86400 Users first seen more recently than this have no baseline yet
-- param: min_rate UInt64 1000 Never fire below this many tokens/min
WITH
    {now:DateTime64(3, 'UTC')} AS t,
    toStartOfMinute(t - toIntervalSecond({window:UInt32})) AS recent_start
SELECT tenant, user_id, round(rate) AS value, round(average, 1) AS average,
       round(100 * (rate / greatest(average, 0.001) - 1)) AS over_pct
FROM
(
    SELECT tenant, user_id,
           sumIf(tokens, minute >= recent_start) / ({window:UInt32} / 60) AS rate,
           sumIf(tokens, minute < recent_start) / (7 * 1440) AS average,
           min(minute) AS first_seen
    FROM user_minute
    WHERE minute >= recent_start - INTERVAL 7 DAY AND minute <= t
    GROUP BY tenant, user_id
)
WHERE first_seen <= t - toIntervalSecond({min_history:UInt32})
  AND rate >= {min_rate:UInt64}
  AND rate > average * (1 + {surge_pct:Float64} / 100)

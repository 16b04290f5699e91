-- summary: User $user_id (tenant $tenant) at $value tokens/min, $over_pct % over their average of $average/min ($history of history)
-- description: rate = tokens (input + output) over the last $window s, per minute; average = the user's tokens from their first minute seen (at most 7 days back) up to that window, divided by those minutes: a user seen for an hour has an hour of baseline, and the message says how much. Fires when the rate is more than $surge_pct % over the average (rate > average x (1 + surge_pct/100)), the user was first seen at least $min_history s before the window, and the rate is at least $min_rate tokens/min. user_id is the pseudonym stored at ingest.
-- interval: 1m
-- for: 0s
-- keep_firing_for: 5m
-- severity: warning
-- extra: average, over_pct, history
-- param: surge_pct Float64 400 Fire when the rate is this many percent over the 7-day average
-- param: window UInt32 900 Recent window, seconds
-- param: min_history UInt32 3600 Users first seen more recently than this have no baseline yet
-- param: min_rate UInt64 1000 Never fire below this many tokens/min
WITH
    {now:DateTime64(3, 'UTC')} AS t,
    toStartOfMinute(t - toIntervalSecond({window:UInt32})) AS recent_start
SELECT tenant, user_id, round(rate) AS value, round(average, 1) AS average,
       round(100 * (rate / greatest(average, 0.001) - 1)) AS over_pct,
       if(history_minutes >= 2880, concat(toString(intDiv(history_minutes, 1440)), ' days'),
          if(history_minutes >= 120, concat(toString(intDiv(history_minutes, 60)), ' hours'),
             concat(toString(history_minutes), ' minutes'))) AS history
FROM
(
    SELECT tenant, user_id,
           sumIf(tokens, minute >= recent_start) / ({window:UInt32} / 60) AS rate,
           greatest(dateDiff('minute', min(minute), recent_start), 1) AS history_minutes,
           sumIf(tokens, minute < recent_start) / history_minutes AS average,
           min(minute) AS first_seen
    FROM user_minute
    WHERE minute >= recent_start - INTERVAL 7 DAY AND minute <= t
    GROUP BY tenant, user_id
)
WHERE first_seen <= recent_start - toIntervalSecond({min_history:UInt32})
  AND rate >= {min_rate:UInt64}
  AND rate > average * (1 + {surge_pct:Float64} / 100)

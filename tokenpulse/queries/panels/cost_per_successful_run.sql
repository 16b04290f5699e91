-- title: Cost per successful run
-- description: The efficiency gradient: total cost of the runs that started in each hour divided by those of them that succeeded. With an outcome attribute configured (outcome_attribute), a run that reported failure on any span failed and one that reported success succeeded; otherwise a run succeeds when its root span has arrived and its status is not ERROR (OK or UNSET: most SDKs leave a successful root UNSET). Runs up to the run_summary rollup's watermark are read from it; the rest live from `runs`.
-- param: since UInt32 86400 Window, seconds back from now
-- param: tenant String "" Only runs of this tenant; empty for all
WITH
    now64() - toIntervalSecond({since:UInt32}) AS window_start,
    (SELECT max(done_to) FROM rollup_state WHERE name = 'run_summary') AS rolled
SELECT
    toStartOfHour(start) AS hour,
    count() AS runs,
    countIf(success) AS successful_runs,
    round(sum(cost), 6) AS cost_usd,
    round(sum(cost) / nullIf(countIf(success), 0), 6) AS cost_per_successful_run
FROM
(
    SELECT start, cost_usd AS cost, success
    FROM run_summary FINAL
    WHERE start >= window_start AND start < rolled AND ({tenant:String} = '' OR tenant = {tenant:String})
    UNION ALL
    SELECT min(start_time) AS start, sum(cost_usd) AS cost,
           multiIf(max(outcome_failure) = 1, 0, max(outcome_success) = 1, 1,
                   max(root_seen) = 1 AND max(root_error) = 0) AS success
    FROM runs
    WHERE end_time >= greatest(window_start, rolled)
    GROUP BY trace_id
    HAVING start >= greatest(window_start, rolled)
       AND ({tenant:String} = '' OR max(tenant) = {tenant:String})
)
GROUP BY hour
ORDER BY hour

-- title: Cost per successful run
-- description: The efficiency gradient: total cost of the runs that started in each hour divided by those of them that succeeded. With an outcome attribute configured (outcome_attribute), a run that reported failure on any span failed and one that reported success succeeded; otherwise a run succeeds when its root span has arrived and its status is not ERROR (OK or UNSET: most SDKs leave a successful root UNSET).
-- param: since UInt32 86400 Window, seconds back from now
-- param: tenant String "" Only runs of this tenant; empty for all
SELECT
    toStartOfHour(start) AS hour,
    count() AS runs,
    countIf(success) AS successful_runs,
    round(sum(cost), 6) AS cost_usd,
    round(sum(cost) / nullIf(countIf(success), 0), 6) AS cost_per_successful_run
FROM
(
    SELECT trace_id, min(start_time) AS start, sum(cost_usd) AS cost,
           multiIf(max(outcome_failure) = 1, 0, max(outcome_success) = 1, 1,
                   max(root_seen) = 1 AND max(root_error) = 0) AS success,
           max(tenant) AS run_tenant
    FROM runs
    WHERE end_time >= now64() - toIntervalSecond({since:UInt32})
    GROUP BY trace_id
    HAVING start >= now64() - toIntervalSecond({since:UInt32})
       AND ({tenant:String} = '' OR run_tenant = {tenant:String})
)
GROUP BY hour
ORDER BY hour

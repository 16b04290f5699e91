-- title: Tokens per run
-- description: Distribution of tokens (input + output, counted calls only) per run (trace) that started in the window, in power-of-two buckets, with exact p50 / p95 / p99. The long tail is where failures live. Runs up to the run_summary rollup's watermark are read from it; the rest live from `runs`.
-- param: since UInt32 3600 Window, seconds back from now (the CLI and API accept 15m, 1h, 7d)
-- param: tenant String "" Only runs of this tenant; empty for all
WITH
    now64() - toIntervalSecond({since:UInt32}) AS window_start,
    (SELECT max(done_to) FROM rollup_state WHERE name = 'run_summary') AS rolled,
per_run AS (
    SELECT tokens
    FROM run_summary FINAL
    WHERE start >= window_start AND start < rolled AND llm_calls > 0
      AND ({tenant:String} = '' OR tenant = {tenant:String})
    UNION ALL
    SELECT sum(input_tokens) + sum(output_tokens) AS tokens
    FROM runs
    WHERE end_time >= greatest(window_start, rolled)
    GROUP BY trace_id
    HAVING min(start_time) >= greatest(window_start, rolled)
       AND sum(llm_calls) > 0
       AND ({tenant:String} = '' OR max(tenant) = {tenant:String})
)
-- One pass over the runs: per power-of-two bucket its count and the exact quantile state (the
-- runs' token counts); the states merged over all buckets give the exact p50 / p95 / p99.
SELECT bucket_from, bucket_to, runs, total_runs, p[1] AS p50_tokens, p[2] AS p95_tokens, p[3] AS p99_tokens
FROM (
    SELECT
        intExp2(e) AS bucket_from,
        intExp2(e + 1) AS bucket_to,
        runs,
        sum(runs) OVER () AS total_runs,
        quantilesExactMerge(0.5, 0.95, 0.99)(q) OVER () AS p
    FROM (
        SELECT toUInt8(floor(log2(greatest(tokens, 1)))) AS e, count() AS runs,
               quantilesExactState(0.5, 0.95, 0.99)(tokens) AS q
        FROM per_run
        GROUP BY e
    )
)
ORDER BY bucket_from

-- title: Cost and tokens by user
-- description: Spend and tokens of counted LLM calls per (pseudonymized) user id, top N by cost; calls without a user id are the row ''. Whole hours up to the user_hour rollup's watermark are read from it; the window's first, partial hour and the hours after the watermark are summed from the spans.
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
-- param: limit UInt32 10 Users to show, by cost
WITH
    now64() - toIntervalSecond({since:UInt32}) AS window_start,
    toStartOfHour(window_start) + toIntervalHour(1) AS first_whole_hour,
    (SELECT max(done_to) FROM rollup_state WHERE name = 'user_hour') AS rolled,
parts AS (
    SELECT user_id, calls, input_tokens, output_tokens, cost_usd
    FROM user_hour FINAL
    WHERE hour >= first_whole_hour AND hour < rolled
      AND ({tenant:String} = '' OR tenant = {tenant:String})
    UNION ALL
    SELECT user_id, 1, input_tokens, output_tokens, ifNull(cost_usd, 0)
    FROM spans
    WHERE start_time >= window_start
      AND (start_time < first_whole_hour OR start_time >= greatest(rolled, first_whole_hour))
      AND counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')
      AND ({tenant:String} = '' OR tenant = {tenant:String})
)
SELECT
    user_id,
    sum(calls) AS calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    round(sum(cost_usd), 6) AS cost_usd
FROM parts
GROUP BY user_id
ORDER BY cost_usd DESC, input_tokens DESC
LIMIT {limit:UInt32}

-- title: Runs, costliest first
-- description: The runs (traces) behind the aggregates, costliest first: when, tenant, feature, user, session, the models called, LLM calls, tokens and cost of counted calls (unpriced calls apart), duration and status. Attribution as the trace resolves it (the spans_attributed view). The drill-down from a panel, an alert or a throttle row; open one with run_spans.
-- param: since UInt32 3600 Window, seconds back from now
-- param: tenant String "" Only runs of this tenant
-- param: feature String "" Only runs of this feature
-- param: user String "" Only runs of this (pseudonymized) user id
-- param: session String "" Only runs of this session
-- param: model String "" Only runs that called this model
-- param: limit UInt32 50 Runs to show
SELECT trace_id, start, duration_s, tenant, feature, user_id, session_id, models, llm_calls, tokens,
       if(llm_calls > 0 AND unpriced_calls = llm_calls, NULL, round(cost_usd, 6)) AS cost_usd, unpriced_calls, status
FROM
(
    SELECT
        trace_id,
        min(start_time) AS start,
        round(dateDiff('millisecond', min(start_time), max(end_time)) / 1000, 3) AS duration_s,
        argMax(tenant, (tenant != 'unattributed', parent_span_id = '')) AS tenant,
        argMax(feature, (feature != 'unattributed', parent_span_id = '')) AS feature,
        argMax(user_id, (user_id != '', parent_span_id = '')) AS user_id,
        argMax(session_id, (session_id != '', parent_span_id = '')) AS session_id,
        arrayStringConcat(arraySort(groupUniqArrayIf(model, model != '' AND counted = 1)), ', ') AS models,
        countIf(counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')) AS llm_calls,
        sumIf(input_tokens + output_tokens, counted = 1) AS tokens,
        sumIf(ifNull(cost_usd, 0), counted = 1) AS cost_usd,
        countIf(counted = 1 AND price_status = 'unknown_model') AS unpriced_calls,
        multiIf(countIf(status_code = 'error' AND parent_span_id = '') > 0, 'error',
                countIf(status_code = 'error') > 0, 'errors inside', 'ok') AS status,
        groupUniqArray(model) AS all_models
    FROM spans_attributed
    WHERE start_time >= now64() - toIntervalSecond({since:UInt32})
    GROUP BY trace_id
)
WHERE ({tenant:String} = '' OR tenant = {tenant:String})
  AND ({feature:String} = '' OR feature = {feature:String})
  AND ({user:String} = '' OR user_id = {user:String})
  AND ({session:String} = '' OR session_id = {session:String})
  AND ({model:String} = '' OR has(all_models, {model:String}))
ORDER BY ifNull(cost_usd, 0) DESC, tokens DESC, start DESC
LIMIT {limit:UInt32}

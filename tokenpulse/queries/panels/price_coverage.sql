-- title: Price coverage
-- description: How much of the usage has a price: counted LLM calls and tokens whose model is unknown to the price table (cost NULL), calls with no usage reported, and the unknown models. not_inference_usage_spans: spans that reported token usage but are no LLM call (a tool, retriever or unknown operation), so their tokens are in attributes and in no sum.
-- param: since UInt32 86400 Window, seconds back from now
-- param: tenant String "" Only this tenant; empty for all
SELECT
    sum(u.calls) AS calls,
    sum(u.unpriced_calls) AS unknown_model_calls,
    round(sum(u.unpriced_calls) / nullIf(sum(u.calls), 0) * 100, 2) AS unknown_model_calls_pct,
    sum(u.no_usage_calls) AS no_usage_calls,
    round(sum(u.no_usage_calls) / nullIf(sum(u.calls), 0) * 100, 2) AS no_usage_calls_pct,
    sum(u.input_tokens + u.output_tokens) AS tokens,
    sum(u.unpriced_tokens) AS unpriced_tokens,
    round(sum(u.unpriced_tokens) / nullIf(sum(u.input_tokens + u.output_tokens), 0) * 100, 2) AS unpriced_tokens_pct,
    arraySort(groupUniqArrayIf(u.model, u.unpriced_calls > 0)) AS unknown_models,
    (SELECT count() FROM spans
     WHERE start_time >= now() - toIntervalSecond({since:UInt32}) AND counted = 0
       AND startsWith(excluded_reason, 'not_inference')
       AND ({tenant:String} = '' OR tenant = {tenant:String})) AS not_inference_usage_spans
FROM usage_minute AS u
WHERE minute >= now() - toIntervalSecond({since:UInt32})
  AND ({tenant:String} = '' OR tenant = {tenant:String})

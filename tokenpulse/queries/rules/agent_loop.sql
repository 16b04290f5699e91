-- summary: Agent loop in session $session: $kind $target repeated $value times in $window s
-- description: The same tool with the same arguments (kind tool), or the same LLM input (kind llm_input), at least $min_repeats times in one session (gen_ai.conversation.id / session.id, else the trace) within $window s. Sameness is the span's tokenpulse.input_hash, a fingerprint computed at ingest (content itself is not stored unless capture_content is on) of the arguments: gen_ai.tool.call.arguments (semconv), input.value (OpenInference), traceloop.entity.input (OpenLLMetry), ai.toolCall.args (Vercel AI); or of the LLM input: gen_ai.input.messages, gen_ai.prompt*, llm.input_messages*, input.value, ai.prompt*. Spans that record neither are not judged. Example trace: $example_trace.
-- interval: 5s
-- for: 0s
-- keep_firing_for: 2m
-- severity: critical
-- extra: tenant, example_trace
-- param: min_repeats UInt32 5 Repeats that make a loop
-- param: window UInt32 600 Window, seconds
WITH {now:DateTime64(3, 'UTC')} AS t
SELECT kind, session, target, input_hash, value, tenant, example_trace
FROM
(
    -- recent_calls (migration 0014): one narrow row per counted LLM call and per tool call
    SELECT kind, session, target, input_hash, count() AS value, any(tenant) AS tenant, any(trace_id) AS example_trace
    FROM recent_calls
    WHERE start_time > t - toIntervalSecond({window:UInt32}) AND start_time <= t
      AND kind IN ('tool', 'llm_input') AND input_hash != ''
    GROUP BY kind, session, target, input_hash
    HAVING value >= {min_repeats:UInt32}
)

-- summary: Agent loop in session $session: $kind $target repeated $value times in $window s
-- description: The same tool with the same arguments (kind tool), or the same LLM input (kind llm_input), at least $min_repeats times in one session (gen_ai.conversation.id / session.id, else the trace) within $window s. Arguments: gen_ai.tool.call.arguments (semconv), input.value (OpenInference), traceloop.entity.input (OpenLLMetry), ai.toolCall.args (Vercel AI). LLM input: gen_ai.input.messages, gen_ai.prompt*, llm.input_messages*, input.value, ai.prompt*. Spans that record neither are not judged. Example trace: $example_trace.
-- interval: 5s
-- for: 0s
-- keep_firing_for: 2m
-- severity: critical
-- extra: tenant, example_trace
-- param: min_repeats UInt32 5 Repeats that make a loop
-- param: window UInt32 600 Window, seconds
WITH {now:DateTime64(3, 'UTC')} AS t
SELECT kind, session, target, lower(hex(input_hash)) AS input_hash, value, tenant, example_trace
FROM
(
    SELECT
        if(operation = 'execute_tool', 'tool', 'llm_input') AS kind,
        if(session_id != '', session_id, trace_id) AS session,
        if(operation = 'execute_tool', tool_name, model) AS target,
        cityHash64(if(operation = 'execute_tool',
            concat(attributes['gen_ai.tool.call.arguments'], '\x1f', attributes['input.value'], '\x1f',
                   attributes['traceloop.entity.input'], '\x1f', attributes['ai.toolCall.args']),
            toString(mapSort(mapFilter((k, v) -> k = 'gen_ai.input.messages' OR k = 'input.value'
                OR startsWith(k, 'gen_ai.prompt') OR startsWith(k, 'llm.input_messages')
                OR startsWith(k, 'ai.prompt'), attributes))))) AS input_hash,
        count() AS value,
        any(tenant) AS tenant,
        any(trace_id) AS example_trace
    FROM spans
    WHERE start_time > t - toIntervalSecond({window:UInt32}) AND start_time <= t
      AND (operation = 'execute_tool' OR (counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content')))
      AND if(operation = 'execute_tool',
             attributes['gen_ai.tool.call.arguments'] != '' OR attributes['input.value'] != ''
                 OR attributes['traceloop.entity.input'] != '' OR attributes['ai.toolCall.args'] != '',
             arrayExists(k -> k = 'gen_ai.input.messages' OR k = 'input.value' OR startsWith(k, 'gen_ai.prompt')
                 OR startsWith(k, 'llm.input_messages') OR startsWith(k, 'ai.prompt'), mapKeys(attributes)))
    GROUP BY kind, session, target, input_hash
    HAVING value >= {min_repeats:UInt32}
)

-- rollup: session_turns
-- description: One row per counted LLM call with a session id that started in [from, to) (whole hours): its session, start and input tokens, as the context_growth panel numbers a session's turns.
INSERT INTO session_turns (session_id, start_time, span_id, input_tokens, computed_at)
SELECT session_id, start_time, span_id, input_tokens, now64(3)
FROM spans
WHERE start_time >= {from:DateTime64(3, 'UTC')} AND start_time < {to:DateTime64(3, 'UTC')}
  AND session_id != '' AND counted = 1 AND operation IN ('chat', 'text_completion', 'generate_content')

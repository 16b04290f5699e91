-- 0014: what the raw-span alert rules read, so that an evaluation costs the window's calls, not the
-- window's spans with their attribute maps. At ~1,000 spans/s one agent_loop evaluation over
-- `spans` took 1.2 s; context_bloat read an hour of spans every 5 s.
--
-- recent_calls: one narrow row per counted LLM call and per tool call (the attribute map left
-- behind: input_hash is the one key the rules need), sorted by start time, so a window reads only
-- itself. Rows more than two hours old at insert (an import of history) are not kept: the rules
-- look back 10 minutes at most. Read by agent_loop and run_size_rate.
CREATE TABLE IF NOT EXISTS {db}.recent_calls
(
    start_time   DateTime64(9, 'UTC'),
    trace_id     String,
    session      String,
    tenant       LowCardinality(String),
    kind         LowCardinality(String),
    target       LowCardinality(String),
    input_hash   String,
    tokens       UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(start_time)
ORDER BY start_time
TTL toDateTime(start_time) + INTERVAL 1 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.recent_calls_mv TO {db}.recent_calls AS
SELECT
    s.start_time AS start_time,
    s.trace_id AS trace_id,
    if(s.session_id != '', s.session_id, s.trace_id) AS session,
    s.tenant AS tenant,
    multiIf(s.operation = 'execute_tool', 'tool',
            s.operation IN ('chat', 'text_completion', 'generate_content'), 'llm_input', 'embeddings') AS kind,
    if(s.operation = 'execute_tool', s.tool_name, s.model) AS target,
    s.attributes['tokenpulse.input_hash'] AS input_hash,
    s.input_tokens + s.output_tokens AS tokens
FROM {db}.spans AS s
WHERE s.start_time > now() - INTERVAL 2 HOUR
  AND (s.operation = 'execute_tool'
       OR (s.counted = 1 AND s.operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')));

-- session_inputs: per session, the input tokens of its latest 64 LLM calls (a state the merges
-- keep at 64: the smallest -start_time first) and its last call. Read by context_bloat, which
-- judges a trailing streak of rising inputs and so needs a session's last turns, not an hour of
-- every session's spans.
CREATE TABLE IF NOT EXISTS {db}.session_inputs
(
    session    String,
    tenant     SimpleAggregateFunction(max, String),
    last_call  SimpleAggregateFunction(max, DateTime64(9, 'UTC')),
    turns      AggregateFunction(groupArraySorted(64), Tuple(Int64, UInt64))
)
ENGINE = AggregatingMergeTree
ORDER BY session
TTL toDateTime(last_call) + INTERVAL 1 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.session_inputs_mv TO {db}.session_inputs AS
SELECT
    if(s.session_id != '', s.session_id, s.trace_id) AS session,
    max(s.tenant) AS tenant,
    max(s.start_time) AS last_call,
    groupArraySortedState(64)(tuple(-toInt64(toUnixTimestamp64Nano(s.start_time)), s.input_tokens)) AS turns
FROM {db}.spans AS s
WHERE s.counted = 1 AND s.operation IN ('chat', 'text_completion', 'generate_content') AND s.input_tokens > 0
GROUP BY session

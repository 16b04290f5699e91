-- 0002: trace-level attribution, resolved at query time.
-- Spans that arrive before the tagged span of their trace (children usually end,
-- and are exported, before their root) are stored with the tags known then.
-- trace_tags keeps each trace's tags; spans_attributed fills a span's empty or
-- 'unattributed' dimensions from them, preferring the root span's values.
CREATE TABLE IF NOT EXISTS {db}.trace_tags
(
    trace_id    String,
    is_root     UInt8,
    start_time  DateTime64(9, 'UTC'),
    tenant      LowCardinality(String),
    feature     LowCardinality(String),
    user_id     String,
    session_id  String,
    route       LowCardinality(String),
    environment LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(start_time)
ORDER BY (trace_id, is_root, tenant, feature, user_id, session_id, route, environment)
TTL toDateTime(start_time) + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trace_tags_mv TO {db}.trace_tags AS
SELECT
    trace_id,
    toUInt8(parent_span_id = '') AS is_root,
    start_time,
    if(tenant = 'unattributed', '', tenant) AS tenant,
    if(feature = 'unattributed', '', feature) AS feature,
    user_id, session_id, route, environment
FROM {db}.spans
WHERE tenant != 'unattributed' OR feature != 'unattributed' OR user_id != '' OR session_id != ''
   OR route != '' OR environment != '';

-- Agent spans (spans that name an agent) with their interval: a span whose own
-- agent_role is empty takes the role of the innermost agent span of its trace
-- whose interval contains it (children are exported before their agent span).
CREATE TABLE IF NOT EXISTS {db}.agent_spans
(
    trace_id    String,
    span_id     String,
    start_time  DateTime64(9, 'UTC'),
    end_time    DateTime64(9, 'UTC'),
    agent_role  LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(start_time)
ORDER BY (trace_id, span_id)
TTL toDateTime(start_time) + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.agent_spans_mv TO {db}.agent_spans AS
SELECT trace_id, span_id, start_time, end_time, agent_role
FROM {db}.spans
WHERE agent_name != '' AND agent_role != '';

CREATE VIEW IF NOT EXISTS {db}.spans_attributed AS
SELECT s.* REPLACE (
    if(s.tenant = 'unattributed' AND t.tenant != '', t.tenant, s.tenant) AS tenant,
    if(s.feature = 'unattributed' AND t.feature != '', t.feature, s.feature) AS feature,
    if(s.user_id = '', t.user_id, s.user_id) AS user_id,
    if(s.session_id = '', t.session_id, s.session_id) AS session_id,
    if(s.route = '', t.route, s.route) AS route,
    if(s.environment = '', t.environment, s.environment) AS environment,
    if(s.agent_role != '', s.agent_role,
       arraySort(x -> -toUnixTimestamp64Nano(x.1),
                 arrayFilter(x -> x.1 <= s.start_time AND x.2 >= s.end_time, a.agents))[1].3) AS agent_role
)
FROM {db}.spans AS s
LEFT JOIN
(
    SELECT
        trace_id,
        argMaxIf(tenant, is_root, tenant != '') AS tenant,
        argMaxIf(feature, is_root, feature != '') AS feature,
        argMaxIf(user_id, is_root, user_id != '') AS user_id,
        argMaxIf(session_id, is_root, session_id != '') AS session_id,
        argMaxIf(route, is_root, route != '') AS route,
        argMaxIf(environment, is_root, environment != '') AS environment
    FROM {db}.trace_tags
    GROUP BY trace_id
) AS t ON s.trace_id = t.trace_id
LEFT JOIN
(
    SELECT trace_id, groupArray((start_time, end_time, agent_role)) AS agents
    FROM {db}.agent_spans
    GROUP BY trace_id
) AS a ON s.trace_id = a.trace_id;

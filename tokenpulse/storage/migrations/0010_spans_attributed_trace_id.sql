-- 0010: spans_attributed named its trace id column `s.trace_id` (the joins made the bare name
-- ambiguous), so `WHERE trace_id = ...` failed on the view. The same view, with the column named
-- trace_id as in spans.
DROP VIEW IF EXISTS {db}.spans_attributed;

CREATE VIEW IF NOT EXISTS {db}.spans_attributed AS
SELECT s.* REPLACE (
    s.trace_id AS trace_id,
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

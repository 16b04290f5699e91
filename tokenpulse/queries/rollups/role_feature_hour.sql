-- rollup: role_feature_hour
-- description: Tokens of counted LLM calls per hour, feature and agent role (resolved as in the io_ratio panel), per tenant and for all tenants (tenant = ''), for calls that started in [from, to) (whole hours).
INSERT INTO role_feature_hour (tenant, hour, feature, role, operation, input_tokens, output_tokens, calls, computed_at)
WITH agents AS (
    SELECT trace_id, groupArray((start_time, end_time, agent_role)) AS spans
    FROM agent_spans
    WHERE end_time >= {from:DateTime64(3, 'UTC')}
    GROUP BY trace_id
),
resolved AS (
    SELECT
        c.tenant AS tenant,
        toStartOfHour(c.start_time) AS hour,
        c.feature AS feature,
        if(c.agent_role != '', c.agent_role,
           ifNull(nullIf(arraySort(x -> -toUnixTimestamp64Nano(x.1),
                                   arrayFilter(x -> x.1 <= c.start_time AND x.2 >= c.end_time, a.spans))[1].3, ''),
                  '(none)')) AS role,
        c.operation AS operation,
        c.input_tokens AS input_tokens,
        c.output_tokens AS output_tokens
    FROM spans AS c
    LEFT JOIN agents AS a ON c.trace_id = a.trace_id
    WHERE c.start_time >= {from:DateTime64(3, 'UTC')} AND c.start_time < {to:DateTime64(3, 'UTC')}
      AND c.counted = 1
      AND c.operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')
)
SELECT tenant, hour, feature, role, operation, sum(input_tokens), sum(output_tokens), count(), now64(3)
FROM resolved
GROUP BY GROUPING SETS ((tenant, hour, feature, role, operation), (hour, feature, role, operation))

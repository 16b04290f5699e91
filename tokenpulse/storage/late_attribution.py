"""Late attribution reaches the rollups that alerts and budgets read.

Children usually end, and are exported, before their root: they are stored as ``unattributed``
(tenant or feature) and the per-minute rollup ``usage_minute`` sums them there, while the
``spans_attributed`` view resolves them from the trace's tags once the root has arrived. Budgets,
tenant outliers and the rate rules read ``usage_minute``, so they would never see that spend.

When the attributor sees the root span of a trace whose counted calls it stored unattributed, the
receiver offers the trace here once the root is stored. Every ``interval_s`` this thread moves
those calls in ``usage_minute`` with one ``INSERT ... SELECT``: computed from what ``spans`` and
``trace_tags`` hold (never from memory), a row with the counts negated under the key the calls
were stored with and a row under the key the view resolves (the root's tags first, as in
``spans_attributed``). The SummingMergeTree adds them up (migration 0009 made its counts signed).

Each trace is moved once (remembered, bounded): a retried root offers it again and is ignored.
Not spooled: if storage is down the ids wait here (bounded, oldest dropped and counted) and are
moved when it is back; a crash forgets them, and those traces stay ``unattributed`` in the rollup
(the view and ``spans`` are unaffected).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from tokenpulse.metrics import Metrics
from tokenpulse.storage.backend import Backend

log = logging.getLogger(__name__)

# The calls usage_minute sums: the same list as its view's WHERE (migration 0003).
INFERENCE = "('chat', 'text_completion', 'generate_content', 'embeddings')"
COUNTS = ("calls", "errors", "unpriced_calls", "no_usage_calls", "input_tokens", "output_tokens", "cache_read_tokens",
          "cache_write_tokens", "reasoning_tokens", "unpriced_tokens")
MOVE_SQL = """
INSERT INTO {db}.usage_minute
    (minute, tenant, feature, model, provider, agent_role, service, environment, {counts}, cost_usd)
SELECT minute, k.2, k.3, model, provider, agent_role, service, environment, {signed}, k.1 * cost_usd
FROM
(
    SELECT toStartOfMinute(s.start_time) AS minute, s.tenant AS old_tenant, s.feature AS old_feature,
           if(s.tenant = 'unattributed' AND t.tenant != '', t.tenant, s.tenant) AS new_tenant,
           if(s.feature = 'unattributed' AND t.feature != '', t.feature, s.feature) AS new_feature,
           s.model AS model, s.provider AS provider, s.agent_role AS agent_role, s.service AS service,
           s.environment AS environment,
           toInt64(count()) AS calls,
           toInt64(countIf(s.status_code = 'error')) AS errors,
           toInt64(countIf(s.price_status = 'unknown_model')) AS unpriced_calls,
           toInt64(countIf(s.usage_status = 'missing')) AS no_usage_calls,
           toInt64(sum(s.input_tokens)) AS input_tokens,
           toInt64(sum(s.output_tokens)) AS output_tokens,
           toInt64(sum(s.cache_read_tokens)) AS cache_read_tokens,
           toInt64(sum(s.cache_write_tokens)) AS cache_write_tokens,
           toInt64(sum(s.reasoning_tokens)) AS reasoning_tokens,
           toInt64(sumIf(s.input_tokens + s.output_tokens, s.price_status = 'unknown_model')) AS unpriced_tokens,
           sum(ifNull(s.cost_usd, 0)) AS cost_usd
    FROM {db}.spans AS s
    INNER JOIN
    (
        SELECT trace_id, argMaxIf(tenant, is_root, tenant != '') AS tenant,
               argMaxIf(feature, is_root, feature != '') AS feature, min(start_time) AS first_start
        FROM {db}.trace_tags WHERE trace_id IN ({ids}) GROUP BY trace_id
    ) AS t ON s.trace_id = t.trace_id
    WHERE s.trace_id IN ({ids}) AND s.counted = 1 AND s.operation IN {inference}
      AND s.start_time >= {lo} AND s.start_time <= {hi}
      AND ((s.tenant = 'unattributed' AND t.tenant != '') OR (s.feature = 'unattributed' AND t.feature != ''))
    GROUP BY minute, old_tenant, old_feature, new_tenant, new_feature, model, provider, agent_role, service,
             environment
)
ARRAY JOIN [(toInt64(-1), old_tenant, old_feature), (toInt64(1), new_tenant, new_feature)] AS k
"""


def move_sql(db: str, traces: list[tuple[str, int]]) -> str:
    """The move for these (trace id, a start time of the trace in ns): its spans are looked for
    within a day either side, so the scan stays in a few partitions."""
    ids = ",".join(f"'{t}'" for t, _ in traces if len(t) == 32 and t.isalnum())  # hex from the decoder
    lo = min(ns for _, ns in traces) - 86_400 * 10**9
    hi = max(ns for _, ns in traces) + 86_400 * 10**9
    return MOVE_SQL.format(db=db, counts=", ".join(COUNTS), signed=", ".join(f"k.1 * {c}" for c in COUNTS),
                           ids=ids, inference=INFERENCE, lo=f"fromUnixTimestamp64Nano({lo})",
                           hi=f"fromUnixTimestamp64Nano({hi})")


class LateAttribution:
    def __init__(self, backend: Backend, database: str, metrics: Metrics | None = None, interval_s: float = 1.0,
                 max_pending: int = 100_000, max_chunk: int = 1000):
        self.backend, self.database, self.metrics = backend, database, metrics
        self.interval_s, self.max_pending, self.max_chunk = interval_s, max_pending, max_chunk
        self._pending: OrderedDict[str, int] = OrderedDict()  # trace id -> a start time (ns)
        self._moved: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="late-attribution", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.flush()

    def offer(self, traces: list[tuple[str, int]]) -> None:
        with self._lock:
            for trace, start in traces:
                if trace in self._moved or trace in self._pending:
                    continue
                self._pending[trace] = start
                if len(self._pending) > self.max_pending:
                    self._pending.popitem(last=False)
                    if self.metrics:
                        self.metrics.late_attribution.labels("dropped").inc()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def flush(self) -> int:
        """Move what is pending; returns the traces moved. On a storage error they wait for the next tick."""
        with self._lock:
            todo = list(self._pending.items())
        done = 0
        for i in range(0, len(todo), self.max_chunk):
            chunk = todo[i:i + self.max_chunk]
            try:
                self.backend.command(move_sql(self.database, chunk))
            except Exception as e:  # storage trouble: keep them for the next tick
                log.warning("late attribution of %d traces failed, retrying: %s", len(chunk), e)
                if self.metrics:
                    self.metrics.late_attribution.labels("failed").inc(len(chunk))
                break
            with self._lock:
                for trace, _ in chunk:
                    self._pending.pop(trace, None)
                    self._moved[trace] = None
                    if len(self._moved) > self.max_pending:
                        self._moved.popitem(last=False)
            done += len(chunk)
            if self.metrics:
                self.metrics.late_attribution.labels("moved").inc(len(chunk))
        return done

"""Re-price stored spans with the price table in force, and make every rollup agree.

``tokenpulse prices reprice --since 7d [--until 1h] [--model M] [--provider P] [--tenant T] [--dry-run]``
(``POST /api/prices/reprice``). For the counted calls with usage in the range, stored before the
run started, the cost is computed again with the same code as ingest (``PriceTable.price`` and
``compute_cost``; the stored service tier, 1-hour cache writes and ``server.address``). Then, for
the spans whose cost, status or price entry changed:

1. the rollups fed by materialized views (``usage_minute``, ``user_minute``, ``runs``,
   ``sessions``) get one row per changed span holding only the cost difference (counts 0, times
   and maxima neutral), so their sums move from the old cost to the new one; ``usage_minute``'s
   row goes under the tenant and feature the trace resolves to, where late attribution moved it;
2. ``spans`` is updated in place by one mutation (``ALTER TABLE ... UPDATE``, waited for), keyed
   by (tenant, trace id, span id) through a Join table: a mutation does not fire the views, so
   nothing is counted twice;
3. the scheduled rollups (``run_summary``, ``user_hour``) re-run the hours below their watermark;
4. a row in ``reprice_audit`` records who, when, what and the totals before and after.

Spans that arrive while it runs are priced at ingest by the table in force and are left alone (the
run reads only rows ingested before it started). On a ClickHouse cluster it refuses: a mutation
there would need the Join table on every node (not done yet).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from tokenpulse.enrich.price import PriceTable, compute_cost
from tokenpulse.errors import ConfigError
from tokenpulse.storage.backend import Backend
from tokenpulse.storage.rollups import HOUR, RollupJob

log = logging.getLogger(__name__)

COST_COLUMNS = ("cost_usd", "input_cost_usd", "cache_read_cost_usd", "cache_write_cost_usd", "output_cost_usd",
                "reasoning_cost_usd", "request_cost_usd")
READ = ("tenant", "trace_id", "span_id", "toUnixTimestamp64Nano(start_time)", "toUnixTimestamp64Nano(end_time)",
        "model", "provider", "attributes['server.address']", "service_tier", "input_tokens", "output_tokens",
        "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens", "price_status",
        "price_id", *COST_COLUMNS, "feature", "agent_role", "service", "environment", "user_id", "session_id",
        "operation")
SESSION_OPERATIONS = ("chat", "text_completion", "generate_content")
INFERENCE = "('chat', 'text_completion', 'generate_content', 'embeddings')"  # usage_minute's and user_minute's views
# The changed spans, staged in ClickHouse for the update and the rollup differences: name -> (Arrow, ClickHouse)
STAGE_COLUMNS = {
    **{k: (pa.string(), "String") for k in ("tenant", "trace_id", "span_id")},
    "start_ns": (pa.int64(), "Int64"), "end_ns": (pa.int64(), "Int64"),
    **{k: (pa.string(), "String") for k in ("model", "provider", "feature", "agent_role", "service", "environment",
                                            "user_id", "session_id", "operation")},
    "delta": (pa.float64(), "Float64"), "unpriced_calls": (pa.int64(), "Int64"),
    "unpriced_tokens": (pa.int64(), "Int64"),
    **{k: (pa.float64(), "Nullable(Float64)") for k in COST_COLUMNS},
    "price_status": (pa.string(), "String"), "price_id": (pa.string(), "String"),
}
FAR_PAST, FAR_FUTURE = "1970-01-02 00:00:00", "2200-01-01 00:00:00"


@dataclass(frozen=True)
class RepriceRequest:
    since_s: float  # Unix seconds
    until_s: float
    model: str = ""
    provider: str = ""
    tenant: str = ""
    dry_run: bool = False
    actor: str = "operator"


@dataclass
class RepriceReport:
    spans_checked: int = 0
    spans_changed: int = 0
    cost_before: float = 0.0
    cost_after: float = 0.0
    by_model: dict[str, list] = field(default_factory=dict)  # model -> [changed, before, after]
    dry_run: bool = False
    rollup_hours_rebuilt: int = 0

    def as_json(self) -> dict:
        return {"spans_checked": self.spans_checked, "spans_changed": self.spans_changed,
                "cost_before_usd": self.cost_before, "cost_after_usd": self.cost_after, "dry_run": self.dry_run,
                "rollup_hours_rebuilt": self.rollup_hours_rebuilt,
                "by_model": [{"model": m, "spans_changed": v[0], "cost_before_usd": v[1], "cost_after_usd": v[2]}
                             for m, v in sorted(self.by_model.items(), key=lambda kv: -abs(kv[1][2] - kv[1][1]))]}


def _ts(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _differs(a, b) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return not math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


class Repricer:
    def __init__(self, backend: Backend, database: str, cluster: str = ""):
        self.backend = backend
        self.db = database
        self.cluster = cluster
        self._lock = threading.Lock()

    def run(self, table: PriceTable, req: RepriceRequest) -> RepriceReport:
        if self.cluster:
            raise ConfigError("prices reprice does not run on a ClickHouse cluster yet (its update would need a "
                              "Join table on every node); re-price on each shard's node, or open an issue")
        if req.until_s <= req.since_s:
            raise ConfigError("reprice: --until must be after --since")
        if not self._lock.acquire(blocking=False):
            raise ConfigError("another reprice is running; try again when it is done")
        try:
            return self._run(table, req)
        finally:
            self._lock.release()

    def _rows(self, req: RepriceRequest, started: str) -> list[list]:
        raw = self.backend.query(
            f"SELECT {', '.join(READ)} FROM {self.db}.spans FINAL "
            "WHERE start_time >= {since:DateTime64(6, 'UTC')} AND start_time < {until:DateTime64(6, 'UTC')} "
            "AND ingested_at <= {started:DateTime64(6, 'UTC')} AND counted = 1 AND model != '' "
            "AND usage_status IN ('ok', 'inconsistent') "
            "AND ({model:String} = '' OR model = {model:String}) "
            "AND ({provider:String} = '' OR provider = {provider:String}) "
            "AND ({tenant:String} = '' OR tenant = {tenant:String})",
            "JSONCompact", readonly=True,
            params={"since": _ts(req.since_s), "until": _ts(req.until_s), "started": started, "model": req.model,
                    "provider": req.provider, "tenant": req.tenant})
        return json.loads(raw)["data"]

    def _run(self, table: PriceTable, req: RepriceRequest) -> RepriceReport:
        started = _ts(time.time())
        report = RepriceReport(dry_run=req.dry_run)
        changed = []  # (row, new values)
        n = len(COST_COLUMNS)
        for row in self._rows(req, started):
            report.spans_checked += 1
            (tenant, trace_id, span_id, start_ns, end_ns, model, provider, host, tier, inp, out, cr, cw, cw1h, rs,
             status, price_id) = row[:17]
            old = row[17:17 + n]
            at = datetime.fromtimestamp(int(start_ns) / 1e9, tz=timezone.utc)
            got = table.price(provider, model, at, tier, host)
            if got is None:
                new = (None,) * n
                new_status, new_id = "unknown_model", ""
            else:
                c = compute_cost(got.entry, int(inp), int(out), int(cr), int(cw), int(rs), int(cw1h))
                new = (c.total, c.input, c.cache_read, c.cache_write, c.output, c.reasoning, c.request)
                new_status, new_id = got.status, got.entry.id
            if new_status == status and new_id == price_id and not any(_differs(a, b) for a, b in zip(old, new)):
                continue
            changed.append((row, new, new_status, new_id))
            before, after = old[0] or 0.0, new[0] or 0.0
            report.spans_changed += 1
            report.cost_before += before
            report.cost_after += after
            m = report.by_model.setdefault(model, [0, 0.0, 0.0])
            m[0], m[1], m[2] = m[0] + 1, m[1] + before, m[2] + after
        if changed and not req.dry_run:
            report.rollup_hours_rebuilt = self._apply(changed)
        if not req.dry_run:
            self._audit(req, report)
        log.warning("reprice by %s (%s .. %s%s): %d of %d spans changed, $%.6f -> $%.6f%s", req.actor,
                    _ts(req.since_s), _ts(req.until_s),
                    "".join(f", {k} {v}" for k, v in (("model", req.model), ("provider", req.provider),
                                                      ("tenant", req.tenant)) if v),
                    report.spans_changed, report.spans_checked, report.cost_before, report.cost_after,
                    " (dry run: nothing written)" if req.dry_run else "")
        return report

    def _apply(self, changed: list) -> int:
        tag = uuid.uuid4().hex[:12]
        join, stage = f"{self.db}.reprice_{tag}", f"{self.db}.reprice_stage_{tag}"
        nc = len(COST_COLUMNS)
        cols: dict[str, list] = {k: [] for k in STAGE_COLUMNS}
        for row, new, status, pid in changed:
            (tenant, trace_id, span_id, start_ns, end_ns, model, provider, _host, _tier, inp, out) = row[:11]
            feature, role, service, env, user, session, operation = row[17 + nc:]
            old_unknown, new_unknown = row[15] == "unknown_model", status == "unknown_model"
            for k, v in (("tenant", tenant), ("trace_id", trace_id), ("span_id", span_id),
                         ("start_ns", int(start_ns)), ("end_ns", int(end_ns)), ("model", model),
                         ("provider", provider), ("feature", feature), ("agent_role", role), ("service", service),
                         ("environment", env), ("user_id", user), ("session_id", session), ("operation", operation),
                         ("delta", (new[0] or 0.0) - (row[17] or 0.0)),
                         ("unpriced_calls", int(new_unknown) - int(old_unknown)),
                         ("unpriced_tokens", (int(new_unknown) - int(old_unknown)) * (int(inp) + int(out))),
                         ("price_status", status), ("price_id", pid)):
                cols[k].append(v)
            for c, v in zip(COST_COLUMNS, new):
                cols[c].append(v)
        arrow = pa.table({k: pa.array(v, STAGE_COLUMNS[k][0]) for k, v in cols.items()})
        self.backend.command(
            f"CREATE TABLE {stage} (" + ", ".join(f"{k} {t[1]}" for k, t in STAGE_COLUMNS.items())
            + ") ENGINE = MergeTree ORDER BY (tenant, trace_id, span_id)")
        self.backend.command(
            f"CREATE TABLE {join} (tenant String, trace_id String, span_id String, "
            + ", ".join(f"{c} Nullable(Float64)" for c in COST_COLUMNS)
            + ", price_status String, price_id String) ENGINE = Join(ANY, LEFT, tenant, trace_id, span_id)")
        try:
            self.backend.insert_arrow(stage, arrow)
            self.backend.command(f"INSERT INTO {join} SELECT tenant, trace_id, span_id, {', '.join(COST_COLUMNS)}, "
                                 f"price_status, price_id FROM {stage}")
            self._deltas(stage)
            sets = ", ".join(f"{c} = joinGet('{join}', '{c}', tenant, trace_id, span_id)"
                             for c in (*COST_COLUMNS, "price_status", "price_id"))
            self.backend.command(f"ALTER TABLE {self.db}.spans UPDATE {sets} WHERE (tenant, trace_id, span_id) IN "
                                 f"(SELECT tenant, trace_id, span_id FROM {stage}) SETTINGS mutations_sync = 2")
        finally:
            self.backend.command(f"DROP TABLE IF EXISTS {join}")
            self.backend.command(f"DROP TABLE IF EXISTS {stage}")
        return self._rebuild_scheduled(changed)

    def _deltas(self, stage: str) -> None:
        """Difference rows for the view-fed rollups, each filtered as its view is (written before
        the update of spans: a failure in between is undone by re-running with the old table)."""
        db, q = self.db, self.backend.command
        # usage_minute: under the key the trace resolves to (late attribution moved unattributed calls there)
        q(f"INSERT INTO {db}.usage_minute (minute, tenant, feature, model, provider, agent_role, service, environment, "
          "unpriced_calls, unpriced_tokens, cost_usd) "
          "SELECT toStartOfMinute(fromUnixTimestamp64Nano(x.start_ns)), "
          "if(x.tenant = 'unattributed' AND t.tenant != '', t.tenant, x.tenant), "
          "if(x.feature = 'unattributed' AND t.feature != '', t.feature, x.feature), "
          "x.model, x.provider, x.agent_role, x.service, x.environment, x.unpriced_calls, x.unpriced_tokens, x.delta "
          f"FROM {stage} AS x LEFT JOIN (SELECT trace_id, argMaxIf(tenant, is_root, tenant != '') AS tenant, "
          f"argMaxIf(feature, is_root, feature != '') AS feature FROM {db}.trace_tags GROUP BY trace_id) AS t "
          f"ON x.trace_id = t.trace_id WHERE x.operation IN {INFERENCE}")
        q(f"INSERT INTO {db}.user_minute (minute, tenant, user_id, calls, tokens, cost_usd) "
          "SELECT toStartOfMinute(fromUnixTimestamp64Nano(start_ns)) AS m, tenant, user_id, 0, 0, sum(delta) "
          f"FROM {stage} WHERE user_id != '' AND operation IN {INFERENCE} GROUP BY m, tenant, user_id")
        q(f"INSERT INTO {db}.runs (trace_id, start_time, end_time, llm_calls, tool_calls, input_tokens, output_tokens, "
          "cost_usd, root_seen, root_error, outcome_success, outcome_failure, tenant, feature, session_id, service) "
          "SELECT trace_id, min(fromUnixTimestamp64Nano(start_ns)), max(fromUnixTimestamp64Nano(end_ns)), 0, 0, 0, 0, "
          f"sum(delta), 0, 0, 0, 0, '', '', '', '' FROM {stage} GROUP BY trace_id")
        q(f"INSERT INTO {db}.sessions SELECT session_id, min(fromUnixTimestamp64Nano(start_ns)), "
          "max(fromUnixTimestamp64Nano(end_ns)), 0, 0, 0, sum(delta), 0, "
          f"argMinState(toUInt64(0), toDateTime64('{FAR_FUTURE}', 9, 'UTC')), "
          f"argMaxState(toUInt64(0), toDateTime64('{FAR_PAST}', 9, 'UTC')), '' "
          f"FROM {stage} WHERE session_id != '' AND operation IN {SESSION_OPERATIONS!r} GROUP BY session_id")

    def _rebuild_scheduled(self, changed: list) -> int:
        hours = sorted({int(row[3]) // 1_000_000_000 // HOUR * HOUR for row, *_ in changed})
        job = RollupJob(self.backend)
        n = 0
        for r in job.rollups:
            mark = job.watermark(r.name)
            for h in hours:
                if mark is not None and h + HOUR <= mark:  # rolled up already: compute that hour again
                    self.backend.query(r.sql, "TSV", readonly=False, params={"from": _ts(h)[:-3], "to": _ts(h + HOUR)[:-3]})
                    n += 1
        return n

    def _audit(self, req: RepriceRequest, report: RepriceReport) -> None:
        self.backend.query(
            f"INSERT INTO {self.db}.reprice_audit (at, actor, since, until, model, provider, tenant, spans_checked, "
            "spans_changed, cost_before_usd, cost_after_usd, summary) VALUES (now64(3), {actor:String}, "
            "{since:DateTime64(6, 'UTC')}, {until:DateTime64(6, 'UTC')}, {model:String}, {provider:String}, "
            "{tenant:String}, {checked:UInt64}, {changed:UInt64}, {before:Float64}, {after:Float64}, {summary:String})",
            "TSV", readonly=False,
            params={"actor": req.actor, "since": _ts(req.since_s), "until": _ts(req.until_s), "model": req.model,
                    "provider": req.provider, "tenant": req.tenant, "checked": report.spans_checked,
                    "changed": report.spans_changed, "before": report.cost_before, "after": report.cost_after,
                    "summary": json.dumps(report.as_json()["by_model"])})



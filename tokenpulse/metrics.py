"""tokenpulse's own metrics, served on the admin port at /metrics (Prometheus text).

One registry per service instance, so several services in one process (tests)
never share counters.
"""

from __future__ import annotations

import gc
import time

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily

# The *_created series double the output and no dashboard here reads them.
disable_created_metrics()

MAX_MODEL_LABELS = 50  # distinct `model` label values before the rest are counted as "_other"
_TOKEN_TYPES = (("input", "input_tokens"), ("output", "output_tokens"), ("cache_read", "cache_read_tokens"),
                ("cache_write", "cache_write_tokens"), ("reasoning", "reasoning_tokens"))
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


# Seconds the cyclic garbage collector has paused this process, per generation. Every Python
# thread stops while it runs (it holds the GIL), so on the decode thread it is part of each span's
# cost; the enrichment memories hold most of what a full collection walks.
_GC_PAUSED = [0.0, 0.0, 0.0]
_GC_STARTED = [0.0]


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _GC_STARTED[0] = time.perf_counter()
    else:
        _GC_PAUSED[info["generation"]] += time.perf_counter() - _GC_STARTED[0]


gc.callbacks.append(_on_gc)


class _GCPauses:
    def describe(self):
        return self.collect()

    def collect(self):
        family = CounterMetricFamily("tokenpulse_gc_pause_seconds", "Time the Python garbage collector paused "
                                     "every thread of this process, by generation", labels=["generation"])
        for generation, seconds in enumerate(_GC_PAUSED):
            family.add_metric([str(generation)], seconds)
        yield family


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        r.register(_GCPauses())  # tokenpulse_gc_pause_seconds_total{generation}
        self.requests = Counter(
            "tokenpulse_export_requests", "OTLP Export requests by transport and outcome "
            "(ok, partial, invalid, too_large, unsupported, retry)", ["transport", "outcome"], registry=r)
        self.requests_shed = Counter(
            "tokenpulse_requests_shed", "Export requests answered retry before decoding because max_inflight_bytes "
            "of requests were already in progress", ["transport"], registry=r)
        self.spans_received = Counter(
            "tokenpulse_spans_received", "Spans decoded from Export requests", ["transport"], registry=r)
        self.spans_rejected = Counter(
            "tokenpulse_spans_rejected", "Spans refused and reported to the client as partial success, by "
            "reason: invalid_span (bad ids or fields), expired (older than retention), future (starts over a day ahead), missing_tags "
            "(tag-or-reject), too_many_spans (request limit)", ["transport", "reason"], registry=r)
        self.attributes_limited = Counter(
            "tokenpulse_attributes_limited", "Attributes cut by the request limits: dropped (too many on a span "
            "or resource) or truncated (value too long)", ["kind"], registry=r)
        self.tenant_overridden = Counter(
            "tokenpulse_tenant_overridden_spans", "Spans whose own tenant attribute was replaced by the tenant of "
            "the API key that sent them", registry=r)
        self.spans_stored = Counter(
            "tokenpulse_spans_stored", "Spans written to ClickHouse", registry=r)
        self.spans_duplicate = Counter(
            "tokenpulse_spans_duplicate", "Spans skipped because the same (trace_id, span_id) "
            "was stored within the dedup window (exporter retries)", registry=r)
        self.spans_refused_retry = Counter(
            "tokenpulse_spans_retry_asked", "Spans answered with a retryable code (queue full, "
            "storage failing, ack timeout)", ["reason"], registry=r)
        self.write_errors = Counter(
            "tokenpulse_storage_write_errors", "Failed inserts by class (retryable, data)", ["kind"], registry=r)
        self.inserts = Histogram(
            "tokenpulse_storage_insert_seconds", "Duration of one batched insert", buckets=_LATENCY_BUCKETS,
            registry=r)
        self.insert_rows = Histogram(
            "tokenpulse_storage_insert_rows", "Spans per batched insert",
            buckets=(100, 500, 1000, 5000, 10000, 25000, 50000, 100000), registry=r)
        self.export_latency = Histogram(
            "tokenpulse_export_seconds", "Export request latency, receipt to answer (includes the durable write)",
            ["transport"], buckets=_LATENCY_BUCKETS, registry=r)
        self.unknown_model = Counter(
            "tokenpulse_unknown_model_spans", "Counted spans with usage whose model has no price (cost left NULL), by "
            f"model (at most {MAX_MODEL_LABELS} values, the rest as _other)", ["model"], registry=r)
        self.late_attribution = Counter(
            "tokenpulse_late_attribution_traces", "Traces whose calls stored unattributed were moved in usage_minute "
            "to their root's tenant and feature (moved), could not be moved yet (failed: retried), or were given "
            "up (dropped: over the pending bound)", ["outcome"], registry=r)
        self.excluded = Counter(
            "tokenpulse_excluded_spans", "LLM spans stored but not counted in sums, by rule: duplicate_of (another "
            "span reports the same call), aggregate (a sum of calls counted on their own spans), not_inference "
            "(usage on a span that is no LLM call); the reported numbers stay in attributes", ["reason"], registry=r)
        self.tokens = Counter(
            "tokenpulse_tokens", "Tokens of counted LLM calls stored, by token type and model (at most "
            f"{MAX_MODEL_LABELS} model values; later ones are counted as _other)", ["type", "model"], registry=r)
        self.cost = Counter(
            "tokenpulse_cost_usd", "Computed cost (USD) of counted LLM calls stored, by model (same bound)",
            ["model"], registry=r)
        self._models: set[str] = set()
        self.queue_spans = Gauge("tokenpulse_queue_spans", "Spans waiting to be written", registry=r)
        self.queue_capacity = Gauge("tokenpulse_queue_capacity_spans", "Writer queue bound", registry=r)
        self.storage_up = Gauge(
            "tokenpulse_storage_up", "1 when the last insert succeeded, 0 while storage is failing", registry=r)
        self.dedup_keys = Gauge("tokenpulse_dedup_keys", "Span keys held for retry dedup", registry=r)
        self.spans_spooled = Counter(
            "tokenpulse_spans_spooled", "Spans acknowledged from the on-disk spool while storage failed", registry=r)
        self.spans_replayed = Counter(
            "tokenpulse_spans_replayed", "Spooled spans inserted into storage afterwards", registry=r)
        self.spool_refused = Counter(
            "tokenpulse_spool_refused_spans", "Spans answered retry because storage failed and the spool was full",
            registry=r)
        self.spans_dead_lettered = Counter(
            "tokenpulse_spans_dead_lettered", "Acknowledged spooled spans set aside in a refused-*.arrow file, by "
            "reason: refused (storage called them invalid), retries_exhausted (they kept failing while storage "
            "answered)", ["reason"], registry=r)
        self.spool_append_errors = Counter(
            "tokenpulse_spool_append_errors", "Spool appends that failed (disk full, I/O error) and were undone; "
            "their requests were answered retry", registry=r)
        self.price_reloads = Counter(
            "tokenpulse_price_reloads", "Price file reloads by outcome: ok, failed (the prices in force were kept)",
            ["outcome"], registry=r)
        self.worker_restarts = Counter(
            "tokenpulse_worker_restarts", "Background workers restarted after an unexpected error", ["worker"],
            registry=r)
        self.spool_records = Gauge("tokenpulse_spool_records", "Batches waiting in the spool", registry=r)
        self.spool_bytes = Gauge("tokenpulse_spool_bytes", "Bytes waiting in the spool", registry=r)
        self.alert_evaluations = Counter(
            "tokenpulse_alert_evaluations", "Alert rule evaluations that ran", ["rule"], registry=r)
        self.alert_evaluation_failures = Counter(
            "tokenpulse_alert_evaluation_failures", "Alert rule evaluations that failed (bad rule, storage down)",
            ["rule"], registry=r)
        self.alert_evaluation_seconds = Histogram(
            "tokenpulse_alert_evaluation_seconds", "Duration of one rule evaluation (query + state machine)",
            ["rule"], buckets=_LATENCY_BUCKETS, registry=r)
        self.alert_ticks_missed = Counter(
            "tokenpulse_alert_ticks_missed", "Interval-aligned evaluation ticks skipped because an evaluation "
            "ran late", ["rule"], registry=r)
        self.alert_notifications = Counter(
            "tokenpulse_alert_notifications", "Notifications sent, by channel and result: ok, failed (re-sent later), "
            "refused (a 4xx other than 408/429: the receiver will never take it; not re-sent)",
            ["channel", "result"], registry=r)
        self.alerts_active = Gauge(
            "tokenpulse_alerts", "Alert instances by state (pending, firing, resolved)", ["state"], registry=r)
        # forwarding (tokenpulse/forward/): one label value per configured destination
        self.forward_sent = Counter(
            "tokenpulse_forward_spans", "Enriched spans delivered downstream, by destination", ["destination"],
            registry=r)
        self.forward_dropped = Counter(
            "tokenpulse_forward_dropped_spans", "Spans not forwarded (they are stored all the same), by "
            "destination and reason: queue_full, rejected, partial, retries_exhausted, unencodable, shutdown",
            ["destination", "reason"], registry=r)
        self.forward_queue = Gauge(
            "tokenpulse_forward_queue_spans", "Spans waiting to be forwarded, by destination", ["destination"],
            registry=r)
        self.forward_retries = Counter(
            "tokenpulse_forward_retries", "Forward attempts answered retryable (or failed to connect)",
            ["destination"], registry=r)
        self.forward_seconds = Histogram(
            "tokenpulse_forward_seconds", "Duration of one forward Export call", ["destination"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.forward_up = Gauge(
            "tokenpulse_forward_up", "1 when the last forward attempt succeeded, 0 while the destination fails",
            ["destination"], registry=r)

    def model_label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) < MAX_MODEL_LABELS:
            self._models.add(model)
            return model
        return "_other"

    def count_usage(self, batch) -> None:
        """Add a stored batch's counted tokens and cost to the counters (one pass, summed per model)."""
        sums: dict[str, list[float]] = {}
        for model, counted, inp, out, cr, cw, rs, cost in zip(
                batch.model, batch.counted, batch.input_tokens, batch.output_tokens, batch.cache_read_tokens,
                batch.cache_write_tokens, batch.reasoning_tokens, batch.cost_usd):
            if not counted or not (inp or out):
                continue
            acc = sums.get(model)
            if acc is None:
                acc = sums[model] = [0, 0, 0, 0, 0, 0.0]
            acc[0] += inp
            acc[1] += out
            acc[2] += cr
            acc[3] += cw
            acc[4] += rs
            acc[5] += cost or 0.0
        for model, acc in sums.items():
            label = self.model_label(model or "(none)")
            for j, (kind, _) in enumerate(_TOKEN_TYPES):
                if acc[j]:
                    self.tokens.labels(kind, label).inc(acc[j])
            if acc[5]:
                self.cost.labels(label).inc(acc[5])

    def render(self) -> bytes:
        return generate_latest(self.registry)

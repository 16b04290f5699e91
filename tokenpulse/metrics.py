"""tokenpulse's own metrics, served on the admin port at /metrics (Prometheus text).

One registry per service instance, so several services in one process (tests)
never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

# The *_created series double the output and no dashboard here reads them.
disable_created_metrics()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tokenpulse_export_requests", "OTLP Export requests by transport and outcome "
            "(ok, partial, invalid, too_large, unsupported, retry)", ["transport", "outcome"], registry=r)
        self.spans_received = Counter(
            "tokenpulse_spans_received", "Spans decoded from Export requests", ["transport"], registry=r)
        self.spans_rejected = Counter(
            "tokenpulse_spans_rejected", "Spans refused by the receiver (invalid ids, bad fields), "
            "reported to the client as partial success", ["transport"], registry=r)
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
            "tokenpulse_unknown_model_spans", "Counted spans with usage whose model has no price (cost left NULL)",
            ["model"], registry=r)
        self.queue_spans = Gauge("tokenpulse_queue_spans", "Spans waiting to be written", registry=r)
        self.queue_capacity = Gauge("tokenpulse_queue_capacity_spans", "Writer queue bound", registry=r)
        self.storage_up = Gauge(
            "tokenpulse_storage_up", "1 when the last insert succeeded, 0 while storage is failing", registry=r)
        self.dedup_keys = Gauge("tokenpulse_dedup_keys", "Span keys held for retry dedup", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""tokenpulse's own telemetry over OTLP, with the OpenTelemetry SDK (``telemetry`` setting).

    telemetry:
      endpoint: http://otel-collector:4317   # gRPC host:port or http(s):// URL; http/protobuf: a URL
      protocol: grpc                         # grpc | http/protobuf
      headers: {authorization: Bearer ...}
      traces: true                           # one span per Export request, per insert, per rule run
      metrics: true                          # every /metrics series, every interval_s
      interval_s: 15
      service_name: tokenpulse

Metrics are the ones on ``/metrics``, read from the same Prometheus registry,
so the two views never disagree: counters become OTel cumulative sums (named
without Prometheus' ``_total``), gauges stay gauges, and histograms are sent as
their ``_count`` and ``_sum`` sums. Labels become attributes. The process
collector's CPU and memory series come along, so operators see tokenpulse's
resources beside its pipeline.

Traces use a tracer provider of the service's own (not the global one), so an
application embedding tokenpulse keeps its provider. Send them to another
backend or a Collector, not to this tokenpulse's own receiver: each export
would be traced in turn.

The SDK and its exporters are imported only when this is configured.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from tokenpulse.errors import ConfigError

log = logging.getLogger(__name__)

EXPORT_TIMEOUT_S = 3  # per export: a backend that is down must not hold up tokenpulse's own shutdown
_KEYS = {"endpoint", "protocol", "headers", "traces", "metrics", "interval_s", "service_name"}


@dataclass(frozen=True)
class TelemetryConfig:
    endpoint: str = field(repr=False)
    protocol: str = "grpc"
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    traces: bool = True
    metrics: bool = True
    interval_s: float = 15.0
    service_name: str = "tokenpulse"

    def url(self, signal: str) -> str:
        """http/protobuf: the signal's URL (/v1/traces, /v1/metrics appended to a bare endpoint)."""
        base = self.endpoint.rstrip("/")
        return base if base.endswith(f"/v1/{signal}") else f"{base}/v1/{signal}"


def parse_telemetry(raw: Mapping[str, Any], source: str = "telemetry") -> TelemetryConfig | None:
    if not raw:
        return None
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown keys {', '.join(sorted(unknown))}")
    endpoint = str(raw.get("endpoint") or "")
    protocol = str(raw.get("protocol", "grpc"))
    if not endpoint:
        raise ConfigError(f"{source}: endpoint is required")
    if protocol not in ("grpc", "http/protobuf"):
        raise ConfigError(f"{source}: protocol must be grpc or http/protobuf")
    if protocol == "http/protobuf" and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: an http/protobuf endpoint must be an http(s):// URL")
    headers = raw.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise ConfigError(f"{source}.headers: must be a mapping")
    try:
        cfg = TelemetryConfig(endpoint, protocol, tuple((str(k).lower(), str(v)) for k, v in headers.items()),
                              bool(raw.get("traces", True)), bool(raw.get("metrics", True)),
                              float(raw.get("interval_s", 15.0)), str(raw.get("service_name", "tokenpulse")))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from None
    if cfg.interval_s <= 0:
        raise ConfigError(f"{source}: interval_s must be above 0")
    return cfg


class Telemetry:
    """Started by the service when ``telemetry`` is set; ``span(name, **attrs)`` is a no-op otherwise."""

    def __init__(self, cfg: TelemetryConfig | None, registry=None, instance_id: str = ""):
        self.cfg = cfg
        self._tracer = None
        self._tracer_provider = None
        self._meter_provider = None
        if cfg is None:
            return
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create({"service.name": cfg.service_name,
                                    **({"service.instance.id": instance_id} if instance_id else {})})
        if cfg.traces:
            self._start_traces(resource)
        if cfg.metrics and registry is not None:
            self._start_metrics(resource, registry)
        log.info("own telemetry: %s to %s over %s", " and ".join(
            s for s, on in (("traces", cfg.traces), ("metrics", cfg.metrics)) if on), _safe(cfg.endpoint), cfg.protocol)

    def _exporter(self, signal: str):
        cfg = self.cfg
        headers = dict(cfg.headers) or None
        if cfg.protocol == "grpc":
            insecure = not cfg.endpoint.startswith("https://")
            target = cfg.endpoint.split("://", 1)[-1]
            if signal == "traces":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as OTLPSpanExporter
            return OTLPSpanExporter(endpoint=target, insecure=insecure, headers=headers, timeout=EXPORT_TIMEOUT_S)
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as OTLPSpanExporter
        return OTLPSpanExporter(endpoint=self.cfg.url(signal), headers=headers, timeout=EXPORT_TIMEOUT_S)

    def _start_traces(self, resource) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._tracer_provider = TracerProvider(resource=resource)
        self._tracer_provider.add_span_processor(BatchSpanProcessor(self._exporter("traces"),
                                                                    schedule_delay_millis=1000))
        self._tracer = self._tracer_provider.get_tracer("tokenpulse")

    def _start_metrics(self, resource, registry) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        reader = PeriodicExportingMetricReader(self._exporter("metrics"),
                                               export_interval_millis=int(self.cfg.interval_s * 1000))
        self._meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        PrometheusBridge(registry).register(self._meter_provider.get_meter("tokenpulse"))

    @contextlib.contextmanager
    def span(self, name: str, **attributes):
        """A span of tokenpulse's own work; yields the span (None when traces are off)."""
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(name, attributes=attributes) as s:
            yield s

    def shutdown(self) -> None:
        for provider in (self._tracer_provider, self._meter_provider):
            if provider is not None:
                try:
                    provider.shutdown()  # flushes: one last export, bounded by EXPORT_TIMEOUT_S
                except Exception as e:  # the backend is down: nothing to do but say so
                    log.warning("own telemetry shutdown: %s", e)


class PrometheusBridge:
    """Observable OTel instruments that read the Prometheus registry (one collect per export)."""

    def __init__(self, registry, max_age_s: float = 1.0):
        self.registry = registry
        self.max_age_s = max_age_s
        self._samples: dict[str, list] = {}
        self._at = 0.0

    def _collect(self) -> dict[str, list]:
        now = time.monotonic()
        if now - self._at > self.max_age_s:
            samples: dict[str, list] = {}
            for family in self.registry.collect():
                for s in family.samples:
                    samples.setdefault(s.name, []).append((s.value, dict(s.labels)))
            self._samples, self._at = samples, now
        return self._samples

    def register(self, meter) -> None:
        from opentelemetry.metrics import Observation

        def callback(sample_name: str):
            def observe(_options):
                return [Observation(v, labels) for v, labels in self._collect().get(sample_name, [])]
            return observe

        for family in self.registry.collect():
            doc = family.documentation
            if family.type == "counter":
                meter.create_observable_counter(family.name, [callback(family.name + "_total")], description=doc)
            elif family.type == "gauge":
                meter.create_observable_gauge(family.name, [callback(family.name)], description=doc)
            elif family.type == "histogram":
                meter.create_observable_counter(family.name + "_count", [callback(family.name + "_count")],
                                                description=doc)
                meter.create_observable_counter(family.name + "_sum", [callback(family.name + "_sum")],
                                                description=doc)


def _safe(endpoint: str) -> str:
    """The endpoint without credentials or query, for logs."""
    from urllib.parse import urlsplit

    p = urlsplit(endpoint if "://" in endpoint else "//" + endpoint)
    return f"{p.scheme + '://' if p.scheme else ''}{p.hostname or ''}{':' + str(p.port) if p.port else ''}{p.path}"

"""The ``forward`` setting: where enriched spans go on to, and how.

    forward:
      tempo:                          # a name, used in /metrics and logs
        endpoint: http://tempo:4317   # gRPC: [http(s)://]host:port; HTTP: a URL (/v1/traces added
        protocol: grpc                # when it has no path, as OTEL_EXPORTER_OTLP_ENDPOINT)
        spans: all                    # all | genai (spans with a GenAI operation or model)
        headers: {x-scope-orgid: acme}
        compression: gzip             # gzip | none
        timeout_s: 10
        tls: {ca_file: ..., cert_file: ..., key_file: ...}   # https:// endpoints; cert+key: mTLS
        queue_spans: 100000           # spans waiting for this destination before new ones are dropped
        retry: {initial_s: 1, max_s: 30, max_elapsed_s: 300}

Retry timings follow the OpenTelemetry Collector's exporterhelper defaults in
spirit (exponential back-off with jitter, capped, given up after a total
time); the values are ours, shorter, because a forward queue in memory should
not hold minutes of spans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from tokenpulse.errors import ConfigError

PROTOCOLS = ("grpc", "http/protobuf")
SPAN_FILTERS = ("all", "genai")
_KEYS = {"endpoint", "protocol", "spans", "headers", "compression", "timeout_s", "tls", "queue_spans", "retry"}
_TLS_KEYS = {"ca_file", "cert_file", "key_file", "insecure"}
_RETRY_KEYS = {"initial_s", "max_s", "max_elapsed_s"}


@dataclass(frozen=True)
class Destination:
    name: str
    endpoint: str = field(repr=False)  # may carry credentials in its query: never logged
    protocol: str = "grpc"
    spans: str = "all"
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    compression: str = "gzip"
    timeout_s: float = 10.0
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure: bool = True  # plain text (http:// or a bare host:port for gRPC)
    queue_spans: int = 100_000
    retry_initial_s: float = 1.0
    retry_max_s: float = 30.0
    retry_max_elapsed_s: float = 300.0

    @property
    def target(self) -> str:
        """gRPC: host:port. HTTP: the full URL of the traces endpoint."""
        if self.protocol == "grpc":
            return self.endpoint.split("://", 1)[-1].rstrip("/")
        parts = urlsplit(self.endpoint)
        return self.endpoint if parts.path not in ("", "/") else self.endpoint.rstrip("/") + "/v1/traces"


def parse_destinations(raw: Mapping[str, Any], source: str = "forward") -> dict[str, Destination]:
    out = {}
    for name, spec in raw.items():
        where = f"{source}.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: must be a mapping with at least 'endpoint'")
        unknown = set(spec) - _KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        endpoint = str(spec.get("endpoint") or "")
        protocol = str(spec.get("protocol", "grpc"))
        if protocol not in PROTOCOLS:
            raise ConfigError(f"{where}: protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        if not endpoint:
            raise ConfigError(f"{where}: endpoint is required")
        scheme = endpoint.split("://", 1)[0] if "://" in endpoint else ""
        if protocol == "http/protobuf" and scheme not in ("http", "https"):
            raise ConfigError(f"{where}: an http/protobuf endpoint must be an http(s):// URL")
        if protocol == "grpc" and scheme not in ("", "http", "https"):
            raise ConfigError(f"{where}: a grpc endpoint is host:port or http(s)://host:port")
        tls = _sub(spec, "tls", _TLS_KEYS, where)
        retry = _sub(spec, "retry", _RETRY_KEYS, where)
        headers = spec.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise ConfigError(f"{where}.headers: must be a mapping of header: value")
        try:
            d = Destination(
                name=str(name), endpoint=endpoint, protocol=protocol, spans=str(spec.get("spans", "all")),
                # gRPC metadata keys must be lowercase; HTTP header names are case-insensitive
                headers=tuple((str(k).lower(), str(v)) for k, v in headers.items()),
                compression=str(spec.get("compression", "gzip")), timeout_s=float(spec.get("timeout_s", 10.0)),
                ca_file=str(tls.get("ca_file") or ""), cert_file=str(tls.get("cert_file") or ""),
                key_file=str(tls.get("key_file") or ""),
                insecure=bool(tls.get("insecure", scheme != "https")),
                queue_spans=int(spec.get("queue_spans", 100_000)),
                retry_initial_s=float(retry.get("initial_s", 1.0)), retry_max_s=float(retry.get("max_s", 30.0)),
                retry_max_elapsed_s=float(retry.get("max_elapsed_s", 300.0)))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
        if d.spans not in SPAN_FILTERS:
            raise ConfigError(f"{where}: spans must be one of {', '.join(SPAN_FILTERS)}, not {d.spans!r}")
        if d.compression not in ("gzip", "none"):
            raise ConfigError(f"{where}: compression must be gzip or none")
        if d.timeout_s <= 0 or d.queue_spans < 1 or d.retry_initial_s <= 0 or d.retry_max_s < d.retry_initial_s \
                or d.retry_max_elapsed_s < 0:
            raise ConfigError(f"{where}: timeout_s and retry.initial_s must be > 0, queue_spans >= 1, "
                              "retry.max_s >= retry.initial_s, retry.max_elapsed_s >= 0")
        if bool(d.cert_file) != bool(d.key_file):
            raise ConfigError(f"{where}: tls.cert_file and tls.key_file go together (mTLS)")
        for path in (d.ca_file, d.cert_file, d.key_file):
            if path:
                try:
                    open(path, "rb").close()
                except OSError as e:
                    raise ConfigError(f"{where}: cannot read {path}: {e.strerror}") from None
        out[d.name] = d
    return out


def _sub(spec: Mapping, key: str, allowed: set[str], where: str) -> Mapping:
    sub = spec.get(key) or {}
    if not isinstance(sub, Mapping):
        raise ConfigError(f"{where}.{key}: must be a mapping")
    unknown = set(sub) - allowed
    if unknown:
        raise ConfigError(f"{where}.{key}: unknown keys {', '.join(sorted(unknown))}")
    return sub

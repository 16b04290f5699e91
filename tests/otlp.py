"""Build OTLP trace requests for tests, as protobuf messages and as spec JSON."""

from __future__ import annotations

import os
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    if isinstance(value, bytes):
        return KeyValue(key=key, value=AnyValue(bytes_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(name="chat gpt-4o", trace_id=None, span_id=None, parent=b"", start=None,
         duration_ns=1_500_000, kind=Span.SPAN_KIND_CLIENT, attrs=None, status=0) -> Span:
    if start is None:
        start = time.time_ns()
    s = Span(trace_id=trace_id if trace_id is not None else os.urandom(16),
             span_id=span_id if span_id is not None else os.urandom(8),
             parent_span_id=parent, name=name, kind=kind,
             start_time_unix_nano=start, end_time_unix_nano=start + duration_ns)
    s.attributes.extend(kv(k, v) for k, v in (attrs or {}).items())
    s.status.code = status
    return s


def request(spans: list[Span], service: str = "test-svc", resource: dict | None = None,
            scope: str = "test.scope") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kv(k, v) for k, v in {"service.name": service, **(resource or {})}.items())
    ss = rs.scope_spans.add()
    ss.scope.name = scope
    ss.scope.version = "1.0"
    ss.spans.extend(spans)
    return req


def n_spans(n: int, service: str, **kw) -> ExportTraceServiceRequest:
    return request([span(**kw) for _ in range(n)], service=service)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def empty_spans_request(n: int) -> bytes:
    """An ExportTraceServiceRequest of ``n`` empty spans, written on the wire (2 bytes a span)."""
    spans = b"\x12\x00" * n
    scope_spans = b"\x12" + _varint(len(spans)) + spans
    return b"\x0a" + _varint(len(scope_spans)) + scope_spans

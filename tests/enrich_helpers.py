"""Build one-span batches the way instrumentations emit them (values rendered by the real decoder)."""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.otlp import request, span
from tokenpulse.otlp.decode import decode_protobuf

CLIENT, INTERNAL = Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL


def batch_of(*specs, resource=None, service="svc"):
    """specs: (name, kind, attrs) or (name, kind, attrs, dict(trace_id=..., span_id=..., parent=..., status=...))."""
    spans = []
    for spec in specs:
        name, kind, attrs = spec[:3]
        extra = spec[3] if len(spec) > 3 else {}
        spans.append(span(name=name, kind=kind, attrs=attrs, **extra))
    return decode_protobuf(request(spans, service=service, resource=resource).SerializeToString()).batch

"""Spans sent by the official OpenTelemetry SDK exporters and spec-shaped OTLP/JSON
land in ClickHouse with the right ids, times and attributes."""

from __future__ import annotations

import gzip
import json
import time

import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.conftest import scalar, sql


def _emit(exporter, service: str):
    """One trace of three spans through a real TracerProvider; returns the finished spans."""
    memory = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": service, "tenant.id": "acme"}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tp.add_span_processor(SimpleSpanProcessor(memory))
    tracer = tp.get_tracer("tests.agent", "2.0")
    with tracer.start_as_current_span("invoke_agent planner", kind=SpanKind.INTERNAL):
        with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as s:
            s.set_attribute("gen_ai.operation.name", "chat")
            s.set_attribute("gen_ai.usage.input_tokens", 1200)
            s.set_attribute("gen_ai.request.temperature", 0.25)
            s.set_attribute("gen_ai.response.finish_reasons", ["stop", "length"])
            s.set_attribute("app.cached", True)
        with tracer.start_as_current_span("execute_tool search") as s:
            s.set_status(Status(StatusCode.ERROR, "tool timed out"))
    tp.shutdown()
    return {sp.name: sp for sp in memory.get_finished_spans()}


@pytest.mark.parametrize("transport", ["grpc", "http/protobuf"])
def test_sdk_exporter_spans_are_stored_exactly(make_service, transport):
    svc = make_service()
    if transport == "grpc":
        exporter = GrpcExporter(endpoint=f"http://127.0.0.1:{svc.grpc.port}", insecure=True)
    else:
        exporter = HttpExporter(endpoint=f"http://127.0.0.1:{svc.http.port}/v1/traces")
    service = f"sdk-{transport.replace('/', '-')}"
    sent = _emit(exporter, service)

    rows = sql(svc, f"""
        SELECT name, trace_id, span_id, parent_span_id, kind, status_code, status_message,
               toUnixTimestamp64Nano(start_time), toUnixTimestamp64Nano(end_time), duration_ms,
               scope_name, scope_version, resource_attributes['tenant.id'], attributes
        FROM spans WHERE service = '{service}' ORDER BY name""")
    assert [r[0] for r in rows] == ["chat gpt-4o", "execute_tool search", "invoke_agent planner"]
    for r in rows:
        s = sent[r[0]]
        assert r[1] == format(s.context.trace_id, "032x")
        assert r[2] == format(s.context.span_id, "016x")
        assert r[3] == (format(s.parent.span_id, "016x") if s.parent else "")
        assert int(r[7]) == s.start_time and int(r[8]) == s.end_time
        assert r[9] == pytest.approx((s.end_time - s.start_time) / 1e6)
        assert (r[10], r[11]) == ("tests.agent", "2.0")
        assert r[12] == "acme"
    chat, tool, agent = rows
    assert chat[4] == "client" and agent[4] == "internal"
    assert chat[1] == tool[1] == agent[1]  # one trace
    assert tool[5] == "error" and tool[6] == "tool timed out"
    assert "gen_ai.usage.input_tokens" not in chat[13]  # lean rows: the input_tokens column holds 1200
    assert chat[13]["gen_ai.request.temperature"] == "0.25"
    assert chat[13]["gen_ai.response.finish_reasons"] == '["stop","length"]'
    assert chat[13]["app.cached"] == "true"


NOW_NS = time.time_ns()


def _json_body(trace_hex: str, span_hex: str, service: str, start_ns: int = NOW_NS) -> dict:
    # Exactly the spec's JSON encoding (otlp.md): hex ids (upper case is
    # allowed), int64 as decimal strings, enums as integers, camelCase keys.
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.openai_v2"}, "spans": [{
            "traceId": trace_hex, "spanId": span_hex, "name": "chat gpt-4o", "kind": 3,
            "startTimeUnixNano": str(start_ns), "endTimeUnixNano": str(start_ns + 10**9),
            "attributes": [
                {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1200"}},
                {"key": "gen_ai.usage.cache_read.input_tokens", "value": {"intValue": 1000}},
                {"key": "ratio", "value": {"doubleValue": 0.5}},
                {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}}},
            ],
            "status": {"code": 2, "message": "boom"},
            "unknownFieldIsIgnored": {"x": 1},
        }]}],
    }]}


@pytest.mark.parametrize("gzipped", [False, True])
def test_otlp_json_spec_encoding(make_service, gzipped):
    svc = make_service()
    service = f"json-{gzipped}"
    body = json.dumps(_json_body("5B8EFFF798038103D269B633813FC60C", "EEE19B7EC3C1B174", service)).encode()
    headers = {"Content-Type": "application/json"}
    if gzipped:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    r = requests.post(f"http://127.0.0.1:{svc.http.port}/v1/traces", data=body, headers=headers, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {}  # full success: no partialSuccess
    row = sql(svc, f"""SELECT trace_id, span_id, kind, status_code, status_message,
                        toUnixTimestamp64Nano(start_time), duration_ms, attributes, input_tokens, cache_read_tokens
                        FROM spans WHERE service = '{service}'""")
    assert len(row) == 1
    tid, sid, kind, code, msg, start, dur, attrs, input_tokens, cache_read = row[0]
    assert (tid, sid) == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")
    assert (kind, code, msg) == ("client", "error", "boom")
    assert int(start) == NOW_NS and dur == 1000.0
    # int64 as a decimal string (OTLP/JSON) read as a count; lean rows keep it in its column only
    assert (int(input_tokens), int(cache_read)) == (1200, 1000)
    assert "gen_ai.usage.input_tokens" not in attrs and "gen_ai.usage.cache_read.input_tokens" not in attrs
    assert attrs["ratio"] == "0.5"
    assert attrs["tags"] == '["a",2]'


def test_gzip_protobuf_over_http_and_grpc(make_service):
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    from tests.otlp import n_spans

    svc = make_service()
    body = n_spans(7, "gz-http").SerializeToString()
    r = requests.post(f"http://127.0.0.1:{svc.http.port}/v1/traces", data=gzip.compress(body),
                      headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/x-protobuf")
    assert not ExportTraceServiceResponse.FromString(r.content).HasField("partial_success")

    with grpc.insecure_channel(f"127.0.0.1:{svc.grpc.port}", compression=grpc.Compression.Gzip) as ch:
        export = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        raw = export(n_spans(5, "gz-grpc").SerializeToString(), timeout=10)
    assert not ExportTraceServiceResponse.FromString(raw).HasField("partial_success")
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'gz-http'")) == 7
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'gz-grpc'")) == 5


def test_span_older_than_retention_is_refused_not_silently_dropped(make_service):
    svc = make_service(retention_days=30)
    old = _json_body("5b8efff798038103d269b633813fc60d", "eee19b7ec3c1b175", "old", start_ns=1544712660000000000)
    new = _json_body("5b8efff798038103d269b633813fc60e", "eee19b7ec3c1b176", "old")
    old["resourceSpans"][0]["scopeSpans"][0]["spans"] += new["resourceSpans"][0]["scopeSpans"][0]["spans"]
    r = requests.post(f"http://127.0.0.1:{svc.http.port}/v1/traces", json=old, timeout=10)
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "retention" in partial["errorMessage"]
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'old'")) == 1

"""Bad input gets the status the OTLP spec names, the service keeps serving, and
valid spans in the same request are kept (partial success)."""

from __future__ import annotations

import gzip
import json

import grpc
import pytest
import requests
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.conftest import scalar, sql
from tests.otlp import n_spans, request, span

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PB = {"Content-Type": "application/x-protobuf"}


def grpc_export(svc, body: bytes, compression=None, timeout=10):
    with grpc.insecure_channel(f"127.0.0.1:{svc.grpc.port}", compression=compression) as ch:
        return ch.unary_unary(EXPORT)(body, timeout=timeout)


def post(svc, body: bytes, headers=PB):
    return requests.post(f"http://127.0.0.1:{svc.http.port}/v1/traces", data=body, headers=headers, timeout=10)


def assert_still_serving(svc, service: str):
    r = post(svc, n_spans(2, service).SerializeToString())
    assert r.status_code == 200
    grpc_export(svc, n_spans(3, service).SerializeToString())
    assert int(scalar(svc, f"SELECT count() FROM spans WHERE service = '{service}'")) == 5


@pytest.fixture
def svc(make_service):
    return make_service(max_request_bytes=256 * 1024)


GARBAGE = b"\x0a\xff\xff\xff\xff\x0f this is not protobuf"


def test_malformed_protobuf(svc):
    r = post(svc, GARBAGE)
    assert r.status_code == 400
    st = status_pb2.Status.FromString(r.content)  # spec: a google.rpc.Status body
    assert st.code == 3 and "protobuf" in st.message
    with pytest.raises(grpc.RpcError) as e:
        grpc_export(svc, GARBAGE)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(svc, "after-bad-pb")


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"resourceSpans": 5}', b"\xff\xfe", b"[" * 100_000])
def test_malformed_json(svc, body):
    r = post(svc, body, {"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["code"] == 3
    assert_still_serving(svc, "after-bad-json")


def test_wrong_content_type(svc):
    r = post(svc, n_spans(1, "x").SerializeToString(), {"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = requests.get(f"http://127.0.0.1:{svc.http.port}/v1/traces", timeout=5)
    assert r.status_code == 405


def test_oversize_body(svc):
    big = n_spans(1, "big", attrs={"blob": "x" * 300_000}).SerializeToString()
    r = post(svc, big)
    assert r.status_code == 413
    with pytest.raises(grpc.RpcError) as e:
        grpc_export(svc, big)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(svc, "after-oversize")


def test_gzip_bomb(svc):
    # 64 MiB of zeros inflate from ~64 KiB: under the raw limit, far over the inflated one.
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 256 * 1024
    r = post(svc, bomb, {**PB, "Content-Encoding": "gzip"})
    assert r.status_code == 413
    # A valid request inflated past the limit: gRPC checks the inflated size too.
    inflated = n_spans(1, "bomb", attrs={"blob": "y" * 1_000_000}).SerializeToString()
    with pytest.raises(grpc.RpcError) as e:
        grpc_export(svc, inflated, compression=grpc.Compression.Gzip)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(svc, "after-bomb")


def test_corrupt_and_truncated_gzip(svc):
    good = gzip.compress(n_spans(1, "gz").SerializeToString())
    for body in (b"not gzip at all", good[: len(good) // 2]):
        r = post(svc, body, {**PB, "Content-Encoding": "gzip"})
        assert r.status_code == 400, body[:20]
    r = post(svc, good, {**PB, "Content-Encoding": "br"})
    assert r.status_code == 400


def test_empty_requests_succeed(svc):
    assert post(svc, b"").status_code == 200
    r = post(svc, b"{}", {"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json() == {}
    resp = ExportTraceServiceResponse.FromString(grpc_export(svc, b""))
    assert not resp.HasField("partial_success")


def test_invalid_spans_rejected_valid_neighbours_kept(svc):
    req = request([
        span(), span(trace_id=b"\x01" * 8), span(span_id=bytes(8)), span(), span(parent=b"\x01\x02"), span(),
    ], service="mixed-grpc")
    resp = ExportTraceServiceResponse.FromString(grpc_export(svc, req.SerializeToString()))
    assert resp.partial_success.rejected_spans == 3
    assert "trace_id" in resp.partial_success.error_message
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'mixed-grpc'")) == 3

    good = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "ok",
            "startTimeUnixNano": str(__import__("time").time_ns())}
    body = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "mixed-json"}}]}, "scopeSpans": [{"spans": [
            good,
            {**good, "spanId": "zz" * 8},  # not hex
            {**good, "traceId": "00" * 16},  # all zero
            {**good, "spanId": "b7ad6b7169203332", "startTimeUnixNano": "soon"},
            {**good, "spanId": "b7ad6b7169203333", "kind": 9},
            "not an object",
            {**good, "spanId": "b7ad6b7169203334", "attributes": [{"key": "k", "value": {"intValue": "1"}}]},
        ]}]}]}
    r = post(svc, json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "5", partial
    assert "spanId is not hex" in partial["errorMessage"]
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'mixed-json'")) == 2


def test_request_limits_refuse_excess_spans_and_cut_attributes(make_service):
    svc = make_service(max_spans_per_request=4, max_attributes_per_span=8, max_attribute_value_chars=50)
    attrs = {"big": "x" * 500} | {f"noise.{i}": "v" for i in range(20)} | {"gen_ai.usage.input_tokens": 7}
    req = request([span(attrs=attrs) for _ in range(6)], service="limited")
    resp = ExportTraceServiceResponse.FromString(grpc_export(svc, req.SerializeToString()))
    assert resp.partial_success.rejected_spans == 2
    assert "more than 4 spans" in resp.partial_success.error_message
    rows = sql(svc, "SELECT count(), min(length(attributes)), max(length(attributes)), "
                    "any(attributes['gen_ai.usage.input_tokens']), any(input_tokens), "
                    "max(arrayMax(arrayMap(v -> length(v), mapValues(attributes)))) "
                    "FROM spans WHERE service = 'limited'")
    # 8 attributes kept, the GenAI one among them (so usage is still read: input_tokens 7; lean rows
    # then store it in its column only, so the map holds 7); the long value cut to 50
    assert rows == [[4, 7, 7, "", 7, 50]]
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert 'tokenpulse_spans_rejected_total{reason="too_many_spans",transport="grpc"} 2.0' in metrics
    assert 'tokenpulse_attributes_limited_total{kind="dropped"}' in metrics


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    out, n = bytearray([number << 3 | 2]), len(payload)
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out) + payload


def _nested_kvlist(depth: int):
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    v = AnyValue(string_value="bottom")
    for _ in range(depth):
        outer = AnyValue()
        kv = outer.kvlist_value.values.add()
        kv.key = "k"
        kv.value.CopyFrom(v)
        v = outer
    return v


def test_hostile_requests_get_clear_answers_and_keep_valid_neighbours(make_service):
    """The issue's hostile list, through the real receiver: nothing crashes, valid spans are kept."""
    svc = make_service(max_attribute_value_chars=65_536)
    # 100k attributes and a 1 MB value on one span, beside a valid neighbour: both stored, attributes cut
    huge = span(name="huge", attrs={**{f"a{i}": "x" for i in range(100_000)}, "big": "y" * 1_000_000,
                                    "gen_ai.usage.input_tokens": 3})
    r = post(svc, request([huge, span(name="neighbour")], service="hostile-1").SerializeToString())
    assert r.status_code == 200
    assert sql(svc, "SELECT name, length(attributes) <= 256, input_tokens FROM spans WHERE service = 'hostile-1' "
                    "ORDER BY name") == [["huge", 1, 3], ["neighbour", 1, 0]]
    # zero and far-future timestamps, wrong-length ids, negative and huge token counts, one valid span
    odd = [span(name="zero-time", start=0, duration_ns=0), span(name="far-future", start=2**64 - 10**7, duration_ns=1),
           span(name="bad-id", trace_id=b"\x01" * 3),
           span(name="negative", attrs={"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": -5}),
           span(name="enormous", attrs={"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10**15}),
           span(name="valid")]
    resp = ExportTraceServiceResponse.FromString(grpc_export(svc, request(odd, service="hostile-2").SerializeToString()))
    # bad id, zero time (older than retention), far future (past the DateTime the TTL needs)
    assert resp.partial_success.rejected_spans == 3
    assert "more than a day in the future" in resp.partial_success.error_message
    rows = sql(svc, "SELECT name, input_tokens, usage_status FROM spans WHERE service = 'hostile-2' ORDER BY name")
    assert [r[0] for r in rows] == ["enormous", "negative", "valid"]
    assert {r[0]: (r[1], r[2]) for r in rows}["negative"][0] == 0  # a bad count never reaches a sum
    assert {r[0]: (r[1], r[2]) for r in rows}["enormous"][0] == 0
    # deeply nested values: decoded (rendered) or refused as a whole request with 400, never a crash
    s = span(name="deep")
    kv = s.attributes.add()
    kv.key = "nested"
    kv.value.CopyFrom(_nested_kvlist(90))
    # built by hand: the client library itself refuses to nest a message this deep
    body = _field(1, _field(2, _field(2, s.SerializeToString())))
    r = post(svc, body)
    assert r.status_code == 400 and "cannot decode" in r.text
    deep = '{"kvlistValue":{"values":[{"key":"k","value":' * 5000 + "{}" + "}]}}" * 5000
    doc = ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0af7651916cd43dd8448eb211c80319c",'
           '"spanId":"b7ad6b7169203331","name":"deep","attributes":[{"key":"n","value":' + deep + "}]}]}]}]}")
    r = post(svc, doc.encode(), {"Content-Type": "application/json"})
    assert r.status_code == 400 and "cannot decode" in r.text
    # invalid UTF-8 in a protobuf string field: the request cannot be decoded -> 400, with the reason
    valid = request([span(name="utf8", attrs={"k": "vvvv"})]).SerializeToString()
    r = post(svc, valid.replace(b"vvvv", b"\xff\xfe\xfd\xfc"))
    assert r.status_code == 400
    assert_still_serving(svc, "hostile-after")


def test_a_lone_surrogate_in_json_loses_nothing(svc):
    """JavaScript's JSON.stringify writes a lone surrogate escape when text is cut mid-emoji: the span
    is stored with U+FFFD in its place, beside its good neighbours; a valid pair stays an emoji."""
    import time

    now = str(time.time_ns())
    text = ('{"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": '
            '"surrogates"}}]}, "scopeSpans": [{"spans": ['
            '{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "bad \\ud800",'
            ' "startTimeUnixNano": "' + now + '", "attributes": [{"key": "k\\udc00", "value": {"stringValue": '
            '"cut \\ud83d"}}]},'
            '{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203332", "name": "ok \\ud83d\\ude00",'
            ' "startTimeUnixNano": "' + now + '"}]}]}]}')
    r = post(svc, text.encode(), {"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json() == {}, r.text
    rows = sql(svc, "SELECT name, mapKeys(attributes), mapValues(attributes) FROM spans "
                    "WHERE service = 'surrogates' ORDER BY span_id")
    assert rows == [["bad \ufffd", ["k\ufffd"], ["cut \ufffd"]], ["ok \U0001F600", [], []]]
    assert_still_serving(svc, "after-surrogates")

"""OTLP decoding into the columnar record: value rendering, ids, JSON == protobuf."""

from __future__ import annotations

import json
import time

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from tests.otlp import kv, request, span
from tokenpulse.errors import InvalidRequest
from tokenpulse.otlp.decode import UNKNOWN_SERVICE, decode_json, decode_protobuf
from tokenpulse.record import FIELD_NAMES, SpanBatch


def _one(attrs: dict | list) -> dict:
    s = span()
    if isinstance(attrs, list):
        s.attributes.extend(attrs)
    else:
        s.attributes.extend(kv(k, v) for k, v in attrs.items())
    d = decode_protobuf(request([s]).SerializeToString())
    assert d.rejected == 0
    return d.batch.attributes[0]


@pytest.mark.parametrize("value, rendered", [
    ("text", "text"), ("", ""), (42, "42"), (-7, "-7"), (2**62, str(2**62)), (True, "true"), (False, "false"),
    (0.25, "0.25"), (3.0, "3"), (1e300, "1e+300"), (float("nan"), "nan"), (b"\x00\xff", "AP8="),
])
def test_scalar_values_render_as_strings(value, rendered):
    assert _one({"k": value})["k"] == rendered


def test_array_and_kvlist_render_as_compact_json():
    arr = KeyValue(key="a", value=AnyValue(array_value=ArrayValue(values=[
        AnyValue(string_value="x"), AnyValue(int_value=2), AnyValue(bool_value=True)])))
    kvl = KeyValue(key="m", value=AnyValue(kvlist_value=KeyValueList(values=[kv("n", 1), kv("s", "v")])))
    unset = KeyValue(key="u", value=AnyValue())
    attrs = _one([arr, kvl, unset])
    assert json.loads(attrs["a"]) == ["x", 2, True]
    assert json.loads(attrs["m"]) == {"n": 1, "s": "v"}
    assert attrs["u"] == ""


def test_ids_times_resource_and_defaults():
    tid, sid, pid = bytes(range(16)), bytes(range(1, 9)), bytes(range(2, 10))
    now = time.time_ns()
    req = request([span(trace_id=tid, span_id=sid, parent=pid, start=now, duration_ns=5, status=2)],
                  service="svc", resource={"tenant.id": "acme"})
    b = decode_protobuf(req.SerializeToString()).batch
    assert len(b) == 1
    r = b.row(0)
    assert (r.trace_id, r.span_id, r.parent_span_id) == (tid.hex(), sid.hex(), pid.hex())
    assert (r.start_time_ns, r.end_time_ns, r.status_code, r.kind) == (now, now + 5, 2, 3)
    assert r.service == "svc" and r.resource_attributes["tenant.id"] == "acme"
    assert (r.scope_name, r.scope_version) == ("test.scope", "1.0")
    assert (r.input_tokens, r.cost_usd, r.counted, r.tenant) == (0, None, 1, "")  # enrichment fills these
    for name in FIELD_NAMES:
        assert len(getattr(b, name)) == 1, name


def test_missing_service_name_is_unknown_service():
    req = request([span()])
    del req.resource_spans[0].resource.attributes[:]
    assert decode_protobuf(req.SerializeToString()).batch.service == [UNKNOWN_SERVICE]


def test_invalid_ids_are_rejected_one_by_one():
    req = request([span(), span(trace_id=b""), span(trace_id=bytes(16)), span(span_id=b"\x01" * 9),
                   span(parent=b"\x01"), span(parent=bytes(8))])
    d = decode_protobuf(req.SerializeToString())
    assert d.rejected == 4 and len(d.batch) == 2
    assert d.batch.parent_span_id[1] == ""  # an all-zero parent id means "no parent"
    assert d.error_message.startswith("rejected 4 span(s): ")


@pytest.mark.parametrize("body", [b"\x0a\x05abc", b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f"])
def test_undecodable_protobuf_raises(body):
    with pytest.raises(InvalidRequest):
        decode_protobuf(body)


def _to_json(req) -> bytes:
    """The spec's JSON encoding of a request, written by hand (not json_format: ids must be hex)."""
    def value(v):
        which = v.WhichOneof("value")
        if which == "int_value":
            return {"intValue": str(v.int_value)}
        if which == "double_value":
            return {"doubleValue": v.double_value}
        if which == "bool_value":
            return {"boolValue": v.bool_value}
        return {"stringValue": v.string_value}

    def attrs(kvs):
        return [{"key": a.key, "value": value(a.value)} for a in kvs]

    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": attrs(rs.resource.attributes)},
        "scopeSpans": [{"scope": {"name": ss.scope.name, "version": ss.scope.version}, "spans": [{
            "traceId": s.trace_id.hex().upper(), "spanId": s.span_id.hex(), "parentSpanId": s.parent_span_id.hex(),
            "name": s.name, "kind": s.kind, "startTimeUnixNano": str(s.start_time_unix_nano),
            "endTimeUnixNano": s.end_time_unix_nano, "attributes": attrs(s.attributes),
            "status": {"code": s.status.code, "message": s.status.message},
        } for s in ss.spans]} for ss in rs.scope_spans],
    } for rs in req.resource_spans]}).encode()


def test_json_and_protobuf_decode_to_the_same_batch():
    req = request([span(attrs={"a": 1, "b": "x", "c": 0.5, "d": True}, status=1),
                   span(parent=b"\x07" * 8, attrs={"gen_ai.usage.input_tokens": 1200})],
                  service="same", resource={"deployment.environment.name": "prod"})
    from_pb = decode_protobuf(req.SerializeToString())
    from_json = decode_json(_to_json(req))
    assert from_json.rejected == 0
    assert list(from_json.batch.rows()) == list(from_pb.batch.rows())


def test_json_snake_case_and_enum_names_are_accepted():
    body = {"resource_spans": [{"scope_spans": [{"spans": [{
        "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331",
        "kind": "SPAN_KIND_SERVER", "start_time_unix_nano": 5, "status": {"code": "STATUS_CODE_OK"}}]}]}]}
    b = decode_json(json.dumps(body).encode()).batch
    assert (b.kind[0], b.status_code[0], b.start_time_ns[0]) == (2, 1, 5)


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b'"x"', b'{"resourceSpans": {}}', b"[" * 50_000])
def test_undecodable_json_raises(body):
    with pytest.raises(InvalidRequest):
        decode_json(body)


def test_batch_take_concat_and_records_round_trip():
    d = decode_protobuf(request([span(name=f"s{i}") for i in range(4)]).SerializeToString())
    b = d.batch
    assert [r.name for r in b.take([3, 1]).rows()] == ["s3", "s1"]
    both = SpanBatch.concat([b, b.take([0])])
    assert len(both) == 5 and both.name[-1] == "s0"
    assert list(SpanBatch.from_records(list(b.rows())).rows()) == list(b.rows())


def test_unknown_enum_values_and_out_of_range_times_are_encoded_safely():
    from tokenpulse.storage.schema import batch_to_arrow

    b = decode_protobuf(request([span(kind=9, status=7), span(kind=3, status=1)]).SerializeToString()).batch
    assert b.kind == [9, 3]  # proto3 enums are open: unknown values arrive as numbers
    b.start_time_ns[0] = 2**64 - 1
    t = batch_to_arrow(b).to_pydict()
    assert t["kind"] == ["unspecified", "client"] and t["status_code"] == ["unset", "ok"]
    assert t["start_time"][0].year == 2262  # clamped to DateTime64(9)'s last instant

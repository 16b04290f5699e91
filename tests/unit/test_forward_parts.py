"""The pieces of processor mode on their own: settings, re-encoding, answers from downstream."""

from __future__ import annotations

import email.utils
import time

import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)

from tests.downstream import details_any
from tests.otlp import kv, request, span
from tokenpulse.config import load_settings
from tokenpulse.errors import ConfigError
from tokenpulse.forward.config import parse_destinations
from tokenpulse.retry import parse_retry_after as _retry_after
from tokenpulse.otlp.decode import decode_message
from tokenpulse.otlp.reencode import Reencoder, parse_response, retry_delay, to_message
from tokenpulse.telemetry import parse_telemetry


@pytest.mark.parametrize("spec, error", [
    ({}, "endpoint is required"),
    ({"endpoint": "tempo:4317", "protocol": "thrift"}, "protocol must be one of grpc, http/protobuf"),
    ({"endpoint": "tempo:4318", "protocol": "http/protobuf"}, "must be an http(s):// URL"),
    ({"endpoint": "tempo:4317", "spans": "some"}, "spans must be one of all, genai"),
    ({"endpoint": "tempo:4317", "compression": "zstd"}, "compression must be gzip or none"),
    ({"endpoint": "tempo:4317", "tls": {"cert_file": "/etc/hosts"}}, "go together (mTLS)"),
    ({"endpoint": "tempo:4317", "tls": {"ca_file": "/nonexistent/ca.pem"}}, "cannot read /nonexistent/ca.pem"),
    ({"endpoint": "tempo:4317", "retry": {"initial_s": 0}}, "retry.initial_s must be > 0"),
    ({"endpoint": "tempo:4317", "batch": 5}, "unknown keys batch"),
    ({"endpoint": "tempo:4317", "retry": {"tries": 3}}, "forward.t.retry: unknown keys tries"),
    ({"endpoint": "tempo:4317", "queue_spans": "lots"}, "invalid literal"),
])
def test_bad_destinations_fail_at_start_with_the_reason(spec, error):
    with pytest.raises(ConfigError) as e:
        parse_destinations({"t": spec})
    assert error in str(e.value)


def test_destination_targets_follow_the_otlp_endpoint_rules():
    d = parse_destinations({
        "a": {"endpoint": "http://collector:4318", "protocol": "http/protobuf"},
        "b": {"endpoint": "https://vendor.example/otlp/v1/traces", "protocol": "http/protobuf"},
        "c": {"endpoint": "https://tempo:4317"},
        "d": {"endpoint": "tempo:4317", "headers": {"X-Scope-OrgID": "acme"}},
    })
    assert d["a"].target == "http://collector:4318/v1/traces" and d["a"].insecure
    assert d["b"].target == "https://vendor.example/otlp/v1/traces" and not d["b"].insecure
    assert d["c"].target == "tempo:4317" and not d["c"].insecure  # https: TLS
    assert d["d"].target == "tempo:4317" and d["d"].insecure and d["d"].headers == (("x-scope-orgid", "acme"),)
    assert "acme" not in repr(d["d"]) and "tempo" not in repr(d["d"])  # headers and endpoint stay out of logs


def test_forward_and_telemetry_settings_come_from_the_config_file(tmp_path):
    cfg = tmp_path / "tp.yaml"
    cfg.write_text("forward:\n  tempo:\n    endpoint: tempo:4317\n    spans: genai\n"
                   "telemetry:\n  endpoint: http://otel:4318\n  protocol: http/protobuf\n")
    s = load_settings({}, env={}, config_file=str(cfg))
    assert s.forward["tempo"]["spans"] == "genai"
    assert parse_telemetry(s.telemetry).url("metrics") == "http://otel:4318/v1/metrics"
    cfg.write_text("forward:\n  tempo:\n    endpoint: tempo:4317\n    protocol: jaeger\n")
    with pytest.raises(ConfigError, match="forward from config file .*tempo: protocol must be one of"):
        load_settings({}, env={}, config_file=str(cfg))
    with pytest.raises(ConfigError, match="telemetry from env.*interval_s must be above 0"):
        load_settings({}, env={"TOKENPULSE_TELEMETRY": '{"endpoint": "otel:4317", "interval_s": 0}'})


def _enriched(req: ExportTraceServiceRequest, genai: set[str] = frozenset()):
    decoded = decode_message(req)
    b = decoded.batch
    for i, name in enumerate(b.name):  # what enrichment would have said: enough for re-encoding
        if name in genai:
            b.operation[i], b.model[i], b.cost_usd[i], b.price_status[i] = "chat", "gpt-4o", 0.5, "priced"
        b.tenant[i], b.feature[i] = "acme", "unattributed"
    return decoded


def test_spans_not_kept_are_left_out_and_filters_give_their_own_bodies():
    req = request([span(name="chat"), span(name="db"), span(name="chat 2")], service="s")
    decoded = _enriched(req, genai={"chat", "chat 2"})
    bodies = Reencoder().encode(decoded.source, decoded.batch, kept=[0, 1], filters=("all", "genai"))
    names = {}
    for f, (body, n) in bodies.items():
        out = ExportTraceServiceRequest()
        out.ParseFromString(body)
        names[f] = [s.name for s in out.resource_spans[0].scope_spans[0].spans]
        assert n == len(names[f])
    assert names == {"all": ["chat", "db"], "genai": ["chat"]}
    chat = ExportTraceServiceRequest.FromString(bodies["genai"][0]).resource_spans[0].scope_spans[0].spans[0]
    got = {a.key: a.value for a in chat.attributes}
    assert got["tokenpulse.cost_usd"].double_value == 0.5 and got["tokenpulse.unattributed"].bool_value is True
    # nothing GenAI left: nothing to send
    assert Reencoder().encode(decoded.source, decoded.batch, kept=[1], filters=("genai",)) == {"genai": (b"", 0)}


@pytest.mark.parametrize("mode", ["pseudonymize", "drop", "raw"])
def test_user_ids_leave_as_pseudonyms_or_not_at_all(mode):
    from tokenpulse.enrich.attribute import Attributor

    at = Attributor(user_id_mode=mode, user_id_key=b"k" * 32)
    req = request([span(name="x", attrs={"user.id": 12345, "enduser.id": "dana", "other": "kept"})],
                  resource={"langfuse.user.id": "erin"})
    decoded = _enriched(req)
    body, _ = Reencoder(at.user_keys, at.scrub_user()).encode(decoded.source, decoded.batch, None)["all"]
    out = ExportTraceServiceRequest.FromString(body).resource_spans[0]
    attrs = {a.key: a.value for a in out.scope_spans[0].spans[0].attributes}
    res = {a.key: a.value.string_value for a in out.resource.attributes}
    assert attrs["other"].string_value == "kept"
    if mode == "raw":
        assert attrs["user.id"].int_value == 12345 and attrs["enduser.id"].string_value == "dana"
        assert res["langfuse.user.id"] == "erin"
    elif mode == "drop":
        assert "user.id" not in attrs and "enduser.id" not in attrs and "langfuse.user.id" not in res
    else:
        assert attrs["user.id"].string_value == at._user("12345")  # the int rendered, then pseudonymized
        assert attrs["enduser.id"].string_value == at._user("dana") != "dana"
        assert res["langfuse.user.id"] == at._user("erin")


def test_json_documents_become_protobuf_and_a_bad_span_leaves_its_neighbours():
    doc = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {"name": "s"}, "spans": [
        {"traceId": "00" * 15 + "01", "spanId": "00" * 7 + "02", "name": "first", "kind": 2,
         "links": [{"traceId": "ab" * 16, "spanId": "cd" * 8}]},
        {"traceId": "zz", "spanId": "00" * 7 + "03", "name": "bad id"},
        {"traceId": "00" * 15 + "01", "spanId": "00" * 7 + "04", "name": "bad time", "startTimeUnixNano": "noon"},
        {"trace_id": "00" * 15 + "01", "span_id": "00" * 7 + "05", "name": "snake", "start_time_unix_nano": "7"},
    ]}]}]}
    spans = to_message(doc).resource_spans[0].scope_spans[0].spans
    assert [s.name for s in spans] == ["first", "snake"]
    assert spans[0].links[0].trace_id == bytes.fromhex("ab" * 16) and spans[1].start_time_unix_nano == 7


def test_downstream_answers_are_read():
    resp = ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = 3
    resp.partial_success.error_message = "too old"
    assert parse_response(resp.SerializeToString()) == (3, "too old")
    assert parse_response(b"") == (0, "") and parse_response(b"\xff\xff garbage") == (0, "")
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, details=[details_any(info)])
    assert retry_delay(status.SerializeToString()) == 2.5
    assert retry_delay(status_pb2.Status(code=code_pb2.UNAVAILABLE).SerializeToString()) is None
    assert _retry_after("7") == 7.0 and _retry_after(None) is None and _retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= _retry_after(later) <= 31


@pytest.mark.parametrize("spec, error", [
    ({"endpoint": ""}, "endpoint is required"),
    ({"endpoint": "otel:4318", "protocol": "http/protobuf"}, "must be an http(s):// URL"),
    ({"endpoint": "otel:4317", "logs": True}, "unknown keys logs"),
])
def test_bad_telemetry_settings_fail_at_start(spec, error):
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_telemetry(spec)


@pytest.mark.parametrize("value", ["", "a", "x" * 127, "y" * 128, "z" * 20_000, "Zürich-租户-🚀"])
def test_added_attributes_encode_as_the_protobuf_library_would(value):
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from tokenpulse.otlp.reencode import _Encoded

    enc = _Encoded()
    by_hand = Span()
    by_hand.MergeFromString(enc.string("tokenpulse.tenant", value) + enc._double["tokenpulse.cost_usd"]
                            + b"\x00\x00\x00\x00\x00\x00\xf8\x3f"  # 1.5, little-endian IEEE 754
                            + enc._bool[("tokenpulse.counted", True)] + enc._bool[("tokenpulse.counted", False)])
    expected = Span()
    expected.attributes.extend([kv("tokenpulse.tenant", value), kv("tokenpulse.cost_usd", 1.5),
                                kv("tokenpulse.counted", True), kv("tokenpulse.counted", False)])
    assert by_hand == expected

"""Processor mode: spans go on, enriched, to a real downstream OTLP receiver (issue 10).

The downstream is a real gRPC TraceService (or OTLP/HTTP server) in this process
(tests/downstream.py); tokenpulse is the real service, fed over its real sockets.
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.certs import self_signed
from tests.conftest import scalar, sql
from tests.downstream import GrpcDownstream, HttpDownstream
from tests.otlp import kv, request, span
from tokenpulse.enrich.attribute import pseudonymize

PB = {"Content-Type": "application/x-protobuf"}
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.response.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 100}
USER_KEY = "test-key-0123456789abcdef"  # make_service's user_id_key


def post(svc, body: bytes, headers=PB):
    return requests.post(f"http://127.0.0.1:{svc.http.port}/v1/traces", data=body, headers=headers, timeout=10)


def metric(svc, name: str, **labels) -> float:
    """Sum of the /metrics series called ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def ours(s: Span) -> dict:
    out = {}
    for a in s.attributes:
        if a.key.startswith("tokenpulse."):
            v = a.value
            out[a.key] = getattr(v, v.WhichOneof("value"))
    return out


def without_ours(s: Span) -> Span:
    c = Span()
    c.CopyFrom(s)
    keep = [a for a in c.attributes if not a.key.startswith("tokenpulse.")]
    del c.attributes[:]
    c.attributes.extend(keep)
    return c


@pytest.fixture
def downstream():
    d = GrpcDownstream().start()
    yield d
    d.stop()


def _agent_run(trace_id: bytes, user: str = "alice@example.com") -> list[Span]:
    """An agent span, its LLM call (with every optional OTLP field set) and an HTTP span."""
    agent = span(name="invoke_agent planner", trace_id=trace_id, kind=Span.SPAN_KIND_INTERNAL,
                 attrs={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner",
                        "gen_ai.usage.input_tokens": 2400, "gen_ai.usage.output_tokens": 200,
                        "tenant.id": "acme", "app.feature": "search", "user.id": user})
    chat = span(name="chat gpt-4o", trace_id=trace_id, parent=agent.span_id,
                attrs={**CHAT, "user.id": user, "tokenpulse.cost_usd": 999.0, "app.note": "kept as is"})
    chat.trace_state = "vendor=abc"
    chat.flags = 0x301
    chat.dropped_attributes_count = 3
    ev = chat.events.add(time_unix_nano=chat.start_time_unix_nano + 5, name="gen_ai.choice")
    ev.attributes.extend([kv("index", 0), kv("finish_reason", "stop")])
    link = chat.links.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), trace_state="x=1")
    link.attributes.append(kv("link.kind", "retry"))
    chat.status.code = 1
    chat.status.message = "fine"
    http = span(name="GET /search", trace_id=trace_id, parent=agent.span_id, kind=Span.SPAN_KIND_SERVER,
                attrs={"http.request.method": "GET", "http.response.status_code": 200})
    return [agent, chat, http]


def test_forwarded_spans_keep_every_field_and_gain_the_documented_attributes(make_service, downstream):
    svc = make_service(forward={"tempo": {"endpoint": downstream.endpoint, "headers": {"X-Scope-OrgID": "ops"}}})
    spans = _agent_run(bytes.fromhex("0af7651916cd43dd8448eb211c80319c"))
    sent = request(spans, service="fwd", resource={"deployment.environment": "prod", "enduser.id": "bob"})
    assert post(svc, sent.SerializeToString()).status_code == 200

    got = {s.name: s for s in downstream.wait_spans(3)}
    assert downstream.headers[0]["x-scope-orgid"] == "ops"
    (rs,) = downstream.requests[0].resource_spans
    # the resource's raw user id is replaced by its pseudonym; everything else is as sent
    res = {a.key: a.value.string_value for a in rs.resource.attributes}
    assert res == {"service.name": "fwd", "deployment.environment": "prod",
                   "enduser.id": pseudonymize(USER_KEY.encode(), "bob")}
    assert rs.scope_spans[0].scope == sent.resource_spans[0].scope_spans[0].scope

    alice = pseudonymize(USER_KEY.encode(), "alice@example.com")
    bob = pseudonymize(USER_KEY.encode(), "bob")  # the resolved user: resource attributes win
    for original in spans:
        forwarded = got[original.name]
        expected = Span()
        expected.CopyFrom(original)
        # the only changes to the original fields: user ids pseudonymized, our namespace cleared
        for a in expected.attributes:
            if a.key == "user.id":
                a.value.string_value = alice
        keep = [a for a in expected.attributes if not a.key.startswith("tokenpulse.")]
        del expected.attributes[:]
        expected.attributes.extend(keep)
        assert without_ours(forwarded) == expected, original.name

    cost = (200 * 2.5 + 1000 * 1.25 + 100 * 10) / 1e6  # gpt-4o: $2.50 / $1.25 cached / $10 per M
    chat = ours(got["chat gpt-4o"])
    [[price_id]] = sql(svc, "SELECT price_id FROM spans WHERE name = 'chat gpt-4o' AND service = 'fwd'")
    assert chat == {
        "tokenpulse.cost_usd": pytest.approx(cost), "tokenpulse.cost.input_usd": pytest.approx(200 * 2.5 / 1e6),
        "tokenpulse.cost.cache_read_usd": pytest.approx(1000 * 1.25 / 1e6), "tokenpulse.cost.cache_write_usd": 0.0,
        "tokenpulse.cost.output_usd": pytest.approx(100 * 10 / 1e6), "tokenpulse.cost.reasoning_usd": 0.0,
        "tokenpulse.price_id": price_id, "tokenpulse.price_status": "priced", "tokenpulse.feature": "search",
        "tokenpulse.tenant": "acme", "tokenpulse.agent_role": "planner", "tokenpulse.user_id": bob,
        "tokenpulse.unattributed": False, "tokenpulse.counted": True}
    assert "openai/gpt-4o" in price_id
    agent = ours(got["invoke_agent planner"])  # an agent span's tokens are an aggregate: not counted
    assert agent["tokenpulse.counted"] is False and agent["tokenpulse.excluded_reason"]
    assert ours(got["GET /search"]) == {  # not a GenAI span: attribution only, no price fields
        "tokenpulse.feature": "search", "tokenpulse.tenant": "acme", "tokenpulse.agent_role": "planner",
        "tokenpulse.user_id": bob, "tokenpulse.unattributed": False, "tokenpulse.counted": True}
    assert metric(svc, "tokenpulse_forward_spans_total", destination="tempo") == 3


def test_unattributed_spans_are_marked_and_the_genai_filter_sends_genai_spans_only(make_service):
    down = HttpDownstream().start()
    try:
        svc = make_service(forward={"llm-only": {"endpoint": down.endpoint, "protocol": "http/protobuf",
                                                 "spans": "genai", "headers": {"Authorization": "Bearer t0k"}}},
                           user_id_mode="drop")
        spans = [span(name="chat gpt-4o", attrs={**CHAT, "user.id": "carol"}),
                 span(name="SELECT users", attrs={"db.system": "postgresql"})]
        assert post(svc, request(spans, service="filtered").SerializeToString()).status_code == 200
        (chat,) = down.wait_spans(1)
        time.sleep(0.3)
        assert len(down.spans()) == 1 and chat.name == "chat gpt-4o"
        assert down.headers[0]["content-encoding"] == "gzip" and down.headers[0]["authorization"] == "Bearer t0k"
        attrs = {a.key for a in chat.attributes}
        assert "user.id" not in attrs and "tokenpulse.user_id" not in attrs  # drop mode: no user id at all
        got = ours(chat)
        assert got["tokenpulse.unattributed"] is True
        assert got["tokenpulse.tenant"] == got["tokenpulse.feature"] == "unattributed"
        assert "tokenpulse.agent_role" not in got
    finally:
        down.stop()


def test_json_requests_are_forwarded_as_protobuf_with_the_same_ids(make_service, downstream):
    svc = make_service(forward={"d": {"endpoint": f"http://{downstream.endpoint}", "compression": "none"}})
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
                              "scopeSpans": [{"scope": {"name": "ai"}, "spans": [
        {"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174", "name": "chat gpt-4o",
         "kind": 3, "startTimeUnixNano": str(time.time_ns()), "endTimeUnixNano": str(time.time_ns() + 10**6),
         "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                        {"key": "gen_ai.response.model", "value": {"stringValue": "gpt-4o"}},
                        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1000"}}]},
        {"traceId": "not-hex", "spanId": "EEE19B7EC3C1B175", "name": "broken"}]}]}]}
    r = post(svc, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["partialSuccess"]["rejectedSpans"] == "1"
    (s,) = downstream.wait_spans(1)
    assert s.trace_id.hex() == "5b8efff798038103d269b633813fc60c" and s.span_id.hex() == "eee19b7ec3c1b174"
    assert s.kind == Span.SPAN_KIND_CLIENT
    assert {a.key: a.value.int_value for a in s.attributes}["gen_ai.usage.input_tokens"] == 1000
    assert ours(s)["tokenpulse.cost_usd"] == pytest.approx(1000 * 2.5 / 1e6)


def test_an_exporter_retry_is_not_forwarded_twice(make_service, downstream):
    svc = make_service(forward={"d": {"endpoint": downstream.endpoint}})
    body = request([span(attrs=CHAT) for _ in range(4)], service="retried").SerializeToString()
    assert post(svc, body).status_code == 200
    downstream.wait_spans(4)
    assert post(svc, body).status_code == 200  # the same spans again: stored once, forwarded once
    time.sleep(0.5)
    assert len(downstream.spans()) == 4


def test_downstream_outage_never_slows_ingestion_and_is_visible_in_metrics(make_service):
    down = GrpcDownstream().start()
    port = down.port
    down.stop()  # the downstream is down from the start
    svc = make_service(forward={"down": {"endpoint": f"127.0.0.1:{port}", "queue_spans": 200, "timeout_s": 1,
                                         "retry": {"initial_s": 0.1, "max_s": 0.2, "max_elapsed_s": 120}}})
    latencies = []
    for _ in range(10):
        body = request([span(attrs=CHAT) for _ in range(50)], service="outage").SerializeToString()
        t0 = time.monotonic()
        assert post(svc, body).status_code == 200  # acknowledged on storage alone
        latencies.append(time.monotonic() - t0)
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'outage'")) == 500
    assert max(latencies) < 1.0, latencies  # a 1 s forward timeout never shows in the answer
    deadline = time.monotonic() + 10
    while metric(svc, "tokenpulse_forward_retries_total", destination="down") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(svc, "tokenpulse_forward_retries_total", destination="down") >= 2
    assert metric(svc, "tokenpulse_forward_up", destination="down") == 0
    dropped = metric(svc, "tokenpulse_forward_dropped_spans_total", destination="down", reason="queue_full")
    queued = metric(svc, "tokenpulse_forward_queue_spans", destination="down")
    assert dropped >= 250 and queued <= 200  # the queue stayed bounded: the overflow was dropped, counted

    back = GrpcDownstream().start(port)  # the downstream returns on the same address
    try:
        in_flight = 500 - dropped  # queued + the batch being retried
        back.wait_spans(int(in_flight), timeout=20)
        deadline = time.monotonic() + 5
        while metric(svc, "tokenpulse_forward_up", destination="down") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(svc, "tokenpulse_forward_spans_total", destination="down") == in_flight
        assert metric(svc, "tokenpulse_forward_up", destination="down") == 1
    finally:
        back.stop()


def test_retry_info_is_honoured_and_refusals_are_counted_not_retried(make_service, downstream):
    svc = make_service(forward={"d": {"endpoint": downstream.endpoint, "retry": {"initial_s": 5}}})
    downstream.errors = [("UNAVAILABLE", 0.2), ("RESOURCE_EXHAUSTED", 0.2)]  # both retryable: RetryInfo
    t0 = time.monotonic()
    assert post(svc, request([span(attrs=CHAT)], service="r1").SerializeToString()).status_code == 200
    downstream.wait_spans(1, timeout=10)
    # the downstream's 0.2 s delays were used, not the 5 s back-off
    assert time.monotonic() - t0 < 4 and downstream.attempts == 3
    assert metric(svc, "tokenpulse_forward_retries_total", destination="d") == 2

    downstream.errors = [("INVALID_ARGUMENT", None)]  # not retryable: dropped, counted
    assert post(svc, request([span(attrs=CHAT) for _ in range(2)], service="r2").SerializeToString()).status_code == 200
    deadline = time.monotonic() + 10
    while metric(svc, "tokenpulse_forward_dropped_spans_total", reason="rejected") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(svc, "tokenpulse_forward_dropped_spans_total", destination="d", reason="rejected") == 2
    assert downstream.attempts == 4

    downstream.reject_spans = 1  # partial success: one span refused, counted, not retried
    assert post(svc, request([span(attrs=CHAT) for _ in range(3)], service="r3").SerializeToString()).status_code == 200
    downstream.wait_spans(4)
    time.sleep(0.3)
    assert downstream.attempts == 5
    assert metric(svc, "tokenpulse_forward_dropped_spans_total", destination="d", reason="partial") == 1
    assert metric(svc, "tokenpulse_forward_spans_total", destination="d") == 1 + 2


def test_http_destination_retries_after_retry_after_and_drops_on_400(make_service, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    down = HttpDownstream().start()
    try:
        svc = make_service(forward={"h": {"endpoint": down.endpoint + "/", "protocol": "http/protobuf",
                                          "headers": {"authorization": "Bearer fwd-s3cret"},
                                          "retry": {"initial_s": 0.1}}})
        down.errors = [(429, 1), (503, None)]  # Retry-After: 1 s; then no delay given: own back-off
        t0 = time.monotonic()
        assert post(svc, request([span(attrs=CHAT)], service="h1").SerializeToString()).status_code == 200
        down.wait_spans(1, timeout=10)
        assert down.attempts == 3 and time.monotonic() - t0 >= 1.0  # waited as the 429 asked
        down.errors = [(400, None)]
        assert post(svc, request([span(attrs=CHAT)], service="h2").SerializeToString()).status_code == 200
        deadline = time.monotonic() + 10
        while metric(svc, "tokenpulse_forward_dropped_spans_total", reason="rejected") < 1 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(svc, "tokenpulse_forward_dropped_spans_total", destination="h", reason="rejected") == 1
        assert down.attempts == 4
        assert down.headers[-1]["authorization"] == "Bearer fwd-s3cret"
        # the refusal and the retries are logged, by destination name, never with its credentials
        assert "forward to h: 1 spans refused, not retried (HTTP 400)" in caplog.text
        text = caplog.text + requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
        assert "fwd-s3cret" not in text
    finally:
        down.stop()


def test_sdk_exporter_to_tokenpulse_to_downstream(make_service, downstream):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    svc = make_service(forward={"next": {"endpoint": downstream.endpoint, "spans": "genai"}})
    tp = TracerProvider(resource=Resource.create({"service.name": "sdk-fwd", "tenant.id": "globex"}))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{svc.grpc.port}", insecure=True)))
    tracer = tp.get_tracer("tests")
    with tracer.start_as_current_span("handle request", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as s:
            s.set_attributes({**CHAT, "app.feature": "support"})
            sent_ctx = s.get_span_context()
    tp.shutdown()
    (chat,) = downstream.wait_spans(1)
    assert chat.trace_id == sent_ctx.trace_id.to_bytes(16, "big") and chat.span_id == sent_ctx.span_id.to_bytes(8, "big")
    got = ours(chat)
    assert got["tokenpulse.tenant"] == "globex" and got["tokenpulse.feature"] == "support"
    assert got["tokenpulse.price_status"] == "priced" and got["tokenpulse.cost_usd"] > 0
    [[stored]] = sql(svc, "SELECT count() FROM spans WHERE service = 'sdk-fwd'")
    assert int(stored) == 2  # both stored; only the GenAI one forwarded


def test_own_telemetry_traces_and_metrics_reach_an_otlp_backend(make_service, downstream):
    svc = make_service(telemetry={"endpoint": downstream.endpoint, "interval_s": 0.5, "service_name": "tp-test"})
    assert post(svc, request([span(attrs=CHAT)], service="self").SerializeToString()).status_code == 200
    deadline = time.monotonic() + 20
    names: set = set()
    while time.monotonic() < deadline:
        names = {s.name for s in downstream.spans()}
        if {"tokenpulse.export", "tokenpulse.insert"} <= names and \
                "tokenpulse_spans_received" in downstream.metric_names():
            break
        time.sleep(0.2)
    assert {"tokenpulse.export", "tokenpulse.insert"} <= names
    export = next(s for s in downstream.spans() if s.name == "tokenpulse.export")
    attrs = {a.key: a.value for a in export.attributes}
    assert attrs["transport"].string_value == "http" and attrs["spans"].int_value == 1
    assert attrs["outcome"].string_value == "ok"
    res = {a.key: a.value.string_value for a in downstream.requests[0].resource_spans[0].resource.attributes}
    assert res["service.name"] == "tp-test"
    metrics = downstream.metric_names()
    assert {"tokenpulse_spans_received", "tokenpulse_queue_spans", "process_resident_memory_bytes",
            "tokenpulse_storage_insert_seconds_count"} <= metrics
    # the values are /metrics' own: spans received over http is the same number in both views
    received = [dp.as_double or dp.as_int for r in downstream.metric_requests for rm in r.resource_metrics
                for sm in rm.scope_metrics for m in sm.metrics if m.name == "tokenpulse_spans_received"
                for dp in m.sum.data_points
                if {a.key: a.value.string_value for a in dp.attributes}.get("transport") == "http"]
    assert received and received[-1] == metric(svc, "tokenpulse_spans_received_total", transport="http")


def test_tls_and_mtls_destinations_over_grpc_and_http(make_service, tmp_path):
    cert, key = self_signed(tmp_path)  # for localhost and 127.0.0.1; also the client's, and the CA
    grpc_down = GrpcDownstream().start(tls=(cert, key), client_ca=cert)  # mTLS: client certificate required
    http_down = HttpDownstream().start(tls=(cert, key))
    try:
        svc = make_service(forward={
            "g": {"endpoint": f"https://localhost:{grpc_down.port}",
                  "tls": {"ca_file": cert, "cert_file": cert, "key_file": key}},
            "h": {"endpoint": http_down.endpoint, "protocol": "http/protobuf", "tls": {"ca_file": cert}},
            "no-client-cert": {"endpoint": f"https://localhost:{grpc_down.port}", "tls": {"ca_file": cert},
                               "retry": {"initial_s": 0.1, "max_s": 0.1, "max_elapsed_s": 0.5}}})
        assert post(svc, request([span(attrs=CHAT)], service="tls").SerializeToString()).status_code == 200
        assert ours(grpc_down.wait_spans(1)[0])["tokenpulse.price_status"] == "priced"
        assert ours(http_down.wait_spans(1)[0])["tokenpulse.price_status"] == "priced"
        # without a client certificate the mTLS downstream refuses the handshake: retried, then given up
        deadline = time.monotonic() + 10
        while metric(svc, "tokenpulse_forward_dropped_spans_total", destination="no-client-cert") < 1 and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(svc, "tokenpulse_forward_dropped_spans_total", destination="no-client-cert",
                      reason="retries_exhausted") == 1
        assert len(grpc_down.spans()) == 1
    finally:
        grpc_down.stop()
        http_down.stop()

"""Attribution: key order, unattributed, trace-level tags, agent roles, privacy, tag-or-reject;
and the duplicate-call step."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from tests.enrich_helpers import CLIENT, INTERNAL, batch_of
from tokenpulse.enrich.attribute import Attributor, pseudonymize
from tokenpulse.enrich.calls import DuplicateCalls
from tokenpulse.enrich.normalize import normalize

KEY = b"k" * 32


def test_resource_first_then_span_and_unattributed():
    b = batch_of(("a", INTERNAL, {"tenant.id": "span-tenant", "app.feature": "search", "http.route": "/q"}),
                 ("b", INTERNAL, {}), resource={"tenant.id": "res-tenant", "deployment.environment.name": "prod"})
    b, rejects = Attributor(user_id_mode="raw")(b)
    assert rejects == []
    assert b.tenant == ["res-tenant", "res-tenant"]
    assert b.feature == ["search", "unattributed"]
    assert b.route == ["/q", ""] and b.environment == ["prod", "prod"]


def test_library_spellings():
    b = batch_of(("a", CLIENT, {"traceloop.association.properties.customer_id": "acme",
                                "traceloop.association.properties.user_id": "u1",
                                "traceloop.association.properties.session_id": "s1"}),
                 ("b", CLIENT, {"ai.telemetry.metadata.tenantId": "beta", "ai.telemetry.functionId": "summarize",
                                "ai.telemetry.metadata.userId": "u2", "ai.telemetry.metadata.sessionId": "s2"}),
                 ("c", CLIENT, {"langfuse.trace.metadata.tenant_id": "gamma", "langfuse.user.id": "u3",
                                "langfuse.session.id": "s3", "gen_ai.conversation.id": "conv-3"}))
    b, _ = Attributor(user_id_mode="raw")(b)
    assert b.tenant == ["acme", "beta", "gamma"]
    assert b.feature == ["unattributed", "summarize", "unattributed"]
    assert b.user_id == ["u1", "u2", "u3"]
    assert b.session_id == ["s1", "s2", "conv-3"]  # gen_ai.conversation.id comes first


def test_configured_keys_replace_defaults():
    b = batch_of(("a", CLIENT, {"org.slug": "acme", "tenant.id": "ignored"}))
    b, _ = Attributor(keys={"tenant": ("org.slug",)}, user_id_mode="raw")(b)
    assert b.tenant == ["acme"]


def test_trace_tags_fill_spans_in_the_same_request_and_later_ones():
    tid, root = os.urandom(16), os.urandom(8)
    child = os.urandom(8)
    attributor = Attributor(user_id_mode="raw")
    b = batch_of(("llm", CLIENT, {}, {"trace_id": tid, "parent": child}),  # arrives first in the request
                 ("tool", INTERNAL, {}, {"trace_id": tid, "span_id": child, "parent": root}),
                 ("root", INTERNAL, {"tenant.id": "acme", "app.feature": "triage", "user.id": "u"},
                  {"trace_id": tid, "span_id": root}))
    b, _ = attributor(b)
    assert b.tenant == ["acme"] * 3 and b.feature == ["triage"] * 3 and b.user_id == ["u"] * 3
    later, _ = attributor(batch_of(("late", CLIENT, {}, {"trace_id": tid, "parent": root})))
    assert later.tenant == ["acme"]
    other, _ = attributor(batch_of(("other", CLIENT, {})))
    assert other.tenant == ["unattributed"]


def test_agent_role_from_nearest_ancestor():
    tid, planner, step = os.urandom(16), os.urandom(8), os.urandom(8)
    attributor = Attributor(user_id_mode="raw")
    first, _ = attributor(batch_of(
        ("invoke_agent planner", INTERNAL, {"gen_ai.agent.name": "planner"}, {"trace_id": tid, "span_id": planner}),
        ("step", INTERNAL, {}, {"trace_id": tid, "span_id": step, "parent": planner})))
    b, _ = attributor(batch_of(("chat", CLIENT, {}, {"trace_id": tid, "parent": step}),
                               ("invoke_agent worker", INTERNAL, {"gen_ai.agent.name": "worker"},
                                {"trace_id": tid, "parent": planner})))
    assert first.agent_role == ["planner", "planner"]
    assert b.agent_role == ["planner", "worker"]


def test_user_ids_pseudonymized_everywhere_they_are_stored():
    b = batch_of(("a", CLIENT, {"user.id": "alice@example.com"}), resource={"enduser.id": "alice@example.com"})
    b, _ = Attributor(user_id_mode="pseudonymize", user_id_key=KEY)(b)
    expected = hmac.new(KEY, b"alice@example.com", hashlib.sha256).hexdigest()[:32]
    assert b.user_id == [expected] == [pseudonymize(KEY, "alice@example.com")]
    assert b.attributes[0]["user.id"] == expected and b.resource_attributes[0]["enduser.id"] == expected
    assert "alice" not in repr(b.attributes) + repr(b.resource_attributes)
    dropped, _ = Attributor(user_id_mode="drop")(batch_of(("a", CLIENT, {"user.id": "bob"})))
    assert dropped.user_id == [""] and "user.id" not in dropped.attributes[0]
    raw, _ = Attributor(user_id_mode="raw")(batch_of(("a", CLIENT, {"user.id": "bob"})))
    assert raw.user_id == ["bob"] and raw.attributes[0]["user.id"] == "bob"
    with pytest.raises(ValueError):
        Attributor(user_id_mode="pseudonymize", user_id_key=None)


def test_tag_or_reject():
    b = batch_of(("ok", CLIENT, {"tenant.id": "t", "app.feature": "f"}), ("no-feature", CLIENT, {"tenant.id": "t"}),
                 ("nothing", CLIENT, {}))
    b, rejects = Attributor(user_id_mode="raw", require=("tenant", "feature"))(b)
    assert b.name == ["ok"]
    assert len(rejects) == 2 and "'no-feature' has no feature" in rejects[0]
    assert "'nothing' has no tenant or feature" in rejects[1]


def _chat(extra, **span):
    return ("chat", CLIENT, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 100,
                             "gen_ai.usage.output_tokens": 7, **extra}, span)


def test_same_call_reported_twice_is_counted_once():
    tid, outer = os.urandom(16), os.urandom(8)
    calls = DuplicateCalls()
    # Provider SDK span inside an instrumentation span, same counts, exported in one request.
    b = calls(normalize(batch_of(_chat({}, trace_id=tid, parent=outer), _chat({}, trace_id=tid, span_id=outer))))
    assert b.counted == [1, 0] and b.excluded_reason[1] == f"duplicate_of:{b.span_id[0]}"
    assert b.input_tokens == [100, 0]
    # The same response id in two requests.
    first = calls(normalize(batch_of(_chat({"gen_ai.response.id": "chatcmpl-1"}, trace_id=tid))))
    second = calls(normalize(batch_of(_chat({"gen_ai.response.id": "chatcmpl-1"}, trace_id=tid))))
    assert first.counted == [1] and second.counted == [0]
    # Same counts but not parent/child, no shared response id: two real calls (an agent loop).
    loop = calls(normalize(batch_of(_chat({}, trace_id=tid), _chat({}, trace_id=tid))))
    assert loop.counted == [1, 1]


def test_the_memories_are_bounded_and_forget_the_oldest_first():
    tid = os.urandom(16)
    calls = DuplicateCalls(max_entries=3)
    for i in range(5):  # responses 0..4: only 2, 3 and 4 are remembered
        calls(normalize(batch_of(_chat({"gen_ai.response.id": f"r{i}"}, trace_id=tid))))
    assert max(len(calls._by_response), len(calls._calls), len(calls._children), len(calls._by_output)) <= 3
    again = calls(normalize(batch_of(_chat({"gen_ai.response.id": "r4"}, trace_id=tid))))
    assert again.counted == [0]  # still known
    forgotten = calls(normalize(batch_of(_chat({"gen_ai.response.id": "r0"}, trace_id=tid))))
    assert forgotten.counted == [1]  # the oldest was forgotten

    attributor = Attributor(user_id_mode="raw")
    attributor.memory.max_traces, attributor.memory.max_spans = 2, 2
    traces = [os.urandom(16) for _ in range(3)]
    for t in traces:  # tagged roots of three traces
        attributor(batch_of(("root", INTERNAL, {"tenant.id": "t-" + t.hex()[:4]}, {"trace_id": t})))
    assert len(attributor.memory.traces) == 2 and len(attributor.memory.roles) == 2
    children, _ = attributor(batch_of(*[("child", CLIENT, {}, {"trace_id": t, "parent": os.urandom(8)})
                                        for t in traces]))
    assert children.tenant == ["unattributed", "t-" + traces[1].hex()[:4], "t-" + traces[2].hex()[:4]]


def test_outcome_attribute():
    b = batch_of(("a", CLIENT, {"app.outcome": "Success"}), ("b", CLIENT, {"app.outcome": "timeout"}),
                 ("c", CLIENT, {}), resource={})
    b, _ = Attributor(user_id_mode="raw", outcome_attribute="app.outcome",
                      outcome_success_values=("success", "ok"))(b)
    assert b.outcome == ["success", "failure", ""]
    off, _ = Attributor(user_id_mode="raw")(batch_of(("a", CLIENT, {"app.outcome": "success"})))
    assert off.outcome == [""]


def _two_scopes(*spans_by_scope):
    """One request whose spans come from several instrumentation scopes: [(scope, [span, ...]), ...]."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tokenpulse.otlp.decode import decode_protobuf

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for scope, spans in spans_by_scope:
        ss = rs.scope_spans.add()
        ss.scope.name = scope
        ss.spans.extend(spans)
    return decode_protobuf(req.SerializeToString()).batch


def _usage(i, o, model="claude-sonnet-4-5", **extra):
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": i, "gen_ai.usage.output_tokens": o, **extra}


def test_siblings_from_two_instrumentations_are_one_call_but_one_scopes_alike_calls_are_two():
    from tests.otlp import span
    from tokenpulse.enrich.normalize import normalize_calls

    tid, root, t0 = os.urandom(16), os.urandom(8), 1_800_000_000_000_000_000

    def run(batch):
        b, inferred = normalize_calls(batch)
        return DuplicateCalls()(b, inferred)

    # OpenInference's messages.stream span beside the Anthropic SDK's own span (recorded shape): siblings,
    # no shared response id, equal counts -> one call; the SDK's span is kept (quirks rank).
    b = run(_two_scopes(
        ("openinference.instrumentation.anthropic", [span("messages.stream", tid, os.urandom(8), root, t0, 6_000_000,
                                                          attrs=_usage(182, 111))]),
        ("com.anthropic.sdk.python", [span("anthropic.messages.create", tid, os.urandom(8), root, t0 + 1_000_000,
                                           5_000_000, attrs=_usage(182, 111, **{"gen_ai.response.id": "msg_1"}))])))
    assert b.counted == [0, 1] and b.excluded_reason[0] == f"duplicate_of:{b.span_id[1]}"
    # One library's two parallel calls, alike in every count: two calls.
    b = run(_two_scopes(("one.scope", [span("chat", tid, os.urandom(8), root, t0, 5_000_000, attrs=_usage(10, 256)),
                                       span("chat", tid, os.urandom(8), root, t0, 5_000_000, attrs=_usage(10, 256))])))
    assert b.counted == [1, 1]
    # Counts under the other cache semantics (one library adds the cache, the other does not).
    b = run(_two_scopes(
        ("lib.a", [span("chat", tid, os.urandom(8), root, t0, 5_000_000,
                        attrs=_usage(1100, 9, **{"gen_ai.usage.cache_read.input_tokens": 1000}))]),
        ("lib.b", [span("chat", tid, os.urandom(8), root, t0, 5_000_000,
                        attrs=_usage(100, 9, model="claude-sonnet-4-5-20250929",
                                     **{"gen_ai.usage.cache_read.input_tokens": 1000, "gen_ai.provider.name": ""}))])))
    assert sorted(b.counted) == [0, 1] and b.input_tokens[b.counted.index(1)] == 1100
    # A stream without usage reported by two instrumentations (parent and child): one call.
    outer = os.urandom(8)
    b = run(_two_scopes(("lib.a", [span("openai.chat", tid, outer, root, t0, 24_000_000,
                                        attrs={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"})]),
                        ("lib.b", [span("chat gpt-4o", tid, os.urandom(8), outer, t0 + 500_000, 23_000_000,
                                        attrs={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                                               "gen_ai.response.id": "c1"})])))
    assert sorted(b.counted) == [0, 1]
    # Two calls without usage that do not overlap in time: two calls.
    b = run(_two_scopes(("lib.a", [span("chat", tid, os.urandom(8), root, t0, 1_000_000,
                                        attrs={"gen_ai.operation.name": "chat"})]),
                        ("lib.b", [span("chat", tid, os.urandom(8), root, t0 + 5_000_000, 1_000_000,
                                        attrs={"gen_ai.operation.name": "chat"})])))
    assert b.counted == [1, 1]


def test_a_hand_written_span_with_usage_is_a_call_unless_its_children_are():
    from tests.otlp import span
    from tokenpulse.enrich.normalize import normalize_calls

    tid, t0 = os.urandom(16), 1_800_000_000_000_000_000
    mine = {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 500, "gen_ai.usage.output_tokens": 50}
    calls = DuplicateCalls()
    b, inferred = normalize_calls(batch_of(("my call", INTERNAL, mine, dict(trace_id=tid, start=t0))))
    assert calls(b, inferred).counted == [1] and b.operation == ["chat"]
    # A workflow span summing its two calls, exported after them (children end first).
    parent = os.urandom(8)
    kids = [("chat", CLIENT, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                              "gen_ai.usage.input_tokens": 200 + k, "gen_ai.usage.output_tokens": 20},
             dict(trace_id=tid, parent=parent, start=t0 + k * 10_000_000, duration_ns=5_000_000)) for k in range(2)]
    b, inferred = normalize_calls(batch_of(*kids))
    assert calls(b, inferred).counted == [1, 1]
    total = {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 401, "gen_ai.usage.output_tokens": 40}
    b, inferred = normalize_calls(batch_of(("workflow", INTERNAL, total,
                                            dict(trace_id=tid, span_id=parent, start=t0, duration_ns=30_000_000))))
    b = calls(b, inferred)
    assert b.counted == [0] and b.excluded_reason == ["aggregate:llm_children"]


def test_personal_keys_are_pseudonymized_like_user_ids():
    a = Attributor(user_id_mode="pseudonymize", user_id_key=b"k" * 16)
    b, _ = a(batch_of(("chat", CLIENT, {"user.id": "u1", "user.email": "ada@example.com", "user.full_name": "Ada L",
                                        "app.note": "kept"}), resource={"user.email": "ada@example.com"}))
    attrs, res = b.attributes[0], b.resource_attributes[0]
    assert "ada@example.com" not in (list(attrs.values()) + list(res.values()))
    assert attrs["user.email"] == res["user.email"] == pseudonymize(b"k" * 16, "ada@example.com")
    assert attrs["user.full_name"] == pseudonymize(b"k" * 16, "Ada L") and attrs["app.note"] == "kept"
    assert b.user_id[0] == pseudonymize(b"k" * 16, "u1")  # the email never becomes the user id
    dropped, _ = Attributor(user_id_mode="drop")(batch_of(("chat", CLIENT, {"user.email": "ada@example.com"})))
    assert "user.email" not in dropped.attributes[0]
    custom = Attributor(user_id_mode="pseudonymize", user_id_key=b"k" * 16, personal_keys=("app.customer_email",))
    b, _ = custom(batch_of(("chat", CLIENT, {"app.customer_email": "x@y.z", "user.email": "kept@y.z"})))
    assert b.attributes[0]["app.customer_email"] != "x@y.z" and b.attributes[0]["user.email"] == "kept@y.z"

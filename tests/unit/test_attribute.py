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

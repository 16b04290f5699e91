"""Enrichment end to end: real exporters -> receiver -> enrich -> ClickHouse."""

from __future__ import annotations

import json
import os
import time

import pytest
import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from tests.conftest import scalar, sql
from tests.integration.test_bad_input import post
from tests.otlp import request, span

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}


def _tracer(svc, service, resource=None):
    tp = TracerProvider(resource=Resource.create({"service.name": service, **(resource or {})}))
    tp.add_span_processor(SimpleSpanProcessor(HttpExporter(endpoint=f"http://127.0.0.1:{svc.http.port}/v1/traces")))
    return tp, tp.get_tracer("tests")


def test_costs_tokens_and_unknown_models_are_stored(make_service):
    svc = make_service()
    tp, tracer = _tracer(svc, "priced", {"tenant.id": "acme", "app.feature": "search"})
    with tracer.start_as_current_span("invoke_agent planner", kind=SpanKind.INTERNAL) as agent:
        agent.set_attributes({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner",
                              "gen_ai.usage.input_tokens": 2400, "gen_ai.usage.output_tokens": 200})
        for _ in range(2):
            with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as s:
                s.set_attributes({**CHAT, "gen_ai.response.model": "gpt-4o", "gen_ai.usage.input_tokens": 1200,
                                  "gen_ai.usage.cache_read.input_tokens": 1000, "gen_ai.usage.output_tokens": 100,
                                  "gen_ai.usage.cost": 0.0042})
        with tracer.start_as_current_span("chat mystery", kind=SpanKind.CLIENT) as s:
            s.set_attributes({**CHAT, "gen_ai.response.model": "mystery-model-9", "gen_ai.usage.input_tokens": 10})
    tp.shutdown()

    rows = sql(svc, """SELECT name, counted, excluded_reason, input_tokens, cost_usd, reported_cost_usd,
                              price_status, price_id, agent_role, tenant, feature
                       FROM spans WHERE service = 'priced' ORDER BY name, start_time""")
    by_name = {}
    for r in rows:
        by_name.setdefault(r[0], []).append(r)
    expected_cost = (200 * 2.5 + 1000 * 1.25 + 100 * 10) / 1e6
    for chat in by_name["chat gpt-4o"]:
        assert chat[1:4] == [1, "", 1200]
        assert chat[4] == pytest.approx(expected_cost) and chat[5] == pytest.approx(0.0042)
        assert chat[6] == "priced" and chat[7].startswith("genai-prices@") and "openai/gpt-4o" in chat[7]
        assert chat[8:] == ["", "acme", "search"]  # the agent span ended (was exported) after its calls
    roles = sql(svc, "SELECT name, agent_role FROM spans_attributed WHERE service = 'priced' ORDER BY name")
    assert roles == [["chat gpt-4o", "planner"], ["chat gpt-4o", "planner"], ["chat mystery", "planner"],
                     ["invoke_agent planner", "planner"]]
    agent = by_name["invoke_agent planner"][0]
    assert agent[1:5] == [0, "aggregate:invoke_agent", 0, None] and agent[6] == "not_counted"
    mystery = by_name["chat mystery"][0]
    assert mystery[4] is None and mystery[6] == "unknown_model"
    total = sql(svc, "SELECT sum(input_tokens), sum(cost_usd) FROM spans WHERE service = 'priced'")[0]
    assert int(total[0]) == 2410 and total[1] == pytest.approx(2 * expected_cost)  # the aggregate is not summed
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert 'tokenpulse_unknown_model_spans_total{model="mystery-model-9"} 1.0' in metrics


def test_out_of_order_trace_attribution_resolves_in_clickhouse(make_service):
    svc = make_service()
    tid, root = os.urandom(16), os.urandom(8)
    children = request([span(name="chat", trace_id=tid, parent=root, attrs={**CHAT, "gen_ai.usage.input_tokens": 5}),
                        span(name="tool", trace_id=tid, parent=root)], service="ooo")
    root_req = request([span(name="root", trace_id=tid, span_id=root,
                             attrs={"tenant.id": "acme", "app.feature": "triage", "user.id": "u-1"})], service="ooo")
    assert post(svc, children.SerializeToString()).status_code == 200  # children first, as exporters send them
    assert post(svc, root_req.SerializeToString()).status_code == 200
    # A later child of the same trace is attributed at ingest.
    late = request([span(name="late", trace_id=tid, parent=root)], service="ooo")
    assert post(svc, late.SerializeToString()).status_code == 200

    stored = dict(sql(svc, "SELECT name, tenant FROM spans WHERE service = 'ooo'"))
    assert stored == {"chat": "unattributed", "tool": "unattributed", "root": "acme", "late": "acme"}
    resolved = sql(svc, "SELECT name, tenant, feature, user_id FROM spans_attributed WHERE service = 'ooo' ORDER BY name")
    assert [r[1:3] for r in resolved] == [["acme", "triage"]] * 4
    assert len({r[3] for r in resolved}) == 1 and resolved[0][3] not in ("", "u-1")  # pseudonymized, same for all
    # the view's trace id column is named as in spans (it was `s.trace_id`, and this query failed)
    assert sql(svc, f"SELECT count() FROM spans_attributed WHERE trace_id = '{tid.hex()}'") == [[4]]


def test_tag_or_reject_through_a_real_exporter(make_service):
    svc = make_service(require_tags="tenant,feature")
    tp, tracer = _tracer(svc, "strict")
    with tracer.start_as_current_span("tagged") as s:
        s.set_attributes({"tenant.id": "acme", "app.feature": "search"})
    with tracer.start_as_current_span("untagged"):
        pass
    tp.shutdown()
    assert [r[0] for r in sql(svc, "SELECT name FROM spans WHERE service = 'strict'")] == ["tagged"]
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert 'tokenpulse_spans_rejected_total{reason="missing_tags",transport="http"} 1.0' in metrics

    body = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "strict-json"}},
        {"key": "tenant.id", "value": {"stringValue": "acme"}}]},
        "scopeSpans": [{"spans": [
            {"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": "no-feature",
             "startTimeUnixNano": str(time.time_ns())},
            {"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": "has-feature",
             "startTimeUnixNano": str(time.time_ns()),
             "attributes": [{"key": "app.feature", "value": {"stringValue": "chat"}}]}]}]}]}
    r = post(svc, json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "'no-feature' has no feature" in partial["errorMessage"]
    assert [r[0] for r in sql(svc, "SELECT name FROM spans WHERE service = 'strict-json'")] == ["has-feature"]


def test_same_call_from_two_instrumentations_counts_once(make_service):
    svc = make_service()
    tid, outer = os.urandom(16), os.urandom(8)
    usage = {**CHAT, "gen_ai.response.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 300,
             "gen_ai.usage.output_tokens": 20}
    inner = request([span(name="chat gpt-4o-mini", trace_id=tid, parent=outer, attrs=usage)], service="twice")
    wrapper = request([span(name="openai.chat", trace_id=tid, span_id=outer, attrs=usage)], service="twice")
    assert post(svc, inner.SerializeToString()).status_code == 200
    assert post(svc, wrapper.SerializeToString()).status_code == 200
    rows = sql(svc, "SELECT name, counted, excluded_reason FROM spans WHERE service = 'twice' ORDER BY name")
    assert rows[0][:2] == ["chat gpt-4o-mini", 1] and rows[1][:2] == ["openai.chat", 0]
    assert rows[1][2].startswith("duplicate_of:")
    assert int(scalar(svc, "SELECT sum(input_tokens) FROM spans WHERE service = 'twice'")) == 300


def test_raw_user_ids_are_not_stored_by_default(make_service):
    svc = make_service()
    req = request([span(attrs={"user.id": "alice@example.com"})], service="privacy",
                  resource={"enduser.id": "alice@example.com"})
    assert post(svc, req.SerializeToString()).status_code == 200
    row = sql(svc, "SELECT user_id, toJSONString(attributes), toJSONString(resource_attributes) "
                   "FROM spans WHERE service = 'privacy'")[0]
    assert len(row[0]) == 32 and "alice" not in json.dumps(row)


def test_token_and_cost_counters_on_metrics(make_service):
    svc = make_service()
    usage = {**CHAT, "gen_ai.response.model": "gpt-4o", "gen_ai.usage.input_tokens": 1200,
             "gen_ai.usage.cache_read.input_tokens": 1000, "gen_ai.usage.output_tokens": 100}
    req = request([span(attrs=usage), span(attrs=usage),
                   span(name="invoke_agent", attrs={"gen_ai.operation.name": "invoke_agent",
                                                    "gen_ai.usage.input_tokens": 99999})], service="counters")
    assert post(svc, req.SerializeToString()).status_code == 200
    assert post(svc, req.SerializeToString()).status_code == 200  # a retry: stored once, counted once
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert 'tokenpulse_tokens_total{model="gpt-4o",type="input"} 2400.0' in metrics
    assert 'tokenpulse_tokens_total{model="gpt-4o",type="cache_read"} 2000.0' in metrics
    assert 'tokenpulse_tokens_total{model="gpt-4o",type="output"} 200.0' in metrics
    cost = [ln for ln in metrics.splitlines() if ln.startswith('tokenpulse_cost_usd_total{model="gpt-4o"}')]
    assert float(cost[0].split()[-1]) == pytest.approx(2 * (200 * 2.5 + 1000 * 1.25 + 100 * 10) / 1e6)


def test_outcome_attribute_decides_run_success(make_service):
    svc = make_service(outcome_attribute="app.outcome")
    runs = []
    for root_status, child_outcome in ((2, "success"), (1, "failed"), (0, None)):
        tid, root = os.urandom(16), os.urandom(8)
        child_attrs = {**CHAT, "gen_ai.usage.input_tokens": 10}
        if child_outcome:
            child_attrs["app.outcome"] = child_outcome
        runs.append(request([span(trace_id=tid, parent=root, attrs=child_attrs),
                             span(name="root", trace_id=tid, span_id=root, status=root_status)], service="outcome"))
    for req in runs:
        assert post(svc, req.SerializeToString()).status_code == 200
    r = requests.get(f"http://127.0.0.1:{svc.admin.port}/api/panels/cost_per_successful_run", timeout=30).json()
    rows = [dict(zip(r["columns"], row)) for row in r["rows"]]
    # run 1: root ERROR but outcome success -> succeeded; run 2: root OK but outcome failed -> failed;
    # run 3: no outcome, root UNSET -> succeeded.
    assert sum(x["runs"] for x in rows) == 3 and sum(x["successful_runs"] for x in rows) == 2


def test_usage_a_rule_does_not_count_is_said_where_a_user_looks(make_service):
    """A tool span reporting tokens (no LLM call) is stored uncounted: /metrics counts it by rule, and
    the price_coverage panel (in `tokenpulse report`) shows it."""
    svc = make_service()
    tp, tracer = _tracer(svc, "uncounted", {"tenant.id": "acme", "app.feature": "search"})
    with tracer.start_as_current_span("execute_tool search", kind=SpanKind.INTERNAL) as s:
        s.set_attributes({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search",
                          "gen_ai.usage.input_tokens": 900})
    with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as s:
        s.set_attributes({**CHAT, "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10,
                          "gen_ai.usage.output_tokens": 2})
    tp.shutdown()
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert 'tokenpulse_excluded_spans_total{reason="not_inference"} 1.0' in metrics
    doc = requests.get(f"http://127.0.0.1:{svc.admin.port}/api/panels/price_coverage", params={"since": "1h"},
                       timeout=10).json()
    got = dict(zip(doc["columns"], doc["rows"][0]))
    assert int(got["not_inference_usage_spans"]) == 1 and int(got["calls"]) == 1

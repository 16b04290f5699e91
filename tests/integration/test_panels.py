"""Every panel on known data, sent through the real receiver and read through the admin API.

Scenario (all within the last few minutes):
  run A  tenant acme / feature search, root agent 'planner', session s-A:
         chat 1000 in / 100 out -> tool 'search' -> chat 1500/100 -> tool 'fetch' -> chat 2500/100 (gpt-4o)
         so 'search' added 1500 - (1000 + 100) = 400 tokens of context and 'fetch' 2500 - (1500 + 100) = 900
  run B  tenant beta / feature chat, root ends in ERROR, session s-B: one call 300/50 to an unknown model
  run C  no tenant or feature (unattributed): one call 200/20 to gpt-4o-mini, itself the root
"""

from __future__ import annotations

import os
import time

import pytest
import requests

from tests.integration.test_bad_input import post
from tests.otlp import request, span

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}
GPT4O = (2.5, 10.0)  # $ / 1M tokens, input and output (genai-prices snapshot)
GPT4O_MINI = (0.15, 0.6)


def _chat(tid, parent, start, inp, out, model="gpt-4o", session="", extra=None):
    attrs = {**CHAT, "gen_ai.response.model": model, "gen_ai.usage.input_tokens": inp,
             "gen_ai.usage.output_tokens": out, **(extra or {})}
    if session:
        attrs["gen_ai.conversation.id"] = session
    return span(name=f"chat {model}", trace_id=tid, parent=parent, start=start, duration_ns=10**9, attrs=attrs)


@pytest.fixture(scope="module")
def scenario(request_module_service):
    svc = request_module_service
    t0 = time.time_ns() - 300 * 10**9
    s = 10**9
    a, a_root = os.urandom(16), os.urandom(8)
    run_a = request([
        _chat(a, a_root, t0, 1000, 100, session="s-A", extra={"user.id": "u-1"}),
        span(name="execute_tool search", trace_id=a, parent=a_root, start=t0 + int(1.1 * s), duration_ns=s // 2,
             attrs={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}),
        _chat(a, a_root, t0 + 2 * s, 1500, 100, session="s-A", extra={"user.id": "u-1"}),
        span(name="execute_tool fetch", trace_id=a, parent=a_root, start=t0 + int(3.1 * s), duration_ns=s // 2,
             attrs={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "fetch"}),
        _chat(a, a_root, t0 + 4 * s, 2500, 100, session="s-A", extra={"user.id": "u-1"}),
        span(name="invoke_agent planner", trace_id=a, span_id=a_root, start=t0 - s // 2, duration_ns=7 * s,
             attrs={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}),
    ], service="agent-a", resource={"tenant.id": "acme", "app.feature": "search"})
    b, b_root = os.urandom(16), os.urandom(8)
    run_b = request([
        _chat(b, b_root, t0, 300, 50, model="mystery-model", session="s-B"),
        span(name="root", trace_id=b, span_id=b_root, start=t0 - s, duration_ns=3 * s, status=2),
    ], service="agent-b", resource={"tenant.id": "beta", "app.feature": "chat"})
    c = os.urandom(16)
    run_c = request([_chat(c, b"", t0, 200, 20, model="gpt-4o-mini")], service="agent-c")
    for req in (run_a, run_b, run_c):
        assert post(svc, req.SerializeToString()).status_code == 200
    return svc


@pytest.fixture(scope="module")
def request_module_service(embedded_backend, tmp_path_factory):
    from tests.conftest import _counter
    from tokenpulse.config import load_settings
    from tokenpulse.service import Service

    db = f"panels_{os.getpid()}_{next(_counter)}"
    settings = load_settings({"listen_host": "127.0.0.1", "admin_host": "127.0.0.1", "grpc_port": 0, "http_port": 0,
                              "spool_dir": str(tmp_path_factory.mktemp("spool")),
                              "admin_port": 0, "database": db, "user_id_key": "test-key-0123456789abcdef"}, env={})
    svc = Service(settings, backend=embedded_backend).start()
    yield svc
    svc.shutdown()
    embedded_backend.command(f"DROP DATABASE IF EXISTS {db}")
    embedded_backend.use_database("default")


def panel(svc, name, **params):
    r = requests.get(f"http://127.0.0.1:{svc.admin.port}/api/panels/{name}", params=params, timeout=30)
    assert r.status_code == 200, r.text
    doc = r.json()
    return [dict(zip(doc["columns"], row)) for row in doc["rows"]]


def cost(tokens_in, tokens_out, prices):
    return (tokens_in * prices[0] + tokens_out * prices[1]) / 1e6


def test_tokens_per_run(scenario):
    rows = panel(scenario, "tokens_per_run", since="1h")
    assert [(r["bucket_from"], r["bucket_to"], r["runs"]) for r in rows] == [(128, 256, 1), (256, 512, 1),
                                                                             (4096, 8192, 1)]
    assert {(r["total_runs"], r["p50_tokens"], r["p99_tokens"]) for r in rows} == {(3, 350, 5300)}
    assert panel(scenario, "tokens_per_run", since="1h", tenant="acme")[0]["total_runs"] == 1


def test_tokens_per_minute_by_agent_role(scenario):
    rows = panel(scenario, "tokens_per_minute_by_agent_role", since="1h")
    by_role = {}
    for r in rows:
        by_role[r["role"]] = by_role.get(r["role"], 0) + int(r["tokens"])
    assert by_role == {"planner": 5300, "(none)": 570}


def test_tool_call_tokens_and_outliers(scenario):
    rows = panel(scenario, "tool_call_tokens", since="1h")
    assert [(r["tool_name"], r["tool_calls"], r["total_tokens"], r["max_tokens"]) for r in rows] == [
        ("fetch", 1, 900, 900), ("search", 1, 400, 400)]
    out = panel(scenario, "tool_call_outliers", since="1h", limit=1)
    assert [(r["tool_name"], r["tokens"]) for r in out] == [("fetch", 900)]


def test_cost_by_dimension_keeps_unattributed(scenario):
    rows = panel(scenario, "cost_by_dimension", since="1h", by="tenant")
    by = {r["key"]: r for r in rows}
    assert set(by) == {"acme", "beta", "unattributed"}
    assert by["acme"]["cost_usd"] == pytest.approx(cost(5000, 300, GPT4O))
    assert by["unattributed"]["cost_usd"] == pytest.approx(cost(200, 20, GPT4O_MINI))
    # unknown model: still counted, its cost unknown (NULL, shown "unpriced"), never $0
    assert (by["beta"]["calls"], by["beta"]["cost_usd"], by["beta"]["unpriced_calls"]) == (1, None, 1)
    top1 = panel(scenario, "cost_by_dimension", since="1h", by="tenant", limit=1)
    assert [r["key"] for r in top1] == ["acme", "unattributed"]  # never cut by the top N
    models = {r["key"]: r["calls"] for r in panel(scenario, "cost_by_dimension", since="1h", by="model")}
    assert models == {"gpt-4o": 3, "gpt-4o-mini": 1, "mystery-model": 1}


def test_cost_by_user_and_hour(scenario):
    users = panel(scenario, "cost_by_user", since="1h")
    assert len(users) == 2 and users[0]["calls"] == 3 and len(users[0]["user_id"]) == 32  # pseudonymized u-1
    hours = panel(scenario, "cost_by_hour", since="1h", by="feature")
    assert {r["key"]: r["calls"] for r in hours} == {"search": 3, "chat": 1, "unattributed": 1}


def test_io_ratio(scenario):
    rows = panel(scenario, "io_ratio", since="1h")
    ratios = {(r["feature"], r["role"]): r["input_per_output"] for r in rows}
    assert ratios[("search", "planner")] == pytest.approx(5000 / 300, abs=0.01)
    assert ratios[("chat", "(none)")] == 6.0


def test_cost_per_successful_run(scenario):
    rows = panel(scenario, "cost_per_successful_run", since="1h")
    assert sum(r["runs"] for r in rows) == 3 and sum(r["successful_runs"] for r in rows) == 2  # B failed
    total = cost(5000, 300, GPT4O) + cost(200, 20, GPT4O_MINI)
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(total, abs=1e-6)
    assert rows[-1]["cost_per_successful_run"] == pytest.approx(total / 2, abs=1e-6)


def test_context_growth(scenario):
    rows = panel(scenario, "context_growth", since="1h", limit=1)
    assert [(r["session_id"], r["turn"], r["input_tokens"], r["growth"]) for r in rows] == [
        ("s-A", 1, 1000, 1500), ("s-A", 2, 1500, 1500), ("s-A", 3, 2500, 1500)]


def test_price_coverage(scenario):
    (row,) = panel(scenario, "price_coverage", since="1h")
    assert (row["calls"], row["unknown_model_calls"], row["unknown_model_calls_pct"]) == (5, 1, 20.0)
    assert row["unpriced_tokens"] == 350 and row["unknown_models"] == ["mystery-model"]


def test_panel_errors_are_clear(scenario):
    base = f"http://127.0.0.1:{scenario.admin.port}/api/panels"
    assert requests.get(base + "/nope", timeout=5).status_code == 404
    r = requests.get(base + "/cost_by_dimension", params={"by": "1; DROP TABLE spans"}, timeout=5)
    assert r.status_code == 400 and "by must be one of" in r.json()["error"]
    r = requests.get(base + "/tokens_per_run", params={"since": "soon"}, timeout=5)
    assert r.status_code == 400 and "not a duration" in r.json()["error"]
    listing = requests.get(base, timeout=5).json()
    assert {p["name"] for p in listing} >= {"tokens_per_run", "price_coverage", "tool_call_tokens"}


def test_report_cli(scenario, capsys):
    from tokenpulse.cli import main

    admin = f"http://127.0.0.1:{scenario.admin.port}"
    assert main(["report", "cost_by_dimension", "--by", "tenant", "--admin-url", admin, "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("key,calls,") and any(line.startswith("acme,3,") for line in out)
    assert main(["report", "--admin-url", admin]) == 0
    overview = capsys.readouterr().out
    for section in ("Spend by feature", "Top tenants", "Top models", "Tokens per run", "Price coverage"):
        assert section in overview
    assert main(["report", "tokens_per_run", "--by", "feature", "--admin-url", admin]) == 1
    assert "has no parameter by" in capsys.readouterr().err


def test_model_filter(scenario):
    rows = panel(scenario, "cost_by_dimension", since="1h", by="tenant", model="gpt-4o-mini")
    assert [(r["key"], r["calls"]) for r in rows] == [("unattributed", 1)]


def test_session_and_run_rollups(scenario):
    from tests.conftest import sql

    sessions = sql(scenario, """SELECT session_id, sum(llm_calls), sum(input_tokens), argMinMerge(first_input),
                                       argMaxMerge(last_input), max(tenant)
                                FROM sessions GROUP BY session_id ORDER BY session_id""")
    assert [[r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), r[5]] for r in sessions] == [
        ["s-A", 3, 5000, 1000, 2500, "acme"], ["s-B", 1, 300, 300, 300, "beta"]]
    runs = sql(scenario, """SELECT max(tenant), sum(llm_calls), sum(tool_calls), max(root_seen), max(root_error)
                            FROM runs GROUP BY trace_id ORDER BY max(tenant)""")
    assert [[r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])] for r in runs] == [
        ["", 1, 0, 1, 0], ["acme", 3, 2, 1, 0], ["beta", 1, 0, 1, 1]]

"""Scheduled rollups: the panels that read them answer the same whether the hours are rolled up,
partly rolled up or computed live; the rolled-up hours really are read from the rollups; and
re-running a chunk changes nothing.

Data: six hours of agent runs through the real receiver, every 20 minutes, two tenants, a
planner agent whose calls have no role of their own (resolved from the agent span) and tools
between the calls (their cost is the growth of the next call's input).
"""

from __future__ import annotations

import os
import time

import pytest
import requests

from tests.integration.test_bad_input import post
from tests.otlp import request, span
from tokenpulse.storage.rollups import RollupJob

PANELS = ["tokens_per_minute_by_agent_role", "io_ratio", "tool_call_tokens", "tool_call_outliers", "tokens_per_run",
          "cost_per_successful_run", "cost_by_user", "context_growth"]
ROLLUPS = {"role_minute", "role_feature_hour", "tool_call_growth", "run_summary", "user_hour",
           "session_turns"}
S = 10**9


def _run(t0: int, tenant: str, feature: str, base: int, user: str = "", session: str = "") -> bytes:
    tid, root = os.urandom(16), os.urandom(8)
    chat = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.response.model": "gpt-4o"}
    spans = [
        span(name="chat", trace_id=tid, parent=root, start=t0, duration_ns=S,
             attrs={**chat, "gen_ai.usage.input_tokens": base, "gen_ai.usage.output_tokens": 100}),
        span(name="execute_tool search", trace_id=tid, parent=root, start=t0 + int(1.1 * S), duration_ns=S // 2,
             attrs={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}),
        span(name="chat", trace_id=tid, parent=root, start=t0 + 2 * S, duration_ns=S,
             attrs={**chat, "gen_ai.usage.input_tokens": base + 700, "gen_ai.usage.output_tokens": 80}),
        span(name="execute_tool fetch", trace_id=tid, parent=root, start=t0 + int(3.1 * S), duration_ns=S // 2,
             attrs={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "fetch"}),
        span(name="chat", trace_id=tid, parent=root, start=t0 + 4 * S, duration_ns=S,
             attrs={**chat, "gen_ai.usage.input_tokens": base + 2000, "gen_ai.usage.output_tokens": 60}),
        span(name="invoke_agent planner", trace_id=tid, span_id=root, start=t0 - S // 2, duration_ns=7 * S,
             attrs={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}),
    ]
    return request(spans, service="rollups", resource={"tenant.id": tenant, "app.feature": feature,
                                                             **({"user.id": user} if user else {}),
                                                             **({"session.id": session} if session else {})}).SerializeToString()


def _panels(svc) -> dict:
    out = {}
    for name in PANELS:
        for tenant in ("", "acme"):
            limit = name.startswith("tool") or name in ("cost_by_user", "context_growth")
            params = {"since": "24h", "tenant": tenant, **({"limit": "100"} if limit else {})}
            r = requests.get(f"http://127.0.0.1:{svc.admin.port}/api/panels/{name}", params=params, timeout=30)
            assert r.status_code == 200, r.text
            rows = r.json()["rows"]
            if name == "tool_call_outliers":  # ties in tokens: compare as a set
                rows = sorted(rows)
            out[(name, tenant)] = rows
    return out


def test_panels_agree_live_partly_and_fully_rolled_up(make_service):
    svc = make_service(rollups="off")  # this test runs the job itself, at chosen times
    now = time.time()
    start = int((now - 6 * 3600) * 1e9)
    for i in range(18):  # every 20 minutes for six hours
        tenant, feature = ("acme", "search") if i % 2 else ("beta", "chat")
        user = ["ann", "bob", ""][i % 3]  # '' : calls without a user id are a row of their own
        session = f"{tenant}-{i // 4}"  # two runs 40 minutes apart: sessions cross hour boundaries
        assert post(svc, _run(start + i * 1200 * S, tenant, feature, 1000 + 10 * i, user, session)).status_code == 200
    live = _panels(svc)
    assert len(live[("cost_by_user", "")]) == 3
    assert len({row[0] for row in live[("context_growth", "")]}) == 10 and live[("context_growth", "acme")]
    assert live[("tool_call_tokens", "")] and live[("tokens_per_minute_by_agent_role", "acme")]
    roles = {row[1] for row in live[("tokens_per_minute_by_agent_role", "")]}
    assert roles == {"planner"}  # resolved from the agent span, which arrived with its run

    # the hours that ended three hours ago or more: panels read them from the rollups
    partly = RollupJob(svc.backend, settle_s=0, clock=lambda: now - 3 * 3600)
    done = partly.run_once()
    assert set(done) == ROLLUPS and min(done.values()) >= 3
    assert _panels(svc) == live

    # every hour, the current one included
    full = RollupJob(svc.backend, settle_s=0, clock=lambda: now + 2 * 3600)
    full.run_once()
    assert _panels(svc) == live
    assert full.run_once() == dict.fromkeys(ROLLUPS, 0)  # nothing due

    # a chunk done again (a crash before its state row) changes nothing
    rollup = {r.name: r for r in full.rollups}
    from tokenpulse.storage.rollups import _ts

    hour = (now - 4 * 3600) // 3600 * 3600
    for name in ROLLUPS:
        svc.backend.query(rollup[name].sql, "TSV", readonly=False, params={"from": _ts(hour), "to": _ts(hour + 3600)})
    assert _panels(svc) == live

    # and they really are read from the rollups: with the spans and runs gone, the panels still answer
    svc.backend.command(f"TRUNCATE TABLE {svc.settings.database}.spans")
    svc.backend.command(f"TRUNCATE TABLE {svc.settings.database}.runs")
    assert _panels(svc) == live
    assert live[("cost_by_user", "acme")]


def test_the_service_runs_the_job_at_start_and_records_how_far_it_is(make_service):
    before = make_service(rollups="off")  # spans two hours old are already stored when the evaluator starts
    assert post(before, _run(int((time.time() - 2 * 3600) * 1e9), "acme", "search", 1000)).status_code == 200
    svc = make_service(rollup_settle_s=0)  # same database
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and svc.rollup_job.watermark("tool_call_growth") is None:
        time.sleep(0.2)
    # the job ran at start; spans two hours old: their hour is rolled up and the watermark is this hour
    assert svc.rollup_job.watermark("tool_call_growth") == pytest.approx(time.time() // 3600 * 3600, abs=3600)
    rows = svc.backend.query("SELECT sum(tokens) FROM tool_call_growth", "TSV", readonly=True)
    assert float(rows) == (1700 - 1100) + (3000 - 1780)  # search: 1700 - (1000 + 100); fetch: 3000 - (1700 + 80)

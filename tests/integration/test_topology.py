"""Several stateless receivers and one evaluator on one database (README "Deploying").

In one process the services share the embedded engine, as separate processes
would share a ClickHouse server: spans of one trace hit different receivers,
attribution is resolved from storage, the evaluator alone evaluates, and the
receivers serve its throttle decisions.
"""

from __future__ import annotations

import os
import time

import requests

from tests.conftest import sql
from tests.integration.test_bad_input import post
from tests.otlp import request, span


def test_spans_of_one_trace_across_receivers_one_evaluator(make_service):
    a = make_service(role="receiver")
    b = make_service(role="receiver")
    evaluator = make_service(role="evaluator")
    assert evaluator.grpc is None and evaluator.http is None and evaluator.evaluator is not None
    assert a.evaluator is None and b.evaluator is None

    trace, root = os.urandom(16), os.urandom(8)
    now = time.time_ns()
    child = span(name="chat gpt-4o", trace_id=trace, parent=root, start=now, attrs={
        "gen_ai.operation.name": "chat", "gen_ai.response.model": "gpt-4o", "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 10})
    parent = span(name="invoke_agent planner", trace_id=trace, span_id=root, start=now - 10**9, duration_ns=5 * 10**9,
                  attrs={
                      "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"})
    assert post(b, request([child], service="agent").SerializeToString()).status_code == 200
    assert post(a, request([parent], service="agent", resource={"tenant.id": "acme", "app.feature": "search"})
                .SerializeToString()).status_code == 200
    # receiver b never saw the root: the row it stored is unattributed, the view resolves it from storage
    assert sql(a, f"SELECT tenant FROM spans WHERE span_id = '{child.span_id.hex()}'") == [["unattributed"]]
    assert sql(a, f"SELECT tenant, feature, agent_role FROM spans_attributed "
                  f"WHERE span_id = '{child.span_id.hex()}'") == [["acme", "search", "planner"]]

    # only the evaluator evaluates and decides; every receiver serves its decisions
    r = requests.post(f"http://127.0.0.1:{evaluator.admin.port}/api/throttle/acme", json={"for": "10m"}, timeout=5)
    assert r.status_code == 200 and r.json()["throttled"]
    assert requests.post(f"http://127.0.0.1:{a.admin.port}/api/throttle/acme", json={}, timeout=5).status_code == 503
    for receiver in (a, b):
        receiver.throttler.refresh()  # what its 2 s refresh loop does
        d = requests.get(f"http://127.0.0.1:{receiver.http.port}/v1/throttle/acme", timeout=5).json()
        assert d["throttled"] and d["source"] == "manual"
    assert requests.get(f"http://127.0.0.1:{a.admin.port}/api/alerts", timeout=5).status_code == 503
    assert requests.get(f"http://127.0.0.1:{evaluator.admin.port}/api/alerts", timeout=5).status_code == 200

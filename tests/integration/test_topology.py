"""Several stateless receivers and one evaluator on one database (docs/deploying.md).

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


def _retry_on_other_receiver(make_service, check: str) -> list:
    a = make_service(role="receiver", dedup_storage_check=check)
    b = make_service(role="receiver", dedup_storage_check=check)
    body = request([span(name="chat gpt-4o", attrs={
        "gen_ai.operation.name": "chat", "gen_ai.response.model": "gpt-4o", "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 10}) for _ in range(3)], service="retried").SerializeToString()
    assert post(a, body).status_code == 200
    assert post(b, body).status_code == 200  # the exporter's retry reached the other receiver
    return sql(a, "SELECT (SELECT count() FROM spans WHERE service = 'retried'), "
                  "(SELECT sum(calls) FROM usage_minute WHERE service = 'retried')")[0]


def test_a_retry_on_another_receiver_counts_once_with_the_storage_check(make_service):
    assert _retry_on_other_receiver(make_service, "on") == [3, 3]


def test_without_the_storage_check_the_rollup_counts_such_a_retry_twice(make_service):
    # what the README says: without routing by trace id or the check, only merges collapse the rows
    assert _retry_on_other_receiver(make_service, "off") == [6, 6]


def test_a_child_on_another_receiver_is_attributed_at_ingest_with_the_lookup(make_service):
    a = make_service(role="receiver")
    b = make_service(role="receiver", trace_tags_lookup="on")
    trace, root = os.urandom(16), os.urandom(8)
    now = time.time_ns()
    parent = span(name="root", trace_id=trace, span_id=root, start=now - 10**9, duration_ns=5 * 10**9)
    assert post(a, request([parent], service="split", resource={"tenant.id": "acme", "app.feature": "search"})
                .SerializeToString()).status_code == 200
    child = span(name="chat gpt-4o", trace_id=trace, parent=root, start=now, attrs={
        "gen_ai.operation.name": "chat", "gen_ai.response.model": "gpt-4o", "gen_ai.usage.input_tokens": 100})
    assert post(b, request([child], service="split").SerializeToString()).status_code == 200
    # stored attributed, so the ingest-time rollups (and the alert rules on them) see the tenant too
    assert sql(a, f"SELECT tenant, feature FROM spans WHERE span_id = '{child.span_id.hex()}'") == [["acme", "search"]]
    assert sql(a, "SELECT tenant, feature, sum(calls) FROM usage_minute WHERE service = 'split' "
                  "GROUP BY tenant, feature") == [["acme", "search", 1]]

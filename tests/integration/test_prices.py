"""Prices change while the service runs: reloaded on request, on SIGHUP and when the file changes;
a bad file keeps the prices in force and says why."""

from __future__ import annotations

import signal
import time

import requests

from tests.conftest import sql
from tests.integration.test_bad_input import post
from tests.otlp import n_spans

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "acme-llm-1", "gen_ai.response.model": "acme-llm-1",
        "gen_ai.usage.input_tokens": 1_000_000, "gen_ai.usage.output_tokens": 0}


def _file(path, price: float | str) -> None:
    path.write_text(f"prices:\n  - id: in-house\n    match: acme-llm-1\n    input: {price}\n    output: 1.0\n")


def _cost(svc, service: str):
    return sql(svc, f"SELECT cost_usd, price_id FROM spans WHERE service = '{service}'")


def test_reload_on_request_and_when_the_file_changes_keeps_old_prices_on_a_bad_file(make_service, tmp_path):
    prices = tmp_path / "prices.yaml"
    _file(prices, 2.0)
    svc = make_service(price_file=str(prices), price_reload_interval_s=1)
    admin = f"http://127.0.0.1:{svc.admin.port}"
    assert post(svc, n_spans(1, "before", attrs=CHAT).SerializeToString()).status_code == 200
    assert _cost(svc, "before") == [[2.0, "override:in-house"]]

    _file(prices, 3.0)
    r = requests.post(f"{admin}/api/prices/reload", timeout=10)
    assert r.status_code == 200 and r.json()["overrides"] == 1
    assert post(svc, n_spans(1, "after-reload", attrs=CHAT).SerializeToString()).status_code == 200
    assert _cost(svc, "after-reload") == [[3.0, "override:in-house"]]

    _file(prices, "cheap")  # invalid: the prices in force stay, and the answer says why
    r = requests.post(f"{admin}/api/prices/reload", timeout=10)
    assert r.status_code == 422 and "input must be a non-negative number" in r.json()["error"]
    assert post(svc, n_spans(1, "after-bad", attrs=CHAT).SerializeToString()).status_code == 200
    assert _cost(svc, "after-bad") == [[3.0, "override:in-house"]]
    metrics = requests.get(f"{admin}/metrics", timeout=5).text
    assert 'tokenpulse_price_reloads_total{outcome="failed"} 1.0' in metrics

    _file(prices, 5.0)  # no request: the file's change is noticed within the interval (1 s here)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not svc.prices.last.message.startswith("loaded"):
        time.sleep(0.2)
    assert svc.prices.last.ok and _probe(svc) == 5.0


def _probe(svc) -> float:
    """The price a new span gets now."""
    name = f"probe-{time.monotonic_ns()}"
    assert post(svc, n_spans(1, name, attrs=CHAT).SerializeToString()).status_code == 200
    return _cost(svc, name)[0][0]


def test_sighup_reloads_the_price_file(serve_process, tmp_path):
    prices = tmp_path / "prices.yaml"
    _file(prices, 2.0)
    proc = serve_process("--price-file", str(prices), "--price-reload-interval-s", "0")
    _file(prices, 7.0)
    proc.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "price reload (SIGHUP)" not in proc.read_log():
        time.sleep(0.2)
    assert "price reload (SIGHUP): loaded 1 price overrides" in proc.read_log()
    r = requests.post(f"http://127.0.0.1:{proc.http_port}/v1/traces", data=n_spans(1, "hup", attrs=CHAT)
                      .SerializeToString(), headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert r.status_code == 200
    assert proc.sql("SELECT cost_usd FROM spans WHERE service = 'hup'") == [[7.0]]
    assert proc.stop() == 0


# ---------------------------------------------------------------- re-pricing what is stored
import os  # noqa: E402

from tests.otlp import request, span  # noqa: E402


def _calls(model: str, n: int, start_ns: int, session: str) -> list:
    """n calls in one run (a root and its chat spans), two hours ago, with tenant, user and session."""
    trace = os.urandom(16)
    root = span(name="agent run", trace_id=trace, start=start_ns,
                attrs={"tenant.id": "acme", "app.feature": "triage"})
    calls = [span(name=f"chat {model}", trace_id=trace, parent=root.span_id, start=start_ns + i * 1000,
                  attrs={**CHAT, "gen_ai.request.model": model, "gen_ai.response.model": model,
                         "gen_ai.usage.input_tokens": 1_000_000, "user.id": "u-1", "session.id": session})
             for i in range(n)]
    return [root, *calls]


def _sums(svc) -> dict:
    q = lambda s: sql(svc, s)[0][0]  # noqa: E731
    return {
        "spans": q("SELECT round(sum(ifNull(cost_usd, 0)), 6) FROM spans FINAL WHERE service = 'rp'"),
        "unpriced_spans": q("SELECT count() FROM spans FINAL WHERE service = 'rp' AND price_status = 'unknown_model'"),
        "usage_minute": q("SELECT round(sum(cost_usd), 6) FROM usage_minute WHERE service = 'rp'"),
        "usage_unpriced": q("SELECT sum(unpriced_calls) FROM usage_minute WHERE service = 'rp'"),
        "usage_calls": q("SELECT sum(calls) FROM usage_minute WHERE service = 'rp'"),
        "user_minute": q("SELECT round(sum(cost_usd), 6) FROM user_minute WHERE tenant = 'acme'"),
        # as its readers do: one run per trace after aggregation (its rows merge in the background)
        "runs": q("SELECT round(sum(c), 6) FROM (SELECT trace_id, sum(cost_usd) AS c, max(service) AS s FROM runs "
                  "GROUP BY trace_id) WHERE s = 'rp'"),
        "run_summary": q("SELECT round(sum(cost_usd), 6) FROM run_summary FINAL WHERE tenant = 'acme'"),
        "sessions": q("SELECT round(sum(cost_usd), 6) FROM sessions WHERE session_id LIKE 'rp-%'"),
    }


def test_reprice_moves_spans_and_every_cost_rollup_and_panel_to_the_new_prices(make_service, tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    _file(prices, 2.0)  # acme-llm-1 at $2 per 1M input tokens; mystery-1 has no price yet
    svc = make_service(price_file=str(prices), price_reload_interval_s=0)
    admin = f"http://127.0.0.1:{svc.admin.port}"
    two_hours_ago = (int(time.time()) // 3600 - 2) * 3600 * 10**9 + 60 * 10**9
    spans = _calls("acme-llm-1", 3, two_hours_ago, "rp-s1") + _calls("mystery-1", 2, two_hours_ago, "rp-s2")
    assert post(svc, request(spans, service="rp").SerializeToString()).status_code == 200
    svc.rollup_job.run_once()  # the hour is settled: run_summary holds it
    before = _sums(svc)
    assert before["spans"] == 6.0 and before["unpriced_spans"] == 2 and before["usage_unpriced"] == 2
    assert before == {**before, "usage_minute": 6.0, "user_minute": 6.0, "runs": 6.0, "run_summary": 6.0,
                      "sessions": 6.0}

    prices.write_text("prices:\n  - id: in-house\n    match: acme-llm-1\n    input: 3.0\n    output: 1.0\n"
                      "  - id: mystery\n    match: mystery-1\n    input: 5.0\n    output: 1.0\n")
    assert requests.post(f"{admin}/api/prices/reload", timeout=10).status_code == 200

    dry = requests.post(f"{admin}/api/prices/reprice", json={"since": "1d", "dry_run": True}, timeout=60).json()
    assert dry["spans_changed"] == 5 and dry["cost_before_usd"] == 6.0 and dry["cost_after_usd"] == 19.0
    assert _sums(svc) == before  # a dry run writes nothing

    got = requests.post(f"{admin}/api/prices/reprice", json={"since": "1d", "actor": "finance"}, timeout=60).json()
    assert got["spans_changed"] == 5 and got["cost_after_usd"] == 19.0 and got["rollup_hours_rebuilt"] >= 1
    assert {m["model"]: m["spans_changed"] for m in got["by_model"]} == {"acme-llm-1": 3, "mystery-1": 2}
    after = _sums(svc)
    assert after == {"spans": 19.0, "unpriced_spans": 0, "usage_minute": 19.0, "usage_unpriced": 0,
                     "usage_calls": before["usage_calls"], "user_minute": 19.0, "runs": 19.0, "run_summary": 19.0,
                     "sessions": 19.0}, after
    # the panels read the rollups: the dashboard's spend agrees with spans
    panel = requests.get(f"{admin}/api/panels/cost_by_dimension", params={"since": "1d", "by": "model"},
                         timeout=30).json()
    assert round(sum(r[panel["columns"].index("cost_usd")] for r in panel["rows"]), 6) == 19.0
    statuses = sql(svc, "SELECT DISTINCT price_status FROM spans WHERE service = 'rp' AND counted = 1 "
                        "AND model != ''")
    assert statuses == [["priced"]]
    audit = sql(svc, "SELECT actor, spans_changed, cost_before_usd, cost_after_usd FROM reprice_audit")
    assert audit == [["finance", 5, 6.0, 19.0]]
    again = requests.post(f"{admin}/api/prices/reprice", json={"since": "1d"}, timeout=60).json()
    assert again["spans_changed"] == 0 and _sums(svc) == after  # idempotent
    from tokenpulse.cli import main

    assert main(["prices", "reprice", "--since", "1d", "--dry-run", "--admin-url", admin]) == 0
    assert "would change 0" in capsys.readouterr().out


def test_reprice_refuses_a_bad_range_clearly(make_service):
    svc = make_service()
    r = requests.post(f"http://127.0.0.1:{svc.admin.port}/api/prices/reprice", json={"since": "banana"}, timeout=10)
    assert r.status_code == 400 and "'banana'" in r.json()["error"]
    r = requests.post(f"http://127.0.0.1:{svc.admin.port}/api/prices/reprice", json={"since": "1h", "until": "2h"},
                      timeout=10)
    assert r.status_code == 409 and "--until must be after --since" in r.json()["error"]


def test_unknown_spend_is_shown_as_unpriced_never_as_zero(make_service, capsys):
    """`tokenpulse report` printed an unpriced model's spend as 0 (the dashboard $0.00)."""
    from tokenpulse.cli import main

    svc = make_service()
    admin = f"http://127.0.0.1:{svc.admin.port}"
    priced = {**CHAT, "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o",
              "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 1000}
    unknown = {**CHAT, "gen_ai.request.model": "mystery-2", "gen_ai.response.model": "mystery-2",
               "gen_ai.usage.input_tokens": 500}
    assert post(svc, n_spans(2, "unpriced", attrs=priced).SerializeToString()).status_code == 200
    assert post(svc, n_spans(3, "unpriced", attrs=unknown).SerializeToString()).status_code == 200
    panel = requests.get(f"{admin}/api/panels/cost_by_dimension", params={"by": "model"}, timeout=30).json()
    rows = {r[0]: dict(zip(panel["columns"], r)) for r in panel["rows"]}
    assert rows["mystery-2"]["cost_usd"] is None and rows["mystery-2"]["unpriced_calls"] == 3
    assert rows["mystery-2"]["unpriced_tokens"] == 1500 and rows["gpt-4o"]["cost_usd"] > 0
    assert main(["report", "cost_by_dimension", "--by", "model", "--admin-url", admin]) == 0
    out = capsys.readouterr().out
    assert "unpriced (1,500 tokens)" in out
    assert main(["report", "--admin-url", admin]) == 0
    assert "+ 3 unpriced calls (1,500 tokens)" in capsys.readouterr().out

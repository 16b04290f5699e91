"""Alert rules on real chDB data, the engine with real local webhook receivers, and restarts.

Spans go in through the real OTLP/HTTP receiver (timestamps set in the past
where a rule needs history); time is stepped by passing ``now`` to the
evaluator, never slept. The service under test runs with role=receiver so its
own evaluator does not race the one a test drives.
"""

from __future__ import annotations

import os
from dataclasses import replace
import time

import pytest
import requests

from tests.conftest import sql
from tests.integration.test_bad_input import post
from tests.otlp import request, span
from tests.webhooks import Receiver
from tokenpulse.alerts.engine import Evaluator, backend_query, check_rule
from tokenpulse.alerts.notify import build_notifiers, parse_channels
from tokenpulse.alerts.rules import RuleError, load_rules, parse_rule
from tokenpulse.alerts.store import AlertStore
from tokenpulse.alerts.throttle import THROTTLE_RULE, ThrottleBook, Throttler, throttle_rule
from tokenpulse.errors import ConfigError
from tokenpulse.metrics import Metrics

S = 10**9
MIN = 60
# An evaluation time 30 s into a minute; spans are placed relative to it.
NOW = (int(time.time()) // 60) * 60 - 30 * MIN + 30


def chat(start_s: float, inp: int, out: int, model="gpt-4o", trace=None, parent=b"", **attrs):
    a = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.response.model": model,
         "gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out, **attrs}
    return span(name=f"chat {model}", trace_id=trace, parent=parent, start=int(start_s * S), duration_ns=S // 2,
                attrs=a)


def tool(start_s: float, name: str, args: str, session: str):
    return span(name=f"execute_tool {name}", start=int(start_s * S), duration_ns=S // 10, kind=1,
                attrs={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                       "gen_ai.tool.call.arguments": args, "gen_ai.conversation.id": session})


def send(svc, spans, **resource):
    for i in range(0, len(spans), 500):
        r = post(svc, request(spans[i:i + 500], service="agent", resource=resource).SerializeToString())
        assert r.status_code == 200, r.text


@pytest.fixture
def svc(make_service):
    return make_service(role="receiver")


def rows(svc, name, now=NOW, **overrides):
    rules, errors = load_rules(overrides={name: overrides} if overrides else None)
    assert not errors
    return backend_query(svc.backend)(rules[name], now)


# ---------------------------------------------------------------- the built-in rules


def test_run_size_rate_pages_on_rate_not_one_run(svc):
    spans = []
    for i in range(4):  # four runs of 60k tokens in the last 5 minutes
        t = os.urandom(16)
        spans += [chat(NOW - 200 + i, 30000, 0, trace=t), chat(NOW - 100 + i, 29000, 1000, trace=t)]
    spans.append(chat(NOW - 400, 90000, 0))  # big, but outside the window
    spans.append(chat(NOW - 50, 40000, 0))  # inside, not big
    send(svc, spans, **{"tenant.id": "acme"})
    (row,) = rows(svc, "run_size_rate")
    assert int(row["value"]) == 4 and row["tenants"] == "acme" and len(row["example_traces"].split(", ")) == 3
    assert rows(svc, "run_size_rate", max_runs=4) == []
    assert rows(svc, "run_size_rate", now=NOW - 220) == []  # time is a parameter: before the runs, nothing


def _history(minutes, per_minute, role=None, tenant="acme"):
    """One span per minute for ``minutes`` whole minutes before the previous minute of NOW."""
    cur = NOW - NOW % 60
    extra = {"gen_ai.agent.name": role} if role else {}
    return [chat(cur - (m + 2) * 60 + 1, per_minute - per_minute // 10, per_minute // 10, **extra)
            for m in range(minutes)]


def test_token_rate_anomaly_against_the_trailing_median(svc):
    send(svc, _history(60, 10_000), **{"tenant.id": "acme"})
    cur = NOW - NOW % 60
    assert rows(svc, "token_rate_anomaly") == []  # calm: rate 0 in the current minute
    send(svc, [chat(cur + 5, 20_000, 5_000)], **{"tenant.id": "acme"})  # 25k/min = 2.5x: below 3x
    assert rows(svc, "token_rate_anomaly") == []
    send(svc, [chat(cur + 10, 20_000, 5_000)], **{"tenant.id": "acme"})  # 50k/min = 5x
    (row,) = rows(svc, "token_rate_anomaly")
    assert (int(row["value"]), int(row["baseline"]), row["ratio"]) == (50000, 10000, 5)
    # the previous minute counts for the part of it inside the sliding minute
    (row,) = rows(svc, "token_rate_anomaly", now=cur + 60 + 15)  # 45 s of the previous minute: 50k * 45/60
    assert int(row["value"]) == 37500
    # not enough history: no baseline, no alert
    assert rows(svc, "token_rate_anomaly", min_active_minutes=61) == []


def test_token_rate_anomaly_per_agent_role(svc):
    send(svc, _history(40, 10_000, role="planner") + _history(40, 10_000, role="worker"), **{"tenant.id": "acme"})
    cur = NOW - NOW % 60
    send(svc, [chat(cur + 5, 60_000, 0, **{"gen_ai.agent.name": "worker"}),
               chat(cur + 5, 12_000, 0, **{"gen_ai.agent.name": "planner"})], **{"tenant.id": "acme"})
    # only 40 of the 60 baseline minutes had traffic: the median counts the other 20 as 0 -> still 10k
    (row,) = rows(svc, "token_rate_anomaly_by_role", min_rate=1000)
    assert row["agent_role"] == "worker" and int(row["value"]) == 60000 and int(row["baseline"]) == 10000


def test_tenant_outlier_against_the_median_tenant(svc):
    cur = NOW - NOW % 60
    for tenant, tokens in (("a", 5000), ("b", 6000), ("c", 4000)):
        send(svc, [chat(cur + 1, tokens, 0)], **{"tenant.id": tenant})
    send(svc, [chat(cur + 2, 7000, 0)])  # unattributed: not a tenant
    assert rows(svc, "tenant_outlier", min_rate=1000) == []
    send(svc, [chat(cur + 3, 80_000, 0)], **{"tenant.id": "spiky"})
    (row,) = rows(svc, "tenant_outlier", min_rate=1000)
    # median of (5000, 6000, 4000, 80000) is the upper middle, 6000
    assert row["tenant"] == "spiky" and int(row["value"]) == 80000 and int(row["median_rate"]) == 6000
    assert int(row["tenants"]) == 4
    assert rows(svc, "tenant_outlier", min_rate=1000, min_tenants=5) == []
    assert len(rows(svc, "tenant_outlier")) == 1  # above the default floor of 20k tokens/min too
    assert rows(svc, "tenant_outlier", min_rate=100_000) == []


def _per_minute(tenant_tokens: dict[str, int], minutes: int) -> list:
    """(tenant, span) pairs: one call per tenant per whole minute, ``minutes`` minutes ending 2 before NOW's."""
    cur = NOW - NOW % 60
    return [(tenant, chat(cur - (m + 3) * 60 + 7, tokens - tokens // 10, tokens // 10))
            for tenant, tokens in tenant_tokens.items() for m in range(minutes)]


def _send_by_tenant(svc, pairs) -> None:
    by: dict[str, list] = {}
    for tenant, sp in pairs:
        by.setdefault(tenant, []).append(sp)
    for tenant, spans in by.items():
        send(svc, spans, **{"tenant.id": tenant})


def test_tenant_spike_against_its_own_baseline_in_seconds(svc):
    # a small tenant (10k/min) and a big steady one (600k/min = 60x the small one), an hour of history
    _send_by_tenant(svc, _per_minute({"small": 10_000, "big": 600_000}, 60))
    assert rows(svc, "tenant_spike") == []  # nothing in the last 20 s
    # the last 20 s: the big tenant at its usual rate (200k in 20 s), the small one at 10x its own
    # (spans end at start + 0.5 s, so the window [NOW-30, NOW] holds the calls that ended in it)
    _send_by_tenant(svc, [("big", chat(NOW - 18 + i, 100_000, 0)) for i in (0, 10)]
                    + [("small", chat(NOW - 18 + i, 5_000, 0)) for i in range(0, 20, 3)])
    assert rows(svc, "tenant_spike") == []  # 7 calls: fewer than min_calls (10), chance bunching
    (row,) = rows(svc, "tenant_spike", min_calls=7)
    # 7 calls x 5,000 = 35,000 tokens in the 20 s since the 10-second bucket the window starts in
    # (NOW - 20 s falls on a bucket's start)
    assert row["tenant"] == "small" and int(row["value"]) == 105_000 and int(row["baseline"]) == 10_000
    assert row["ratio"] == 10.5 and int(row["history_minutes"]) == 60 and int(row["window_s"]) == 20
    assert rows(svc, "tenant_spike", factor=11, min_calls=7) == []
    assert rows(svc, "tenant_spike", min_rate=110_000, min_calls=7) == []
    # 20 s later the window holds none of it: resolved within seconds too
    assert rows(svc, "tenant_spike", now=NOW + 40, min_calls=7) == []


def test_tenant_spike_on_a_fresh_install_pages_from_the_history_there_is(svc):
    _send_by_tenant(svc, _per_minute({"new": 10_000}, 4))  # four minutes of history
    _send_by_tenant(svc, [("new", chat(NOW - 10, 100_000, 0))])
    assert rows(svc, "tenant_spike", min_calls=1) == []  # 4 < min_history (5 minutes)
    (row,) = rows(svc, "tenant_spike", min_history=3, min_calls=1)
    assert int(row["history_minutes"]) == 4 and int(row["baseline"]) == 10_000


def _otlp_json(req) -> bytes:
    """An ExportTraceServiceRequest as OTLP/JSON (ids in hex, as the OTLP/JSON mapping requires)."""
    import base64
    import json

    from google.protobuf.json_format import MessageToDict

    doc = MessageToDict(req)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in sp:
                        sp[key] = base64.b64decode(sp[key]).hex()
    return json.dumps(doc).encode()


def test_import_gives_a_fresh_install_its_baseline_at_once(svc, tmp_path, capsys):
    from tokenpulse.cli import main

    history = [sp for _, sp in _per_minute({"imported": 10_000}, 30)]
    lines = [_otlp_json(request(history[i:i + 10], service="agent", resource={"tenant.id": "imported"}))
             for i in range(0, 30, 10)]
    path = tmp_path / "traces.jsonl"
    path.write_bytes(lines[0] + b"\n" + b"{not json\n" + b"\n".join(lines[1:]) + b"\n")
    code = main(["import", str(path), "--endpoint", f"http://127.0.0.1:{svc.http.port}"])
    out, err = capsys.readouterr()
    assert code == 1  # one document refused, named with its line; the other three went in
    assert f"{path}:2: refused: HTTP 400" in err
    assert "imported 30 spans in 3 requests; 1 documents not imported" in out
    _send_by_tenant(svc, [("imported", chat(NOW - 10, 100_000, 0))])
    (row,) = rows(svc, "tenant_spike", min_calls=1)
    assert row["tenant"] == "imported" and int(row["history_minutes"]) == 30 and int(row["baseline"]) == 10_000
    # a service that is not there: a clear line, no traceback
    code = main(["import", str(path), "--endpoint", "http://127.0.0.1:9", "--max-wait", "0"])
    out, err = capsys.readouterr()
    assert code == 1 and "not acknowledged after 0 s of retries (last: cannot connect:" in err


def test_tenant_outlier_spares_a_tenant_that_is_always_big(svc):
    # five tenants at 5k/min and one that has been at 12x that for an hour: normal for itself
    cur = NOW - NOW % 60
    _send_by_tenant(svc, _per_minute({"a": 5_000, "b": 5_000, "c": 5_000, "d": 5_000, "whale": 60_000}, 60))
    now_pairs = [(t, chat(cur + 1, 5_000, 0)) for t in "abcd"] + [("whale", chat(cur + 1, 60_000, 0))]
    _send_by_tenant(svc, now_pairs)
    assert rows(svc, "tenant_outlier", min_rate=1000, factor=10) == []
    # without its own history the same tenant is judged against the median alone, and says so
    (row,) = rows(svc, "tenant_outlier", min_rate=1000, factor=10, min_history=1000)
    assert row["tenant"] == "whale" and row["own"] == "no history of its own yet"
    # its own rate rising 4x too makes it an outlier again
    _send_by_tenant(svc, [("whale", chat(cur + 2, 180_000, 0))])
    (row,) = rows(svc, "tenant_outlier", min_rate=1000, factor=10)
    assert row["tenant"] == "whale" and row["own"] == "4 x its own baseline"


def test_user_surge_against_the_users_own_average(svc):
    two_days = NOW - 2 * 86400
    send(svc, [chat(two_days, 100_000, 0, **{"user.id": "steady"}),
               chat(two_days, 5_000_000, 0, **{"user.id": "heavy"})], **{"tenant.id": "acme"})
    recent = [chat(NOW - 60 * i, 2000, 0, **{"user.id": u}) for i in range(1, 15) for u in ("steady", "heavy", "new")]
    send(svc, recent, **{"tenant.id": "acme"})
    got = rows(svc, "user_surge")
    # steady: 28k over 15 min = 1,867/min vs 100k over the ~2 days since first seen = ~35/min;
    # heavy: 5M over those ~2 days = ~1,740/min, so 1,867 is only ~+7 %; new: first seen minutes ago,
    # less than min_history (an hour): no baseline yet
    assert len(got) == 1 and got[0]["tenant"] == "acme" and got[0]["history"] == "47 hours"
    assert 1800 < float(got[0]["value"]) < 1900 and got[0]["user_id"] != "steady"  # pseudonymized
    assert rows(svc, "user_surge", surge_pct=100000) == []


def test_budget_thresholds_fire_once_per_period_and_resolve_at_its_end(svc):
    store = AlertStore(svc.backend, svc.settings.database)
    store.replace_budgets([
        {"name": "acme-daily", "dimension": "tenant", "value": "acme", "period": "day", "limit_usd": 1.0},
        {"name": "each-tenant", "dimension": "tenant", "value": "*", "period": "month", "limit_usd": 100.0},
        {"name": "all", "dimension": "total", "value": "", "period": "month", "limit_usd": 1.5},
    ])
    day = NOW - NOW % 86400
    if time.gmtime(day + 86400).tm_mday == 1:
        # On a month's last day "the next day" starts a month, and the monthly budgets would resolve
        # too (this test failed on 2026-11-30): run it on the day before.
        day -= 86400
    now = day + 3600 * 12
    send(svc, [chat(now - 60, 340_000, 0)], **{"tenant.id": "acme"})  # gpt-4o input $2.50/1M -> $0.85
    got = sorted((r["budget"], int(r["threshold"]), r["severity"], r["key"]) for r in rows(svc, "budget", now=now))
    assert got == [("acme-daily", 50, "info", "acme"), ("acme-daily", 80, "warning", "acme"),
                   ("all", 50, "info", "")]
    (r,) = [r for r in rows(svc, "budget", now=now) if r["budget"] == "acme-daily" and int(r["threshold"]) == 80]
    assert (r["value"], r["percent"], r["period"]) == (0.85, 85, "day")

    receiver = Receiver("webhook")
    try:
        rules, _ = load_rules()
        ev = Evaluator({"budget": rules["budget"]}, backend_query(svc.backend), _hooks(receiver), store)
        ev.evaluate(ev.rules["budget"], now)
        # acme-daily at 80 % mutes its own 50 % (the highest threshold crossed, once: incidents.py)
        (first,) = [r["body"] for r in receiver.requests]
        assert sorted((a["labels"]["budget"], a["labels"]["threshold"]) for a in first["alerts"]) == \
            [("acme-daily", "80"), ("all", "50")]
        for later in (now + 30, now + 3600, now + 6 * 3600):
            ev.evaluate(ev.rules["budget"], later)
        assert len(receiver.requests) == 1  # once per period: no repeats
        ev.evaluate(ev.rules["budget"], day + 86400 + 60)  # the next day: the daily ones resolve
        body = receiver.requests[1]["body"]
        # the whole group, as Alertmanager sends it: the monthly budget still fires beside the two resolves
        assert body["status"] == "firing" and body["notification_reason"] == "some alerts resolved"
        assert {a["labels"]["budget"] for a in body["alerts"] if a["status"] == "resolved"} == {"acme-daily"}
        # the muted 50 % resolves unannounced: nobody was told it fired
        assert sum(a["status"] == "resolved" for a in body["alerts"]) == 1 and len(body["alerts"]) == 2
    finally:
        receiver.close()


def test_budget_forecast_pages_before_the_crossing_with_the_projected_time(svc):
    store = AlertStore(svc.backend, svc.settings.database)
    store.replace_budgets([
        {"name": "acme-daily", "dimension": "tenant", "value": "acme", "period": "day", "limit_usd": 10.0},
        {"name": "roomy", "dimension": "tenant", "value": "acme", "period": "day", "limit_usd": 100.0},
    ])
    day = NOW - NOW % 86400
    now = day + 3600 * 12
    # gpt-4o input: $2.50 per 1M tokens. $2 in the morning, $1 in the last hour: $3 spent, $1/h
    send(svc, [chat(now - 6 * 3600, 800_000, 0), chat(now - 1800, 400_000, 0)], **{"tenant.id": "acme"})
    assert rows(svc, "budget_forecast", now=now) == []  # the $7 left last 7 h: beyond the 6 h horizon
    (r,) = rows(svc, "budget_forecast", now=now, horizon=8 * 3600)
    date = time.strftime("%Y-%m-%d", time.gmtime(day))
    assert (r["budget"], r["key"], r["crossing_utc"], r["hours_left"], r["rate_usd_per_hour"], r["percent"]) == \
        ("acme-daily", "acme", f"{date} 19:00", 7, 1, 30)
    send(svc, [chat(now - 600, 800_000, 0)], **{"tenant.id": "acme"})  # $2 more: $5 spent, $3/h
    (r,) = rows(svc, "budget_forecast", now=now)
    assert (r["crossing_utc"], r["hours_left"], r["value"]) == (f"{date} 13:40", 1.7, 5)
    assert r["period_start"] == f"{date} 00:00:00"  # a label: one alert per budget and period
    # $100 a day would last past midnight at $3/h: no forecast for it; none in a period's first minutes
    assert rows(svc, "budget_forecast", now=now, min_elapsed=13 * 3600) == []
    # spent: the crossing itself (rule budget) says it, and silences the forecast (incidents.py)
    send(svc, [chat(now - 60, 2_000_000, 0)], **{"tenant.id": "acme"})
    assert rows(svc, "budget_forecast", now=now) == []


def test_agent_loop_same_tool_same_arguments_and_repeated_llm_input(svc):
    spans = [tool(NOW - 100 + i, "search", '{"q": "weather"}', "loop-session") for i in range(5)]
    spans += [tool(NOW - 100 + i, "search", f'{{"q": "{i}"}}', "healthy-session") for i in range(6)]
    spans += [chat(NOW - 50 + i, 800, 10, **{"gen_ai.conversation.id": "retry-session",
                                                "gen_ai.input.messages": '[{"role":"user","content":"hi"}]'})
              for i in range(5)]
    spans += [chat(NOW - 50 + i, 800, 10, **{"gen_ai.conversation.id": "plain"}) for i in range(6)]  # no content
    send(svc, spans, **{"tenant.id": "acme"})
    got = sorted((r["kind"], r["session"], r["target"], int(r["value"])) for r in rows(svc, "agent_loop"))
    assert got == [("llm_input", "retry-session", "gpt-4o", 5), ("tool", "loop-session", "search", 5)]
    assert rows(svc, "agent_loop", min_repeats=6) == []


def test_context_bloat_counts_the_trailing_rising_streak(svc):
    rising = [chat(NOW - 200 + i, 1000 * (i + 1), 10, **{"gen_ai.conversation.id": "bloat"}) for i in range(13)]
    dip = [chat(NOW - 200 + i, 1000 * (i + 1) if i != 6 else 10, 10, **{"gen_ai.conversation.id": "dip"})
           for i in range(13)]
    send(svc, rising + dip, **{"tenant.id": "acme"})
    (row,) = rows(svc, "context_bloat")
    assert (row["session"], int(row["value"]), int(row["first_input"]), int(row["last_input"])) == \
        ("bloat", 13, 1000, 13000)
    assert rows(svc, "context_bloat", min_turns=14) == []
    assert {r["session"]: int(r["value"]) for r in rows(svc, "context_bloat", min_turns=7)} == {"bloat": 13, "dip": 7}


def test_io_ratio_drift_for_a_feature(svc):
    base = [chat(NOW - 3 * 3600 + i, 100_000, 10_000) for i in range(3)]
    send(svc, base, **{"app.feature": "summarize"})
    send(svc, [chat(NOW - 120, 30_000, 3_500)], **{"app.feature": "summarize"})  # 0.117: within 2x
    assert rows(svc, "io_ratio_drift") == []
    send(svc, [chat(NOW - 60, 30_000, 20_000)], **{"app.feature": "summarize"})  # window: 60k in, 23.5k out
    (row,) = rows(svc, "io_ratio_drift")
    assert row["feature"] == "summarize" and abs(row["value"] - 23.5 / 60) < 1e-3 and row["baseline_ratio"] == 0.1


def test_unpriced_model_and_unattributed_share(svc):
    send(svc, [chat(NOW - 30, 5000, 500, model="mystery-model-9")], **{"tenant.id": "acme", "app.feature": "f"})
    send(svc, [chat(NOW - 30, 10_000, 0)])  # no tenant, no feature
    (row,) = rows(svc, "unpriced_model")
    assert (row["model"], int(row["value"]), int(row["unpriced_tokens"])) == ("mystery-model-9", 1, 5500)
    got = {r["dimension"]: r["value"] for r in rows(svc, "unattributed_share")}
    assert got == {"tenant": 64.5, "feature": 64.5}  # 10000 of 15500 tokens
    assert rows(svc, "unattributed_share", max_share_pct=70) == []


# ---------------------------------------------------------------- engine, notifiers, restarts


def _hooks(*receivers, kinds=("webhook",)):
    spec = {}
    for r in receivers:
        spec["default" if not spec else r.kind] = {"type": r.kind, "url": r.url,
                                                   **({"routing_key": "k" * 32} if r.kind == "pagerduty" else {})}
    return build_notifiers(parse_channels(spec), sleep=lambda s: None, backoff_s=0.0)


def _outlier_rule():
    rules, _ = load_rules(overrides={"tenant_outlier": {"min_rate": 1000, "for": "10s", "keep_firing_for": "0s",
                                                        "channels": ["default", "slack", "pagerduty"]}})
    return rules["tenant_outlier"]


def _spike(svc):
    cur = NOW - NOW % 60
    for tenant, tokens in (("a", 5000), ("b", 6000), ("c", 4000)):
        send(svc, [chat(cur + 1, tokens, 0)], **{"tenant.id": tenant})
    send(svc, [chat(cur + 3, 80_000, 0)], **{"tenant.id": "spiky"})
    return cur


def test_fire_notify_all_channels_then_resolve_with_same_keys(svc):
    cur = _spike(svc)
    hook, slack, pd = Receiver("webhook"), Receiver("slack"), Receiver("pagerduty")
    try:
        rule = _outlier_rule()
        ev = Evaluator({rule.name: rule}, backend_query(svc.backend), _hooks(hook, slack, pd),
                       AlertStore(svc.backend, svc.settings.database))
        ev.evaluate(rule, cur + 5)
        assert [a.state for a in ev.active()] == ["pending"] and not hook.requests
        ev.evaluate(rule, cur + 15)
        assert [a.state for a in ev.active()] == ["firing"]
        assert hook.bodies()[0]["alerts"][0]["labels"]["tenant"] == "spiky"
        assert slack.bodies()[0]["text"].startswith("[FIRING:1] tenant_outlier: Tenant spiky burns 80,000 tokens/min")
        assert pd.bodies()[0]["event_action"] == "trigger"
        ev.evaluate(rule, cur + 20)  # still firing: nothing new
        assert len(hook.requests) == len(slack.requests) == len(pd.requests) == 1
        ev.evaluate(rule, cur + 60 * 3)  # the spike is over (its minute left the sliding window)
        assert [a.state for a in ev.active()] == ["resolved"]
        assert hook.bodies()[1]["status"] == "resolved"
        assert pd.bodies()[1] == {"routing_key": "k" * 32, "event_action": "resolve",
                                  "dedup_key": pd.bodies()[0]["dedup_key"]}
        history = sql(svc, "SELECT previous, state FROM alerts WHERE rule = 'tenant_outlier' ORDER BY at")
        assert history == [["", "pending"], ["pending", "firing"], ["firing", "resolved"]]
        log = sql(svc, "SELECT channel, kind, ok FROM alert_notifications ORDER BY kind, channel")
        assert log == [["default", "firing", 1], ["pagerduty", "firing", 1], ["slack", "firing", 1],
                       ["default", "resolved", 1], ["pagerduty", "resolved", 1], ["slack", "resolved", 1]]
    finally:
        for r in (hook, slack, pd):
            r.close()


def test_restart_neither_pages_twice_nor_forgets_the_resolve(svc):
    cur = _spike(svc)
    hook = Receiver("webhook")
    try:
        rule = _outlier_rule()
        rule = type(rule)(**{**rule.__dict__, "channels": ("default",)})
        store = AlertStore(svc.backend, svc.settings.database)
        first = Evaluator({rule.name: rule}, backend_query(svc.backend), _hooks(hook), store)
        first.evaluate(rule, cur + 5)
        first.evaluate(rule, cur + 15)
        assert len(hook.requests) == 1
        first.close()
        second = Evaluator({rule.name: rule}, backend_query(svc.backend), _hooks(hook), store)  # "restart"
        assert [a.state for a in second.active()] == ["firing"]
        second.evaluate(rule, cur + 25)
        assert len(hook.requests) == 1  # no second page
        second.evaluate(rule, cur + 180)
        assert [b["status"] for b in hook.bodies()] == ["firing", "resolved"]
    finally:
        hook.close()


def test_retry_on_429_and_500_and_a_lost_resolve_is_resent(svc):
    cur = _spike(svc)
    hook = Receiver("webhook")
    try:
        rule = _outlier_rule()
        rule = type(rule)(**{**rule.__dict__, "channels": ("default",)})
        ev = Evaluator({rule.name: rule}, backend_query(svc.backend), _hooks(hook),
                       AlertStore(svc.backend, svc.settings.database))
        hook.script = [(429, "slow down", {"Retry-After": "0"}), (500, "oops", {})]
        ev.evaluate(rule, cur + 5)
        ev.evaluate(rule, cur + 15)
        assert [r["status"] for r in hook.requests] == [429, 500, 200]  # retried inside one delivery
        # the resolve fails every attempt (receiver down for a while) ...
        hook.script = [(503, "", {})] * 4
        ev.evaluate(rule, cur + 180)
        assert [r["status"] for r in hook.requests][-4:] == [503] * 4
        assert ev.active()[0].deliveries["default"].state == "firing"
        ev.evaluate(rule, cur + 181)  # backing off: not yet
        assert len(hook.requests) == 7
        ev.evaluate(rule, cur + 186)  # ... and is re-sent once it is back
        assert hook.bodies(200)[-1]["status"] == "resolved"
        assert ev.active()[0].deliveries["default"].state == "resolved"
        failed = sql(svc, "SELECT kind, ok, http_status, attempts FROM alert_notifications WHERE ok = 0")
        assert failed == [["resolved", 0, 503, 4]]
    finally:
        hook.close()


def test_a_bad_rule_reports_file_and_line_and_the_others_load(svc, tmp_path):
    (tmp_path / "typo.sql").write_text("-- summary: x\n-- interval: 5s\nSELECT count() AS value\nFROM spans\n"
                                       "WHERE tenantt = 'a'\n")
    (tmp_path / "novalue.sql").write_text("-- summary: x\nSELECT 1 AS v\n")
    rules, errors = load_rules(str(tmp_path))
    assert errors == []  # both headers are fine: the faults are in the SQL
    problems = []
    for rule in rules.values():
        try:
            check_rule(svc.backend, rule, NOW)
        except RuleError as e:
            problems.append((e.where, e.reason.split(":")[0]))
    assert sorted(problems) == [(f"{tmp_path}/novalue.sql:2", "the query returns no 'value' column (it returns v)"),
                                (f"{tmp_path}/typo.sql:5", "ClickHouse query failed")]


def test_ticks_are_interval_aligned_and_missed_ticks_counted():
    fast = parse_rule("fast.sql", "-- summary: x\n-- interval: 5s\nSELECT 1 AS value")
    slow = parse_rule("slow.sql", "-- summary: x\n-- interval: 1m\nSELECT 1 AS value")
    calls = []
    ev = Evaluator({"fast": fast, "slow": slow}, lambda rule, now: calls.append((rule.name, now)) or [], {})
    assert ev.tick(1200.0) == ["fast", "slow"]
    assert ev.tick(1201.0) == [] and ev.tick(1204.9) == []
    assert ev.tick(1205.0) == ["fast"]
    assert ev.next_tick(1205.0) == 1210.0
    assert ev.tick(1231.0) == ["fast"]  # the ticks at 1210..1225 went by: skipped, not run in a burst
    assert ev.missed == {"fast": 4}
    assert ev.tick(1260.0) == ["fast", "slow"]
    assert ev.missed == {"fast": 9}
    assert sorted(calls) == [("fast", 1200.0), ("fast", 1205.0), ("fast", 1231.0), ("fast", 1260.0),
                             ("slow", 1200.0), ("slow", 1260.0)]


def test_rules_due_at_one_tick_run_side_by_side():
    """A tick lasts as long as its slowest rule, not all of them in a row: two rules whose queries
    each wait for the other finish only if they run at the same time (a barrier, no clock)."""
    import threading

    barrier = threading.Barrier(2, timeout=10)

    def query(rule, now):
        barrier.wait()  # raises BrokenBarrierError after 10 s if the other never arrives
        return []

    a = parse_rule("a.sql", "-- summary: x\n-- interval: 5s\nSELECT 1 AS value")
    b = parse_rule("b.sql", "-- summary: x\n-- interval: 5s\nSELECT 1 AS value")
    ev = Evaluator({"a": a, "b": b}, query, {})
    assert ev.tick(1200.0) == ["a", "b"]
    assert ev.errors == {}  # neither query failed waiting


# ---------------------------------------------------------------- end to end: SDK -> service -> webhook; CLI


def test_sdk_spans_to_webhook_through_the_running_service_and_the_cli(make_service, tmp_path, capsys):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    from tokenpulse.cli import main

    (tmp_path / "broken.sql").write_text("-- summary: x\n-- interval: 1s\nSELECT nope AS value FROM spans\n")
    hook = Receiver("webhook")
    try:
        svc = make_service(alert_channels={"default": {"type": "webhook", "url": hook.url}},
                           alert_rules={"unpriced_model": {"interval": "1s"}}, alert_rules_dir=str(tmp_path))
        assert svc.evaluator is not None and "unpriced_model" in svc.evaluator.rules
        assert [e.where for e in svc.rule_errors] == [f"{tmp_path}/broken.sql:3"]
        tp = TracerProvider(resource=Resource.create({"service.name": "e2e", "tenant.id": "acme"}))
        tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{svc.grpc.port}",
                                                                   insecure=True)))
        with tp.get_tracer("tests").start_as_current_span("chat", kind=SpanKind.CLIENT) as s:
            s.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                              "gen_ai.response.model": "brand-new-model", "gen_ai.usage.input_tokens": 700,
                              "gen_ai.usage.output_tokens": 70})
        tp.shutdown()
        (req,) = hook.wait_for(1, timeout=20)  # a real service on the real clock: seconds, not a step
        alert = req["body"]["alerts"][0]
        assert alert["labels"]["model"] == "brand-new-model" and alert["labels"]["alertname"] == "unpriced_model"
        assert alert["annotations"]["summary"].startswith("1 calls to unpriced model brand-new-model (openai)")

        admin = ["--admin-url", f"http://127.0.0.1:{svc.admin.port}"]
        assert main(["alerts", "list", *admin]) == 0
        out = capsys.readouterr()
        assert "unpriced_model" in out.out and "firing" in out.out and "broken.sql:3" in out.err
        assert main(["alerts", "test", "unpriced_model", "--send", *admin]) == 0
        out = capsys.readouterr().out
        assert "1 instance(s) would fire now" in out and "sent to default: ok" in out
        assert hook.wait_for(2)[1]["body"]["alerts"][0]["labels"]["test"] == "true"
        assert main(["alerts", "history", "--rule", "unpriced_model", *admin]) == 0
        assert "-> firing" in capsys.readouterr().out
        assert main(["report", *admin]) == 0
        assert "Alerts firing" in (out := capsys.readouterr().out) and "model=brand-new-model" in out
        metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
        assert 'tokenpulse_alerts{state="firing"} 1.0' in metrics
        assert 'tokenpulse_alert_notifications_total{channel="default",result="ok"}' in metrics
    finally:
        hook.close()


def test_receiver_role_does_not_evaluate(make_service):
    svc = make_service(role="receiver")
    assert svc.evaluator is None
    r = requests.get(f"http://127.0.0.1:{svc.admin.port}/api/alerts", timeout=5)
    assert r.status_code == 503 and "role receiver" in r.json()["error"]


def test_a_hanging_receiver_does_not_hold_up_evaluation_and_is_not_sent_twice(svc):
    import socket as socketlib

    cur = _spike(svc)
    hang = socketlib.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)  # accepts connections, never answers
    try:
        rule = _outlier_rule()
        rule = type(rule)(**{**rule.__dict__, "channels": ("default",), "for_s": 0})
        notifiers = build_notifiers(parse_channels({"default": {
            "type": "webhook", "url": f"http://127.0.0.1:{hang.getsockname()[1]}/hook", "timeout_s": 2,
            "max_attempts": 1}}))
        ev = Evaluator({rule.name: rule}, backend_query(svc.backend), notifiers, delivery_wait_s=0.2)
        t0 = time.monotonic()
        ev.evaluate(rule, cur + 5)
        assert time.monotonic() - t0 < 1.5  # did not wait for the 2 s timeout
        (alert,) = ev.active()
        assert alert.deliveries["default"].retry_at == cur + 5 + 2  # in flight for its time budget
        res = ev.evaluate(rule, cur + 6)  # the next tick, while the send still hangs
        assert res.notifications == []
        ev.close()  # waits for the send: it timed out, so the alert is due again after a back-off
        (alert,) = ev.active()
        assert alert.deliveries["default"].failures == 1 and alert.deliveries["default"].state == ""
    finally:
        hang.close()


def test_a_pagerduty_400_is_not_resent(svc):
    """PagerDuty answers 400 to an event it will never accept: re-sending the same body (+10, +30,
    +65 s, then every 5 minutes) only repeats the error. It is logged, counted as refused, not re-sent."""
    cur = _spike(svc)
    pd = Receiver("pagerduty")
    try:
        rule = _outlier_rule()
        rule = type(rule)(**{**rule.__dict__, "channels": ("default",)})  # the one channel: PagerDuty
        metrics = Metrics()
        ev = Evaluator({rule.name: rule}, backend_query(svc.backend), _hooks(pd),
                       AlertStore(svc.backend, svc.settings.database), metrics=metrics)
        pd.script = [(400, '{"status": "invalid event", "errors": ["routing_key is invalid"]}', {})]
        ev.evaluate(rule, cur + 5)
        ev.evaluate(rule, cur + 15)
        assert [r["status"] for r in pd.requests] == [400]  # not retried inside the delivery either
        for t in (cur + 30, cur + 45, cur + 60):  # past the first re-send times (+10, +30 s)
            ev.evaluate(rule, t)
        triggers = [b for b in pd.bodies() if b["event_action"] == "trigger"]
        assert len(triggers) == 1
        text = metrics.render().decode()
        assert 'tokenpulse_alert_notifications_total{channel="default",result="refused"} 1.0' in text
    finally:
        pd.close()


def test_routing_info_and_warning_do_not_open_pagerduty_incidents_and_channels_match_labels(svc):
    """A channel's match (label -> values; `rule` is the alert name) routes alerts; PagerDuty
    defaults to severity critical, so warnings reach chat but open no incident."""
    cur = _spike(svc)
    hook, pd, acme_only = Receiver("webhook"), Receiver("pagerduty"), Receiver("webhook")
    try:
        rules, _ = load_rules(overrides={"tenant_outlier": {"min_rate": 1000, "for": "0s", "keep_firing_for": "0s",
                                                            "severity": "warning",
                                                            "channels": ["hook", "pd", "acme-only"]}})
        rule = rules["tenant_outlier"]
        channels = parse_channels({
            "hook": {"type": "webhook", "url": hook.url},
            "pd": {"type": "pagerduty", "url": pd.url, "routing_key": "k" * 32},
            "acme-only": {"type": "webhook", "url": acme_only.url, "match": {"tenant": ["acme"], "rule": "tenant_outlier"}},
        })
        ev = Evaluator({rule.name: rule}, backend_query(svc.backend), build_notifiers(channels, sleep=lambda s: None),
                       AlertStore(svc.backend, svc.settings.database))
        ev.evaluate(rule, cur + 5)
        assert [a.state for a in ev.active()] == ["firing"]
        assert hook.bodies()[0]["alerts"][0]["labels"]["tenant"] == "spiky"
        assert pd.requests == [] and acme_only.requests == []  # a warning; not acme
        ev.evaluate(rule, cur + 60)  # past the re-send times: nothing re-sent, the skipped ones count as told
        assert pd.requests == [] and acme_only.requests == [] and len(hook.requests) == 1
    finally:
        for r in (hook, pd, acme_only):
            r.close()


def test_a_routing_tree_sends_every_rule_by_severity_without_an_override_per_rule(svc):
    """alert_route: critical pages PagerDuty and Slack, warnings only Slack, one tenant's alerts also
    reach its own hook (a child route), the throttle notices an ops hook too (continue). No rule
    names a channel: every rule keeps `default`, which is not even configured."""
    from tokenpulse.alerts.routing import parse_tree

    cur = _spike(svc)
    pd, slack, spiky_hook, ops = Receiver("pagerduty"), Receiver("slack"), Receiver("webhook"), Receiver("webhook")
    try:
        routes = parse_tree({"routes": [
            {"match": {"rule": "tenant_throttled"}, "channels": ["ops"], "continue": True},
            {"match": {"severity": "critical"}, "channels": ["pd", "slack"]},
            {"match": {"severity": ["warning", "info"]}, "channels": ["slack"],
             "routes": [{"match": {"tenant": "spiky"}, "channels": ["slack", "spiky-hook"]}]},
        ]})
        channels = parse_channels({
            "pd": {"type": "pagerduty", "url": pd.url, "routing_key": "k" * 32, "match": {}},
            "slack": {"type": "slack", "url": slack.url},
            "spiky-hook": {"type": "webhook", "url": spiky_hook.url},
            "ops": {"type": "webhook", "url": ops.url}})
        rules, _ = load_rules(overrides={"tenant_outlier": {"min_rate": 1000, "keep_firing_for": "0s"},
                                         "token_rate_anomaly": {"enabled": False}})
        warn = replace(rules["tenant_outlier"], name="outlier_warning", severity="warning")
        crit = rules["tenant_outlier"]
        store = AlertStore(svc.backend, svc.settings.database)
        throttler = Throttler(ThrottleBook([crit.name]), store)
        ev = Evaluator({crit.name: crit, warn.name: warn, THROTTLE_RULE: throttle_rule()},
                       throttler.query(backend_query(svc.backend)), build_notifiers(channels, sleep=lambda s: None),
                       store, on_change=throttler.on_alerts, inhibit=(), routes=routes)
        ev.evaluate(ev.rules[warn.name], cur + 5)
        assert [r["body"]["text"].startswith("[FIRING:1] outlier_warning:") for r in slack.requests] == [True]
        assert len(spiky_hook.requests) == 1 and pd.requests == [] and ops.requests == []
        ev.evaluate(ev.rules[crit.name], cur + 5)
        ev.evaluate(ev.rules[THROTTLE_RULE], cur + 5)
        assert sorted(r["body"]["payload"]["class"] for r in pd.requests) == ["tenant_outlier", "tenant_throttled"]
        assert len(slack.requests) == 3 and len(spiky_hook.requests) == 1  # critical: not the warning route
        assert [r["body"]["alerts"][0]["labels"]["alertname"] for r in ops.requests] == ["tenant_throttled"]
    finally:
        for r in (pd, slack, spiky_hook, ops):
            r.close()


def test_a_route_to_a_channel_that_is_not_configured_stops_the_start(make_service):
    with pytest.raises(ConfigError, match="alert_route names channels that alert_channels does not define: pagr"):
        make_service(alert_route={"routes": [{"match": {"severity": "critical"}, "channels": ["pagr"]}]})
    with pytest.raises(ConfigError, match=r"alert_route.*routes\[0\]: names no channels"):
        make_service(alert_route={"routes": [{"match": {"severity": "critical"}}]})


def test_a_channel_match_that_is_not_a_mapping_is_refused_at_start():
    with pytest.raises(ConfigError, match="match must map a label"):
        parse_channels({"pd": {"type": "pagerduty", "routing_key": "k" * 32, "match": ["critical"]}})

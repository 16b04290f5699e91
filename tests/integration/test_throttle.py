"""Auto-throttle end to end: real spans, a real rule on chDB, the decision API over HTTP,
the client guard, operator webhooks, restarts and manual overrides. Time is stepped."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.conftest import sql
from tests.integration.test_alerts import _spike
from tests.webhooks import Receiver
from tokenpulse.alerts.engine import Evaluator, backend_query
from tokenpulse.alerts.notify import build_notifiers, parse_channels
from tokenpulse.alerts.rules import load_rules
from tokenpulse.alerts.store import AlertStore
from tokenpulse.alerts.throttle import THROTTLE_RULE, ThrottleBook, Throttler, throttle_rule
from tokenpulse.cli import main
from tokenpulse.client import TenantThrottled, ThrottleGuard


@pytest.fixture
def hook():
    r = Receiver("webhook")
    yield r
    r.close()


def _evaluator(svc, hook, cooldown_s=120):
    rules, _ = load_rules(overrides={"tenant_outlier": {"min_rate": 1000, "keep_firing_for": "0s"}})
    rule = rules["tenant_outlier"]
    store = AlertStore(svc.backend, svc.settings.database)
    notifiers = build_notifiers(parse_channels({"default": {"type": "webhook", "url": hook.url}}),
                                sleep=lambda s: None)
    throttler = Throttler(ThrottleBook([rule.name], cooldown_s), store)
    ev = Evaluator({rule.name: rule, THROTTLE_RULE: throttle_rule()}, throttler.query(backend_query(svc.backend)),
                   notifiers, store, on_change=throttler.on_alerts)
    return rule, ev, throttler


def _tick(ev, rule, now):
    """The rule, then the throttle notices (evaluated every second in the service)."""
    ev.evaluate(rule, now)
    ev.evaluate(ev.rules[THROTTLE_RULE], now)


def test_spike_throttles_the_tenant_the_guard_raises_and_calm_releases_after_cooldown(make_service, hook):
    # The receiver-role service serves decisions that a separate evaluator makes (read from storage).
    svc = make_service(role="receiver", throttle_cooldown_s=120)  # the same setting as the evaluator's
    cur = _spike(svc)
    rule, ev, throttler = _evaluator(svc, hook)
    guard = ThrottleGuard(f"http://127.0.0.1:{svc.http.port}", cache_s=0)

    _tick(ev, rule, cur + 5)
    svc.throttler.refresh()
    with pytest.raises(TenantThrottled) as e:
        guard.check("spiky")
    assert e.value.tenant == "spiky" and e.value.retry_after_s == 120
    assert "spiky" in e.value.message and "Tenant spiky burns 80,000 tokens/min" in e.value.reason
    for calm in ("a", "b", "c", "never-seen"):
        guard.check(calm)  # other tenants are never throttled
    listing = requests.get(f"http://127.0.0.1:{svc.admin.port}/v1/throttle", timeout=5).json()
    assert [d["tenant"] for d in listing["throttled"]] == ["spiky"]
    # the operator heard about it (alert webhook, then the throttle notice)
    names = [b["alerts"][0]["labels"]["alertname"] for b in hook.bodies()]
    assert sorted(names) == ["tenant_outlier", "tenant_throttled"]
    notice = hook.bodies()[names.index("tenant_throttled")]["alerts"][0]
    assert notice["labels"]["tenant"] == "spiky" and notice["annotations"]["customer_message"] == e.value.message

    _tick(ev, rule, cur + 180)  # traffic calmed: the alert resolves, the cool-down starts
    svc.throttler.refresh()
    assert guard.decision("spiky").throttled and guard.decision("spiky").retry_after_s == 120
    _tick(ev, rule, cur + 180 + 115)
    svc.throttler.refresh()
    assert guard.decision("spiky").throttled
    _tick(ev, rule, cur + 180 + 120)
    svc.throttler.refresh()
    guard.check("spiky")  # released
    assert hook.bodies()[-1]["status"] == "resolved"
    assert hook.bodies()[-1]["alerts"][0]["labels"]["alertname"] == "tenant_throttled"
    audit = sql(svc, "SELECT tenant, action, source, actor FROM throttle_audit ORDER BY at")
    assert audit == [["spiky", "throttle", "rule", "tokenpulse"], ["spiky", "release", "rule", "tokenpulse"]]


def test_restart_keeps_the_decision(make_service, hook):
    svc = make_service(role="receiver")
    cur = _spike(svc)
    rule, ev, throttler = _evaluator(svc, hook)
    _tick(ev, rule, cur + 5)
    ev.close()
    # a new evaluator process: state and decisions come back from ClickHouse
    rule, ev2, throttler2 = _evaluator(svc, hook)
    assert throttler2.book.decision("spiky", cur + 10)["throttled"]
    assert sorted((a.rule, a.state) for a in ev2.active()) == [("tenant_outlier", "firing"),
                                                                ("tenant_throttled", "firing")]
    _tick(ev2, rule, cur + 10)
    assert len([b for b in hook.bodies() if b["alerts"][0]["labels"]["alertname"] == "tenant_throttled"]) == 1
    # and a restarted receiver serves it
    svc.shutdown()
    svc2 = make_service(role="receiver")
    svc2.throttler.refresh()
    d = requests.get(f"http://127.0.0.1:{svc2.http.port}/v1/throttle/spiky", timeout=5).json()
    assert d["throttled"] and d["source"] == "rule"


def test_manual_override_through_the_cli_wins_and_is_audited(make_service, capsys):
    svc = make_service()
    admin = ["--admin-url", f"http://127.0.0.1:{svc.admin.port}"]
    assert main(["throttle", "set", "acme", "--for", "30m", "--reason", "runaway batch job", "--actor", "alice",
                 *admin]) == 0
    assert "acme throttled for 1800 s: runaway batch job" in capsys.readouterr().out
    d = requests.get(f"http://127.0.0.1:{svc.http.port}/v1/throttle/acme", timeout=5).json()
    assert d["throttled"] and d["source"] == "manual" and 1790 <= d["retry_after_s"] <= 1800
    assert "by the operator (runaway batch job)" in d["message"] and "rose far above" not in d["message"]
    assert main(["throttle", "list", *admin]) == 0
    assert "runaway batch job" in capsys.readouterr().out
    assert main(["throttle", "clear", "acme", "--actor", "bob", *admin]) == 0
    assert "acme released" in capsys.readouterr().out
    assert not requests.get(f"http://127.0.0.1:{svc.http.port}/v1/throttle/acme", timeout=5).json()["throttled"]
    audit = sql(svc, "SELECT action, source, actor, reason FROM throttle_audit ORDER BY at")
    assert audit == [["throttle", "manual", "alice", "runaway batch job"], ["release", "manual", "bob", "released by hand"]]
    r = requests.post(f"http://127.0.0.1:{svc.admin.port}/api/throttle/acme", data="not json", timeout=5)
    assert r.status_code == 400
    # a bad duration is named, by the API and by the CLI (exit 1, one line)
    r = requests.post(f"http://127.0.0.1:{svc.admin.port}/api/throttle/acme", json={"for": "banana"}, timeout=5)
    assert r.status_code == 400 and "'banana'" in r.json()["error"]
    assert main(["throttle", "set", "acme", "--for", "banana", *admin]) == 1
    err = capsys.readouterr().err
    assert "'banana'" in err and "Traceback" not in err


def test_guard_fails_open_or_closed_when_tokenpulse_is_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    ThrottleGuard(dead, timeout_s=0.2).check("acme")  # open: the run goes ahead
    assert not ThrottleGuard(dead, timeout_s=0.2).decision("acme").reachable
    with pytest.raises(TenantThrottled):
        ThrottleGuard(dead, timeout_s=0.2, fail_open=False).check("acme")


def test_guard_waits_until_released_and_caches(make_service):
    svc = make_service()
    import time

    svc.throttler.set("acme", 60, "test", "t", time.time())
    calls = []

    def fake_sleep(s):  # the "queue" waits; meanwhile an operator releases the tenant
        calls.append(s)
        if len(calls) == 2:
            svc.throttler.clear("acme", "t", time.time())

    guard = ThrottleGuard(f"http://127.0.0.1:{svc.http.port}", cache_s=0, sleep=fake_sleep)
    guard.wait("acme", max_wait_s=600, poll_s=1)
    assert calls == [1, 1]
    svc.throttler.set("acme", 60, "test", "t", time.time())
    with pytest.raises(TenantThrottled):
        ThrottleGuard(f"http://127.0.0.1:{svc.http.port}", cache_s=0, sleep=lambda s: None).wait("acme", max_wait_s=0)
    cached = ThrottleGuard(f"http://127.0.0.1:{svc.http.port}", cache_s=3600)
    assert cached.decision("acme").throttled
    svc.throttler.clear("acme", "t", time.time())
    assert cached.decision("acme").throttled  # still the cached answer
    assert not ThrottleGuard(f"http://127.0.0.1:{svc.http.port}", cache_s=0).decision("acme").throttled


def test_disabling_the_rule_that_throttles_releases_after_the_cooldown(make_service, hook):
    svc = make_service(role="receiver")
    cur = _spike(svc)
    rule, ev, throttler = _evaluator(svc, hook, cooldown_s=60)
    ev.evaluate(rule, cur + 5)
    assert throttler.book.decision("spiky", cur + 6)["throttled"]
    ev.close()
    # restart with the rule switched off: its firing alert can never resolve by evaluation
    store = AlertStore(svc.backend, svc.settings.database)
    book = ThrottleBook(["tenant_outlier"], 60)
    t2 = Throttler(book, store)
    clock = [cur + 100.0]
    ev2 = Evaluator({}, backend_query(svc.backend), {}, store, clock=lambda: clock[0], on_change=t2.on_alerts)
    assert ev2.active() == [] and len(ev2.orphans) == 1
    assert book.decision("spiky", cur + 150)["throttled"]  # the cool-down still applies
    assert book.advance(cur + 160)  # released 60 s after the orphan was resolved
    assert not book.decision("spiky", cur + 160)["throttled"]
    assert sql(svc, "SELECT state FROM alerts ORDER BY at DESC LIMIT 1") == [["resolved"]]


def test_a_manual_throttle_ends_on_time_with_no_rule_evaluated(make_service):
    """ThrottleBook.advance was never called: a manual throttle outlived its end unless some rule
    happened to be evaluated. No rules here; the release is published (audit) within seconds."""
    from tokenpulse.alerts.rules import load_rules

    svc = make_service(alert_rules={name: {"enabled": False} for name in load_rules()[0]})
    assert set(svc.evaluator.rules) == {"tenant_throttled"}  # only the throttle notices
    admin = f"http://127.0.0.1:{svc.admin.port}"
    assert requests.post(f"{admin}/api/throttle/acme", json={"for": "2s", "reason": "short pause"},
                         timeout=5).status_code == 200
    assert requests.get(f"http://127.0.0.1:{svc.http.port}/v1/throttle/acme", timeout=5).json()["throttled"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        audit = sql(svc, "SELECT action, reason FROM throttle_audit WHERE tenant = 'acme' ORDER BY at")
        if len(audit) == 2:
            break
        time.sleep(0.3)
    assert audit == [["throttle", "short pause"], ["release", "manual throttle expired"]]
    assert not requests.get(f"http://127.0.0.1:{svc.http.port}/v1/throttle/acme", timeout=5).json()["throttled"]


def test_a_throttle_notice_the_receiver_missed_is_sent_again(make_service, hook):
    """Throttle notices were fire-and-forget: a receiver down at that moment meant the operator never
    heard a tenant was cut off. They now go the alerts' way: recorded, retried, re-sent."""
    svc = make_service(role="receiver")
    cur = _spike(svc)
    rule, ev, throttler = _evaluator(svc, hook)
    ev.delivery_wait_s = 30  # wait for each delivery, so the test reads the outcome
    ev.evaluate(rule, cur + 5)  # the alert is delivered and throttles the tenant
    hook.script = [(503, "down for maintenance", {})] * 10  # then the receiver goes down
    ev.evaluate(ev.rules[THROTTLE_RULE], cur + 5)
    hook.script = []
    notices = [r for r in hook.requests if r["body"]["alerts"][0]["labels"]["alertname"] == "tenant_throttled"]
    assert notices and all(r["status"] == 503 for r in notices)
    state = [a for a in ev.active() if a.rule == "tenant_throttled"][0]
    assert state.deliveries.get("default") is None or state.deliveries["default"].state != "firing"
    before = len(hook.requests)
    _tick(ev, rule, cur + 6)  # too early: waits out its back-off, nothing sent
    assert len(hook.requests) == before
    _tick(ev, rule, cur + 30)  # past the back-off: sent again, and delivered
    ok = [r for r in hook.requests if r["status"] == 200
          and r["body"]["alerts"][0]["labels"]["alertname"] == "tenant_throttled"]
    assert len(ok) == 1 and ok[0]["body"]["alerts"][0]["labels"]["tenant"] == "spiky"
    log = sql(svc, "SELECT rule, ok FROM alert_notifications WHERE rule = 'tenant_throttled' ORDER BY at")
    assert log[0] == ["tenant_throttled", 0] and log[-1] == ["tenant_throttled", 1]

"""The throttle book: alert-driven decisions, cool-down, manual overrides (time stepped)."""

from __future__ import annotations

from tokenpulse.alerts.state import Alert, Change
from tokenpulse.alerts.throttle import ThrottleBook, target


def alert(fp, state, tenant="spiky", rule="tenant_outlier", **labels):
    return Alert(fp, rule, {"tenant": tenant, **labels} if tenant else labels,
                 {"summary": f"Tenant {tenant} burns 80,000 tokens/min"}, 80000.0, state, 0.0)


def fire(fp="f1", **kw):
    return Change(alert(fp, "firing", **kw), "pending")


def resolve(fp="f1", **kw):
    return Change(alert(fp, "resolved", **kw), "firing")


def book():
    return ThrottleBook(["tenant_outlier", "budget"], cooldown_s=300)


def test_firing_throttles_only_that_tenant_and_says_so_to_the_customer():
    b = book()
    (e,) = b.on_alerts([fire()], 100)
    assert (e.action, e.throttle.tenant, e.actor) == ("throttle", "spiky", "tokenpulse")
    d = b.decision("spiky", 160)
    assert d["throttled"] and d["source"] == "rule" and d["since"] == 100 and d["retry_after_s"] == 300
    assert "spiky" in d["message"] and "retry after 300 s" in d["message"]
    assert b.decision("calm", 160) == {"tenant": "calm", "throttled": False, "reason": "", "source": "",
                                       "since": None, "retry_after_s": 0, "message": ""}


def test_release_after_cooldown_once_every_cause_resolved():
    b = book()
    b.on_alerts([fire("f1")], 0)
    b.on_alerts([fire("f2", rule="budget", tenant="", dimension="tenant", key="spiky", threshold="100")], 10)
    assert b.on_alerts([resolve("f1")], 100) == []
    assert b.decision("spiky", 200)["throttled"]  # f2 still firing
    assert b.on_alerts([resolve("f2", rule="budget", tenant="", dimension="tenant", key="spiky",
                                threshold="100")], 200) == []
    assert b.decision("spiky", 450)["retry_after_s"] == 50
    assert b.advance(499) == []
    (e,) = b.advance(500)
    assert e.action == "release" and "cool-down" in e.reason
    assert not b.decision("spiky", 500)["throttled"]


def test_refire_during_cooldown_keeps_it_throttled():
    b = book()
    b.on_alerts([fire("f1")], 0)
    b.on_alerts([resolve("f1")], 100)
    assert b.on_alerts([fire("f1")], 200) == []  # no second throttle event: it never stopped
    assert b.advance(10_000) == []
    assert b.decision("spiky", 10_000)["throttled"]


def test_rules_without_throttle_action_and_low_budget_thresholds_do_not_throttle():
    b = book()
    assert b.on_alerts([fire(rule="token_rate_anomaly")], 0) == []
    assert b.on_alerts([fire(rule="budget", tenant="", dimension="tenant", key="acme", threshold="80")], 0) == []
    assert b.on_alerts([fire(rule="budget", tenant="", dimension="feature", key="search", threshold="100")], 0) == []
    assert b.on_alerts([fire(tenant="unattributed")], 0) == []
    assert b.throttles == {}


def test_manual_throttle_wins_until_it_expires():
    b = book()
    (e,) = b.set_manual("acme", 1800, "runaway batch job", "alice", 0)
    assert (e.action, e.actor, e.throttle.source) == ("throttle", "alice", "manual")
    assert b.decision("acme", 600)["retry_after_s"] == 1200
    b.on_alerts([fire("f9", tenant="acme")], 700)  # a rule firing does not shorten it
    assert b.decision("acme", 1000)["source"] == "manual"
    (e,) = b.advance(1800)
    assert e.action == "release" and e.reason == "manual throttle expired"


def test_clear_releases_and_the_same_alert_does_not_throttle_again_but_a_new_one_does():
    b = book()
    b.on_alerts([fire("f1")], 0)
    (e,) = b.clear("spiky", "bob", 10)
    assert (e.action, e.actor) == ("release", "bob")
    assert b.on_alerts([fire("f1")], 20) == []  # e.g. a re-delivered change of the same alert
    assert not b.decision("spiky", 20)["throttled"]
    b.on_alerts([resolve("f1")], 30)
    (e,) = b.on_alerts([fire("f1")], 40)  # after it resolved, a new firing throttles again
    assert e.action == "throttle"
    assert b.clear("nobody", "bob", 50) == []


def test_target_of_an_alert():
    assert target(alert("x", "firing")) == "spiky"
    assert target(alert("x", "firing", tenant="", dimension="tenant", key="acme", threshold="100")) == "acme"
    assert target(alert("x", "firing", tenant="", dimension="tenant", key="acme", threshold="50")) == ""
    assert target(alert("x", "firing", tenant="")) == ""


def test_a_budget_throttle_says_when_the_budget_resets():
    """It lasts until the period ends (the budget alert resolves then) plus the cool-down: the retry
    delay and the customer message say so, not "about 5 min because usage rose far above normal"."""
    from datetime import datetime, timezone

    b = book()
    start = datetime(2026, 11, 30, tzinfo=timezone.utc).timestamp()
    now = start + 20 * 3600  # 20:00 UTC: the day budget resets in 4 hours
    b.on_alerts([fire("b1", rule="budget", tenant="", dimension="tenant", key="acme", threshold="100",
                      period="day", period_start="2026-11-30 00:00:00")], now)
    d = b.decision("acme", now)
    assert d["retry_after_s"] == 4 * 3600 + 300
    assert "until its budget resets at 2026-12-01 00:00 UTC" in d["message"] and "rose far above" not in d["message"]
    month = book()
    month.on_alerts([fire("b2", rule="budget", tenant="", dimension="tenant", key="acme", threshold="100",
                          period="month", period_start="2026-12-01 00:00:00")], now)
    assert "resets at 2027-01-01 00:00 UTC" in month.decision("acme", now)["message"]


def test_throttle_notices_are_an_alert_rule_with_hashed_fingerprints():
    """Notices go the alerts' way (delivered, retried, recorded): a rule over the book's rows."""
    import re

    from tokenpulse.alerts.state import step
    from tokenpulse.alerts.throttle import Throttler, throttle_rule

    now = 1_790_000_000.0
    thr = Throttler(ThrottleBook())
    thr.set("acme", 60, "runaway job", "alice", now)
    rule = throttle_rule(("ops",))
    res = step({}, thr.rows(now + 1), now + 1, rule)
    (a,) = res.states.values()
    assert re.fullmatch(r"[0-9a-f]{16}", a.fingerprint) and "acme" not in a.fingerprint
    assert a.state == "firing" and a.labels["tenant"] == "acme" and a.labels["source"] == "manual"
    assert a.annotations["summary"] == "Tenant acme throttled (manual, by alice): runaway job"
    assert "paused for about 1 min by the operator" in a.annotations["customer_message"]
    assert [(n.channel, n.reason) for n in res.notifications] == [("ops", "first notification")]
    thr.clear("acme", "bob", now + 2)
    res = step(res.states, thr.rows(now + 3), now + 3, rule)
    assert [x.state for x in res.states.values()] == ["resolved"]


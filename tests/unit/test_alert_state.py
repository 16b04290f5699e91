"""The alert state machine, stepped through time (no sleeping, no storage)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tokenpulse.alerts.rules import parse_rule
from tokenpulse.alerts.state import RESOLVED_RETENTION_S, record_delivery, step

RULE = parse_rule("rules/tenant_spike.sql", """\
-- summary: Tenant $tenant at $value tokens/min ($ratio x)
-- interval: 5s
-- for: 30s
-- keep_firing_for: 20s
-- repeat_interval: 1h
-- severity: critical
-- labels: team=platform
-- channels: pager, chat
-- extra: ratio
SELECT 'acme' AS tenant, 1 AS value, 2 AS ratio
""")

ACME = {"tenant": "acme", "value": 120000, "ratio": 12.5}
GLOBEX = {"tenant": "globex", "value": 90000, "ratio": 11.0}


def run(steps, rule=RULE, deliver_ok=True):
    """Feed (now, rows) pairs; deliver every notification (ok or not). Returns the per-step results."""
    states, out = {}, []
    for now, rows in steps:
        res = step(states, rows, now, rule)
        states = res.states
        for note in res.notifications:
            delivered = {a.fingerprint for a in note.alerts} if deliver_ok else set()
            states = record_delivery(states, note, delivered, now)
        out.append((res, states))
    return out


def kinds(res):
    return sorted((n.channel, n.status, n.reason, len(n.alerts)) for n in res.notifications)


def test_pending_then_firing_after_for():
    out = run([(0, [ACME]), (5, [ACME]), (29, [ACME]), (30, [ACME])])
    assert [s[next(iter(s))].state for _, s in out] == ["pending", "pending", "pending", "firing"]
    assert [kinds(r) for r, _ in out[:3]] == [[], [], []]
    assert kinds(out[3][0]) == [("chat", "firing", "first notification", 1), ("pager", "firing", "first notification", 1)]
    alert = next(iter(out[3][1].values()))
    assert alert.active_at == 0 and alert.fired_at == 30
    assert alert.labels == {"team": "platform", "tenant": "acme", "alertname": "tenant_spike", "severity": "critical"}
    assert alert.annotations == {"summary": "Tenant acme at 120,000 tokens/min (12.5 x)", "ratio": "12.5"}


def test_pending_that_goes_away_is_never_notified():
    out = run([(0, [ACME]), (10, []), (40, [])])
    assert out[1][1] == {} and out[2][1] == {}
    assert all(not r.notifications for r, _ in out)
    assert [(c.previous, c.alert.state) for c in out[1][0].changes] == [("pending", "inactive")]


def test_keep_firing_for_then_resolved_and_resolve_sent():
    out = run([(0, [ACME]), (30, [ACME]), (35, []), (49, []), (50, [])])
    states = [next(iter(s.values())).state for _, s in out]
    assert states == ["pending", "firing", "firing", "firing", "resolved"]  # keep_firing_for 20s after last seen at 30
    assert kinds(out[4][0]) == [("chat", "resolved", "all alerts resolved", 1),
                                ("pager", "resolved", "all alerts resolved", 1)]
    assert next(iter(out[4][1].values())).resolved_at == 50


def test_resolved_kept_for_retention_then_dropped_and_refire_is_new():
    out = run([(0, [ACME]), (30, [ACME]), (60, []), (60 + RESOLVED_RETENTION_S - 1, []),
               (60 + RESOLVED_RETENTION_S, [])])
    assert next(iter(out[3][1].values())).state == "resolved"
    assert out[4][1] == {}
    # a resolved alert whose row comes back starts over as pending (new active_at)
    out = run([(0, [ACME]), (30, [ACME]), (60, []), (100, [ACME])])
    a = next(iter(out[3][1].values()))
    assert (a.state, a.active_at, a.fired_at) == ("pending", 100, None)


def test_repeat_interval_and_no_repeat_before():
    out = run([(0, [ACME]), (30, [ACME]), (30 + 3599, [ACME]), (30 + 3600, [ACME])])
    assert kinds(out[2][0]) == []
    assert kinds(out[3][0]) == [("chat", "firing", "repeat interval elapsed", 1),
                                ("pager", "firing", "repeat interval elapsed", 1)]


def test_repeat_interval_zero_never_repeats():
    rule = replace(RULE, repeat_interval_s=0)
    out = run([(0, [ACME]), (30, [ACME]), (10 ** 6, [ACME])], rule=rule)
    assert kinds(out[2][0]) == []


def test_failed_delivery_is_asked_again_after_backoff_until_delivered():
    rule = replace(RULE, for_s=0, channels=("pager",))
    res = step({}, [ACME], 0, rule)
    assert kinds(res) == [("pager", "firing", "first notification", 1)]
    states = record_delivery(res.states, res.notifications[0], set(), 0)  # failed
    assert kinds(step(states, [ACME], 1, rule)) == []  # backing off
    res = step(states, [ACME], 5, rule)
    assert kinds(res) == [("pager", "firing", "first notification", 1)]
    states = record_delivery(res.states, res.notifications[0], {res.notifications[0].alerts[0].fingerprint}, 5)
    assert kinds(step(states, [ACME], 10, rule)) == []


def test_lost_resolve_is_resent_and_retry_after_is_honoured():
    rule = replace(RULE, for_s=0, keep_firing_for_s=0, channels=("pager",))
    res = step({}, [ACME], 0, rule)
    states = record_delivery(res.states, res.notifications[0], {a.fingerprint for a in res.notifications[0].alerts}, 0)
    res = step(states, [], 10, rule)
    assert kinds(res) == [("pager", "resolved", "all alerts resolved", 1)]
    states = record_delivery(res.states, res.notifications[0], set(), 10, retry_after_s=120)
    assert kinds(step(states, [], 100, rule)) == []
    res = step(states, [], 130, rule)
    assert kinds(res) == [("pager", "resolved", "all alerts resolved", 1)]


def test_resolve_only_to_channels_told_of_the_firing():
    rule = replace(RULE, for_s=0, keep_firing_for_s=0, channels=("pager",))
    res = step({}, [ACME], 0, rule)  # never delivered
    states = res.states
    res = step(states, [], 10, rule)
    assert res.notifications == []


def test_two_instances_group_per_channel_and_reasons():
    rule = replace(RULE, for_s=0, keep_firing_for_s=0, channels=("chat",))
    out = run([(0, [ACME]), (5, [ACME, GLOBEX]), (10, [GLOBEX]), (15, [])], rule=rule)
    assert kinds(out[0][0]) == [("chat", "firing", "first notification", 1)]
    assert kinds(out[1][0]) == [("chat", "firing", "new alerts added", 1)]
    assert kinds(out[2][0]) == [("chat", "resolved", "some alerts resolved", 1)]
    assert kinds(out[3][0]) == [("chat", "resolved", "all alerts resolved", 1)]
    fps = {a.fingerprint for _, s in out[:2] for a in s.values()}
    assert len(fps) == 2


def test_fingerprint_is_stable_and_depends_on_rule_and_labels():
    a = step({}, [ACME], 0, RULE).states
    b = step({}, [dict(ACME, value=5, ratio=1)], 99, RULE).states
    assert set(a) == set(b)  # value and extras are not identity
    other = replace(RULE, name="other")
    assert set(step({}, [ACME], 0, other).states) != set(a)
    assert set(step({}, [GLOBEX], 0, RULE).states) != set(a)


def test_step_is_pure():
    res = step({}, [ACME], 0, RULE)
    before = dict(res.states)
    step(res.states, [], 100, RULE)
    assert res.states == before


def test_other_rules_states_are_left_alone():
    res = step({}, [ACME], 0, RULE)
    other = replace(RULE, name="other")
    res2 = step(res.states, [], 1000, other)
    assert res2.states == res.states


@pytest.mark.parametrize("severity,expected", [("critical", "critical"), ("info", "info"), ("bogus", "critical")])
def test_row_severity_overrides_rule_severity_when_valid(severity, expected):
    res = step({}, [dict(ACME, severity=severity)], 0, replace(RULE, for_s=0))
    assert next(iter(res.states.values())).labels["severity"] == expected

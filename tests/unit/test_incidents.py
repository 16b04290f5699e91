"""One page per incident: inhibition and incident-wide resolves, stepped through the pure state
machine across several rules (the evaluator holds one states dict for all of them)."""

from __future__ import annotations

import pytest

from tokenpulse.alerts.incidents import DEFAULT_INHIBIT, incident, parse_inhibit
from tokenpulse.alerts.notify.pagerduty import dedup_key
from tokenpulse.alerts.rules import parse_rule
from tokenpulse.alerts.state import record_delivery, step
from tokenpulse.errors import ConfigError


def rule(name: str, severity: str, labels: str = "tenant") -> object:
    return parse_rule(f"rules/{name}.sql", f"""\
-- summary: {name} $tenant
-- interval: 5s
-- severity: {severity}
-- channels: pager, chat
SELECT 'acme' AS {labels}, 1 AS value
""")


SPIKE, OUTLIER, THROTTLED = rule("tenant_spike", "critical"), rule("tenant_outlier", "critical"), \
    rule("tenant_throttled", "critical")
RATE = parse_rule("rules/token_rate_anomaly.sql", """\
-- summary: rate
-- severity: warning
-- channels: pager, chat
SELECT 1 AS value
""")
ACME = [{"tenant": "acme", "value": 1}]


class World:
    """Every rule's alerts in one dict, each notification delivered: what a channel heard."""

    def __init__(self, inhibit=DEFAULT_INHIBIT):
        self.states, self.heard, self.inhibit = {}, [], inhibit

    def eval(self, r, rows, now):
        res = step(self.states, rows, now, r, self.inhibit, held=frozenset({"pager"}))  # pager: PagerDuty
        self.states = res.states
        for note in res.notifications:
            self.heard += [(note.channel, a.rule, a.state) for a in note.alerts]
            self.states = record_delivery(self.states, note, {a.fingerprint for a in note.alerts}, now)

    def told(self, channel="pager"):
        return [(rule, state) for ch, rule, state in self.heard if ch == channel]


def test_a_tenant_spike_is_one_page_and_resolves_once_the_incident_is_over():
    w = World()
    w.eval(SPIKE, ACME, 0)  # the spike pages first
    w.eval(RATE, [{"value": 1}], 5)  # the global rate warning: explained by the spike, muted
    w.eval(OUTLIER, ACME, 5)  # the outlier (which throttles): the spike said it, muted
    w.eval(THROTTLED, ACME, 6)  # the throttle notice: news, told
    assert w.told() == [("tenant_spike", "firing"), ("tenant_throttled", "firing")]
    # on PagerDuty both are one incident: one dedup key, one page
    keys = {dedup_key(a) for a in w.states.values() if a.rule in ("tenant_spike", "tenant_throttled")}
    assert len(keys) == 1
    # the spike calms down, the tenant is still throttled (cool-down): chat hears the spike resolved;
    # PagerDuty, whose incident it shares with the throttle, does not yet (its resolve would close it)
    for r in (SPIKE, OUTLIER, RATE):
        w.eval(r, [], 60)
    assert w.told() == [("tenant_spike", "firing"), ("tenant_throttled", "firing")]
    assert w.told("chat")[2:] == [("tenant_spike", "resolved")]
    w.eval(THROTTLED, [], 360)  # released: the incident is over; its resolve goes out now...
    w.eval(SPIKE, [], 365)  # ...and the spike's at its next evaluation; the muted ones never fired for anyone
    assert w.told()[2:] == [("tenant_throttled", "resolved"), ("tenant_spike", "resolved")]
    assert w.told("chat")[3:] == [("tenant_throttled", "resolved")]


def test_a_muted_alert_is_told_when_what_muted_it_resolves_first():
    w = World()
    w.eval(SPIKE, ACME, 0)
    w.eval(OUTLIER, ACME, 5)
    assert w.told() == [("tenant_spike", "firing")]
    w.eval(SPIKE, [], 10)  # the spike resolves while the outlier still fires: now the outlier is news
    w.eval(OUTLIER, ACME, 15)
    assert w.told() == [("tenant_spike", "firing"), ("tenant_outlier", "firing")]


def test_other_tenants_and_other_incidents_are_not_muted():
    w = World()
    w.eval(SPIKE, ACME, 0)
    w.eval(OUTLIER, [{"tenant": "globex", "value": 1}], 5)
    assert w.told() == [("tenant_spike", "firing"), ("tenant_outlier", "firing")]
    assert incident({"tenant": "acme"}, "f1") != incident({"tenant": "globex"}, "f2")
    assert incident({"dimension": "tenant", "key": "acme", "budget": "b"}, "f3") == "tenant:acme"
    assert incident({"session": "s1"}, "f4") == "session:s1" and incident({}, "f5") == "alert:f5"
    assert incident({"tenant": "unattributed"}, "f6") == "alert:f6"


def test_alert_inhibit_setting_adds_replaces_and_drops_rules():
    assert len(parse_inhibit({})) == len(DEFAULT_INHIBIT)
    assert len(parse_inhibit({"spike_before_outlier": None})) == len(DEFAULT_INHIBIT) - 1
    w = World(parse_inhibit({"spike_before_outlier": None}))
    w.eval(SPIKE, ACME, 0)
    w.eval(OUTLIER, ACME, 5)
    assert w.told() == [("tenant_spike", "firing"), ("tenant_outlier", "firing")]
    mine = parse_inhibit({"quiet_loops": {"source": {"rule": "budget"}, "target": {"rule": "agent_loop"},
                                          "equal": ["tenant"]}})
    assert len(mine) == len(DEFAULT_INHIBIT) + 1
    for bad in ({"x": {"source": "critical", "target": {}}}, {"x": {"source": {}, "target": {}, "equal": "tenant"}},
                {"x": {"source": {}, "target": {}, "when": 1}}, {"x": {"source": {"a": 1}, "target": {}}}):
        with pytest.raises(ConfigError, match="alert_inhibit.x"):
            parse_inhibit(bad)


def test_while_a_tenant_is_throttled_its_other_alerts_are_not_news():
    """throttle_says_it: equal on `incident`, so a tenant budget's forecast (its tenant in `key`) is the
    throttled tenant's too."""
    forecast = parse_rule("rules/budget_forecast.sql", """\
-- summary: forecast $key
-- severity: critical
-- channels: pager, chat
SELECT 'b' AS budget, 'tenant' AS dimension, 'acme' AS key, 1 AS value
""")
    w = World()
    w.eval(THROTTLED, ACME, 0)
    w.eval(OUTLIER, ACME, 1)
    w.eval(forecast, [{"budget": "b", "dimension": "tenant", "key": "acme", "value": 1},
                      {"budget": "b", "dimension": "tenant", "key": "globex", "value": 1}], 2)
    assert w.told() == [("tenant_throttled", "firing"), ("budget_forecast", "firing")]
    (told,) = [a for a in w.states.values() if a.rule == "budget_forecast" and a.deliveries]
    assert told.labels["key"] == "globex"

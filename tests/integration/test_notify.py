"""Notifiers against real local HTTP servers speaking Slack / PagerDuty / webhook answers."""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket

import pytest
import requests

from tokenpulse.alerts.notify import Context, build_notifiers, parse_channels
from tokenpulse.alerts.rules import parse_rule
from tokenpulse.alerts.state import step
from tokenpulse.errors import ConfigError
from tests.webhooks import Receiver

RULE = parse_rule("rules/tenant_outlier.sql", """\
-- summary: Tenant $tenant burns $value tokens/min
-- description: $ratio x the median tenant
-- for: 0s
-- severity: critical
-- labels: team=platform
-- channels: slack, pd, hook
-- extra: ratio
SELECT 'acme' AS tenant, 1 AS value, 2 AS ratio
""")
ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"
SECRET = "s3cret-signing-key"


@pytest.fixture
def receivers():
    rs = {k: Receiver(k) for k in ("slack", "pagerduty", "webhook")}
    yield rs
    for r in rs.values():
        r.close()


@pytest.fixture
def notifiers(receivers):
    sleeps: list[float] = []
    channels = parse_channels({
        "slack": {"type": "slack", "url": receivers["slack"].url},
        "pd": {"type": "pagerduty", "url": receivers["pagerduty"].url, "routing_key": ROUTING_KEY},
        "hook": {"type": "webhook", "url": receivers["webhook"].url, "secret": SECRET},
    })
    ns = build_notifiers(channels, Context(external_url="http://tokenpulse.local:4319"), sleep=sleeps.append,
                         backoff_s=0.01)
    ns["sleeps"] = sleeps
    return ns


def firing_then_resolved():
    res = step({}, [{"tenant": "acme", "value": 120000, "ratio": 12.5}], 1_790_000_000, RULE)
    firing = res.notifications[0]
    states = res.states
    alert = next(iter(states.values()))
    from dataclasses import replace

    resolved_alert = replace(alert, state="resolved", resolved_at=1_790_000_060)
    from tokenpulse.alerts.state import Notification

    return firing, Notification(RULE.name, "x", "all alerts resolved", (resolved_alert,))


def test_slack_payload_firing_and_resolved(receivers, notifiers):
    firing, resolved = firing_then_resolved()
    assert notifiers["slack"].send(firing).ok
    assert notifiers["slack"].send(resolved).ok
    body, done = receivers["slack"].bodies()
    assert body["text"] == "[FIRING:1] tenant_outlier: Tenant acme burns 120,000 tokens/min"
    assert body["blocks"][0] == {"type": "header", "text": {"type": "plain_text", "text": "[FIRING:1] tenant_outlier"}}
    assert body["blocks"][1] == {"type": "section", "text": {"type": "mrkdwn", "text": (
        ":red_circle: *Tenant acme burns 120,000 tokens/min*\n12.5 x the median tenant\n"
        "*team* platform  ·  *tenant* acme")}}
    assert body["blocks"][2]["elements"][0]["text"] == (
        "severity *critical* · first notification · "
        "<http://tokenpulse.local:4319/api/alerts?rule=tenant_outlier|alerts> · "
        "<http://tokenpulse.local:4319/?tenant=acme#runs-panel|runs behind it>")
    # resolved: in the past tense, with how long it lasted (the summary's numbers are the firing ones)
    assert done["text"] == ("[RESOLVED:1] tenant_outlier: resolved after 1m 0s; "
                            "it was: Tenant acme burns 120,000 tokens/min")
    assert done["blocks"][1]["text"]["text"].startswith(
        ":white_check_mark: *Resolved after 1m 0s*: it was: Tenant acme burns 120,000 tokens/min")


def test_slack_success_needs_the_ok_body(receivers, notifiers):
    receivers["slack"].script = [(200, "not ok", {})]
    firing, _ = firing_then_resolved()
    sent = notifiers["slack"].send(firing)
    assert not sent.ok and sent.delivered == frozenset()


def test_pagerduty_trigger_and_resolve_share_keys(receivers, notifiers):
    firing, resolved = firing_then_resolved()
    assert notifiers["pd"].send(firing).ok
    assert notifiers["pd"].send(resolved).ok
    trigger, resolve = receivers["pagerduty"].bodies()
    # one PagerDuty incident per tenant incident (alerts/incidents.py), a hash: no tenant name in the key
    incident_key = "tokenpulse/" + hashlib.sha256(b"tenant:acme").hexdigest()[:16]
    assert trigger == {
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": incident_key,
        "payload": {"summary": "Tenant acme burns 120,000 tokens/min", "source": "tokenpulse", "severity": "critical",
                    "timestamp": "2026-09-21T14:13:20.000Z", "component": "acme", "class": "tenant_outlier",
                    "custom_details": {"team": "platform", "tenant": "acme", "value": 120000.0,
                                       "description": "12.5 x the median tenant", "ratio": "12.5"}},
        "client": "tokenpulse", "client_url": "http://tokenpulse.local:4319/?tenant=acme#runs-panel",
        "links": [{"href": "http://tokenpulse.local:4319/?tenant=acme#runs-panel",
                   "text": "runs behind this alert (tokenpulse dashboard)"},
                  {"href": "http://tokenpulse.local:4319/api/alerts?rule=tenant_outlier", "text": "alert state"}]}
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": trigger["dedup_key"]}


def test_webhook_is_alertmanager_v4_and_signed(receivers, notifiers):
    firing, resolved = firing_then_resolved()
    assert notifiers["hook"].send(firing).ok
    assert notifiers["hook"].send(resolved).ok
    first, second = receivers["webhook"].requests
    fp = firing.alerts[0].fingerprint
    labels = {"team": "platform", "tenant": "acme", "alertname": "tenant_outlier", "severity": "critical"}
    annotations = {"summary": "Tenant acme burns 120,000 tokens/min", "description": "12.5 x the median tenant",
                   "ratio": "12.5"}
    assert first["body"] == {
        "version": "4", "groupKey": '{}:{alertname="tenant_outlier"}', "truncatedAlerts": 0, "status": "firing",
        "receiver": "hook", "notification_reason": "first notification", "groupLabels": {"alertname": "tenant_outlier"},
        "commonLabels": labels, "commonAnnotations": annotations, "routeLabels": {},
        "externalURL": "http://tokenpulse.local:4319",
        "alerts": [{"status": "firing", "labels": labels, "annotations": annotations,
                    "startsAt": "2026-09-21T14:13:20.000Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://tokenpulse.local:4319/api/alerts?rule=tenant_outlier",
                    "dashboardURL": "http://tokenpulse.local:4319/?tenant=acme#runs-panel",
                    "fingerprint": fp, "value": 120000.0}]}
    assert second["body"]["status"] == "resolved"
    assert second["body"]["notification_reason"] == "all alerts resolved"
    assert second["body"]["alerts"][0]["endsAt"] == "2026-09-21T14:14:20.000Z"
    expected = "sha256=" + hmac.new(SECRET.encode(), first["raw"], hashlib.sha256).hexdigest()
    assert first["headers"]["X-Tokenpulse-Signature"] == expected


def test_retries_429_with_retry_after_and_5xx_with_backoff(receivers, notifiers):
    receivers["pagerduty"].script = [(429, "", {"Retry-After": "2"}), (500, "oops", {}), (502, "", {})]
    firing, _ = firing_then_resolved()
    sent = notifiers["pd"].send(firing)
    assert sent.ok and sent.attempts == 4
    assert [r["status"] for r in receivers["pagerduty"].requests] == [429, 500, 502, 202]
    sleeps = notifiers["sleeps"]
    assert sleeps[0] == 2.0  # Retry-After honoured
    assert 0 <= sleeps[1] <= 0.02 and 0 <= sleeps[2] <= 0.04  # full jitter under the doubling cap


def test_long_retry_after_is_handed_back_not_slept(receivers, notifiers):
    receivers["slack"].script = [(429, "rate_limited", {"Retry-After": "30"})]
    firing, _ = firing_then_resolved()
    sent = notifiers["slack"].send(firing)
    assert not sent.ok and sent.retry_after_s == 30.0 and sent.attempts == 1
    assert notifiers["sleeps"] == []


def test_4xx_is_not_retried_and_logged_with_reason_but_no_secret(receivers, notifiers, caplog):
    receivers["pagerduty"].script = [(400, '{"status":"invalid event","errors":["bad"]}', {})]
    firing, _ = firing_then_resolved()
    with caplog.at_level(logging.INFO):
        sent = notifiers["pd"].send(firing)
    assert not sent.ok and sent.attempts == 1 and sent.status == 400
    assert "invalid event" in sent.error
    assert len(receivers["pagerduty"].requests) == 1
    text = caplog.text + repr(notifiers["pd"].channel)
    assert "invalid event" in caplog.text
    assert ROUTING_KEY not in text and receivers["pagerduty"].url not in text


def test_network_error_is_retried_then_reported(notifiers):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    channels = parse_channels({"hook": {"type": "webhook", "url": dead, "max_attempts": 3, "secret": SECRET}})
    sleeps: list[float] = []
    n = build_notifiers(channels, sleep=sleeps.append, backoff_s=0.01)["hook"]
    firing, _ = firing_then_resolved()
    sent = n.send(firing)
    assert not sent.ok and sent.attempts == 3 and sent.status == 0 and "network error" in sent.error
    assert len(sleeps) == 2


@pytest.mark.parametrize("spec,message", [
    ({"type": "email", "url": "http://x"}, "type must be one of slack, pagerduty, webhook"),
    ({"type": "pagerduty"}, "needs routing_key"),
    ({"type": "slack", "url": "ftp://x"}, "url must be an http\\(s\\) URL"),
    ({"type": "webhook", "url": "http://x", "colour": 1}, "unknown keys colour"),
])
def test_bad_channel_config_fails_clearly(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_channels({"c": spec})


def test_send_resolved_off_skips_resolves():
    ch = parse_channels({"s": {"type": "slack", "url": "http://127.0.0.1:9/x", "send_resolved": False}})
    n = build_notifiers(ch)["s"]
    firing, resolved = firing_then_resolved()
    assert n.wants(firing) and not n.wants(resolved)
    assert "127.0.0.1:9" not in repr(ch["s"])


HOSTILE = "<!channel> <https://evil.example|click here> & *bold*"


def test_span_values_cannot_ping_a_channel_or_disguise_a_link_on_any_channel(receivers, notifiers):
    """A session id, tenant or tool name comes from whoever sends spans: escaped per Slack's rules,
    carried as plain JSON strings to PagerDuty and the webhook."""
    res = step({}, [{"tenant": HOSTILE, "value": 1, "ratio": 2}], 1_790_000_000, RULE)
    note = res.notifications[0]
    for name in ("slack", "pd", "hook"):
        assert notifiers[name].send(note).ok, name
    slack = receivers["slack"].bodies()[0]
    texts = [slack["text"]] + [b["text"]["text"] for b in slack["blocks"] if b["type"] == "section"]
    for t in texts:
        assert "<!channel>" not in t and "<https://evil" not in t, t
        assert "&lt;!channel&gt; &lt;https://evil.example|click here&gt; &amp; *bold*" in t, t
    context = slack["blocks"][-1]["elements"][0]["text"]
    assert "<http://tokenpulse.local:4319/api/alerts?rule=tenant_outlier|alerts>" in context  # our own link stays
    pd = receivers["pagerduty"].bodies()[0]
    assert HOSTILE in pd["payload"]["summary"] and pd["payload"]["custom_details"]["tenant"] == HOSTILE
    hook = receivers["webhook"].bodies()[0]
    assert hook["alerts"][0]["labels"]["tenant"] == HOSTILE


def test_the_webhook_carries_the_whole_group_as_alertmanager_does(receivers, notifiers):
    """A "new alerts added" message listed only the new alert of two firing: Alertmanager's webhook
    sends every alert of the group each time."""
    first = step({}, [{"tenant": "acme", "value": 1, "ratio": 2}], 1_790_000_000, RULE)
    from tokenpulse.alerts.state import record_delivery

    states = first.states
    for note in first.notifications:  # every channel was told about acme
        states = record_delivery(states, note, {a.fingerprint for a in note.alerts}, 1_790_000_001)
    second = step(states, [{"tenant": "acme", "value": 1, "ratio": 2}, {"tenant": "globex", "value": 3, "ratio": 4}],
                  1_790_000_010, RULE)
    note = next(n for n in second.notifications if n.channel == "hook")
    assert note.reason == "new alerts added" and [a.labels["tenant"] for a in note.alerts] == ["globex"]
    assert notifiers["hook"].send(note).ok
    body = receivers["webhook"].bodies()[-1]
    assert body["status"] == "firing" and body["notification_reason"] == "new alerts added"
    assert sorted(a["labels"]["tenant"] for a in body["alerts"]) == ["acme", "globex"]


def test_every_message_links_to_the_rules_runbook(receivers, notifiers, make_service):
    """Built-in rules link to the service's own /runbooks page (written from the loaded rules); a rule
    may name its own URL. Slack's context line, PagerDuty's links and the webhook's runbook_url."""
    from dataclasses import replace

    from tokenpulse.alerts.rules import load_rules

    rules, _ = load_rules(overrides={"tenant_spike": {"factor": 4}})
    assert rules["tenant_spike"].runbook == "/runbooks#tenant_spike"
    rule = replace(RULE, runbook=rules["tenant_spike"].runbook)
    note = step({}, [{"tenant": "acme", "value": 1, "ratio": 2}], 1_790_000_000, rule).notifications[0]
    for channel in ("slack", "pd", "hook"):
        assert notifiers[channel].send(note).ok
    url = "http://tokenpulse.local:4319/runbooks#tenant_spike"
    slack_context = receivers["slack"].bodies()[0]["blocks"][-1]["elements"][0]["text"]
    assert f"<{url}|runbook>" in slack_context
    assert {"href": url, "text": "runbook"} in receivers["pagerduty"].bodies()[0]["links"]
    assert receivers["webhook"].bodies()[0]["alerts"][0]["annotations"]["runbook_url"] == url
    # a URL of your own is kept as it is
    own = replace(RULE, runbook="https://wiki.example.com/spend#outlier")
    note = step({}, [{"tenant": "acme", "value": 1, "ratio": 2}], 1_790_000_000, own).notifications[0]
    assert notifiers["hook"].send(note).ok
    assert receivers["webhook"].bodies()[1]["alerts"][0]["annotations"]["runbook_url"] == own.runbook
    # the page: every loaded rule has its section with the settings in force, no admin token needed
    svc = make_service(admin_token_sha256="0" * 64, alert_rules={"tenant_spike": {"factor": 4}})
    page = requests.get(f"http://127.0.0.1:{svc.admin.port}/runbooks", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    for name in ("tenant_spike", "tenant_outlier", "budget", "agent_loop", "tenant_throttled"):
        assert f"id='{name}'" in page.text
    assert "<tr><th><code>factor</code></th><td>4.0</td>" in page.text

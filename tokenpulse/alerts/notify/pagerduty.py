"""PagerDuty Events API v2: one event per alert, ``trigger`` then ``resolve`` with the same keys.

From PagerDuty/developer-docs ``docs/events-API-v2`` (docs/sources.md#webhooks):
required ``routing_key`` and ``event_action``; for a trigger, ``payload.summary``
(≤ 1024 chars), ``payload.source`` and ``payload.severity`` (critical, error,
warning, info: tokenpulse's severities are the same four). ``dedup_key`` (≤ 255)
names the alert's *incident* (``alerts/incidents.py``: its tenant, else its session, else the alert
itself), as Alertmanager keys PagerDuty by its group: every alert of one tenant's spike (the spike,
the throttle notice, a repeat) lands in one PagerDuty incident, one page; the resolves are held
until the whole incident is resolved (``keys_by_incident``), and the first then closes it. Success is 202; 400 is not retried;
429 and 5xx are.
"""

from __future__ import annotations

import hashlib
import json

from tokenpulse.alerts.incidents import incident
from tokenpulse.alerts.notify.base import Notifier, Sent, iso, refused_for_good, runbook_url, runs_url
from tokenpulse.alerts.state import Alert, Notification

SEVERITY = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


def dedup_key(alert: Alert) -> str:
    key = incident(alert.labels, alert.fingerprint)
    if key.startswith("alert:"):
        return f"tokenpulse/{alert.rule}/{alert.fingerprint}"
    return "tokenpulse/" + hashlib.sha256(key.encode()).hexdigest()[:16]


def event(alert: Alert, routing_key: str, source: str = "tokenpulse", external_url: str = "") -> dict:
    if alert.state == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key(alert)}
    labels = {k: v for k, v in alert.labels.items() if k not in ("alertname", "severity")}
    details = {**labels, "value": alert.value, **{k: v for k, v in alert.annotations.items() if k != "summary"}}
    body = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(alert),
        "payload": {
            "summary": alert.annotations.get("summary", alert.rule)[:1024],
            "source": source,
            "severity": SEVERITY.get(alert.labels.get("severity", ""), "warning"),
            "timestamp": iso(alert.fired_at or alert.active_at),
            "component": labels.get("tenant") or labels.get("feature") or "",
            "group": labels.get("agent_role") or "",
            "class": alert.rule,
            "custom_details": details,
        },
        "client": "tokenpulse",
    }
    if external_url:
        body["client_url"] = runs_url(external_url, alert.labels)  # the dashboard view: the runs behind it
        body["links"] = [{"href": body["client_url"], "text": "runs behind this alert (tokenpulse dashboard)"},
                         {"href": f"{external_url.rstrip('/')}/api/alerts?rule={alert.rule}", "text": "alert state"}]
    runbook = runbook_url(external_url, alert.annotations)
    if runbook:
        body.setdefault("links", []).append({"href": runbook, "text": "runbook"})
    body["payload"] = {k: v for k, v in body["payload"].items() if v != ""}
    return body


class PagerDutyNotifier(Notifier):
    keys_by_incident = True  # one dedup_key per incident: a resolve closes the whole incident

    def send(self, note: Notification) -> Sent:
        delivered: set[str] = set()
        refused: set[str] = set()
        last = None
        for alert in note.alerts:
            body = json.dumps(event(alert, self.channel.routing_key, self.context.source, self.context.external_url),
                              ensure_ascii=False).encode()
            r = self._post(body, lambda status, text: status == 202)
            last = r
            if r.ok:
                delivered.add(alert.fingerprint)
            elif refused_for_good(r.status):  # 400 "invalid event": the same event would be refused again
                refused.add(alert.fingerprint)
            elif r.retry_after_s is not None:
                break  # rate limited: the rest waits for the next attempt
        ok = len(delivered) == len(note.alerts)
        failed = last if last is not None and not last.ok else None
        return Sent(frozenset(delivered), ok, last.status if last else 0, last.attempts if last else 0,
                    failed.error if failed else "", failed.retry_after_s if failed else None, frozenset(refused))

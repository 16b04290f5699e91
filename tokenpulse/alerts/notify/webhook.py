"""Generic webhook in Alertmanager's v4 payload, so existing Alertmanager receivers work.

Shape from prometheus/alertmanager v0.34 ``notify/webhook/webhook.go`` and
``template/template.go`` (docs/sources.md#webhooks). tokenpulse
groups by rule, so ``groupLabels`` is ``{alertname}`` and ``groupKey`` is
``{}:{alertname="RULE"}``. With a ``secret`` the body is signed:
``X-Tokenpulse-Signature: sha256=<hex HMAC-SHA256(secret, body)>`` (GitHub's
X-Hub-Signature-256 convention); receivers should compare in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from tokenpulse.alerts.notify.base import Notifier, Sent, iso, refused_for_good, runbook_url, runs_url
from tokenpulse.alerts.state import Notification

SIGNATURE_HEADER = "X-Tokenpulse-Signature"


def payload(note: Notification, receiver: str, external_url: str = "", max_alerts: int = 0) -> dict:
    alerts = list(note.group or note.alerts)  # the whole group, as Alertmanager sends it
    truncated = 0
    if max_alerts and len(alerts) > max_alerts:
        truncated = len(alerts) - max_alerts
        alerts = alerts[:max_alerts]
    common_labels = _common([a.labels for a in alerts])
    common_annotations = _common([a.annotations for a in alerts])
    base = external_url.rstrip("/")
    return {
        "version": "4",
        "groupKey": '{}:{alertname="%s"}' % note.rule,
        "truncatedAlerts": truncated,
        "status": "firing" if any(a.state == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "notification_reason": note.reason,
        "groupLabels": {"alertname": note.rule},
        "commonLabels": common_labels,
        "commonAnnotations": common_annotations,
        "routeLabels": {},
        "externalURL": base,
        "alerts": [{
            "status": a.state,
            "labels": dict(a.labels),
            # runbook_url as Prometheus names it, absolute (a path on the service made a URL)
            "annotations": {**a.annotations, **({"runbook_url": runbook_url(base, a.annotations)}
                                                if a.annotations.get("runbook_url") else {})},
            "startsAt": iso(a.fired_at or a.active_at),
            "endsAt": iso(a.resolved_at if a.state == "resolved" else None),
            "generatorURL": f"{base}/api/alerts?rule={a.rule}" if base else "",
            "dashboardURL": runs_url(base, a.labels),  # the runs behind it (not in Alertmanager's format)
            "fingerprint": a.fingerprint,
            "value": a.value,
        } for a in alerts],
    }


def _common(maps: list) -> dict:
    if not maps:
        return {}
    out = dict(maps[0])
    for m in maps[1:]:
        out = {k: v for k, v in out.items() if m.get(k) == v}
    return out


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier(Notifier):
    def send(self, note: Notification) -> Sent:
        body = json.dumps(payload(note, self.channel.name, self.context.external_url, self.channel.max_alerts),
                          ensure_ascii=False).encode()
        headers = {SIGNATURE_HEADER: sign(self.channel.secret, body)} if self.channel.secret else {}
        r = self._post(body, lambda status, text: 200 <= status < 300, headers)
        fps = frozenset(a.fingerprint for a in note.alerts) if r.ok else frozenset()
        refused = frozenset(a.fingerprint for a in note.alerts) if refused_for_good(r.status) else frozenset()
        return Sent(fps, r.ok, r.status, r.attempts, r.error, r.retry_after_s, refused)

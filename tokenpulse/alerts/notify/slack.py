"""Slack incoming webhooks: ``{"text", "blocks"}``; success is HTTP 200 with the body ``ok``.

Format and answers from api.slack.com/messaging/webhooks (as summarised in
docs/sources.md#webhooks): ``text`` is the notification fallback
when ``blocks`` are present; a header is at most 150 characters, a section's
text at most 3000, a message about 50 blocks; 429 carries Retry-After.
Alertmanager checks the ``ok`` body the same way (notify/slack/slack.go).

Values come from spans (a session id, a tenant, a tool name) and so from whoever sends spans: in
Slack's text every ``&``, ``<`` and ``>`` of them is escaped as ``&amp;``, ``&lt;``, ``&gt;``
(Slack's "Formatting text for app surfaces": the three characters its markup is made of), so a
session named ``<!channel>`` does not ping a channel and ``<https://evil|click>`` is no disguised
link. The header is ``plain_text``, which Slack does not parse.
"""

from __future__ import annotations

import json

from tokenpulse.alerts.notify.base import Notifier, Sent, duration, refused_for_good, runbook_url, runs_url
from tokenpulse.alerts.state import Alert, Notification

MAX_ALERT_BLOCKS = 20  # leaves room under Slack's ~50 blocks per message
HIDDEN_LABELS = ("alertname", "severity")


def payload(note: Notification, external_url: str = "") -> dict:
    firing = [a for a in note.alerts if a.state == "firing"]
    resolved = [a for a in note.alerts if a.state == "resolved"]
    status = "FIRING" if firing else "RESOLVED"
    first = note.alerts[0]
    title = f"[{status}:{len(firing) or len(resolved)}] {note.rule}"
    summary = escape(first.annotations.get('summary', ''))
    text = f"{escape(title)}: {summary}" if firing else \
        f"{escape(title)}: resolved after {_lasted(first)}; it was: {summary}"
    blocks: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": _cut(title, 150)}}]
    for a in note.alerts[:MAX_ALERT_BLOCKS]:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(_alert_text(a), 3000)}})
    if len(note.alerts) > MAX_ALERT_BLOCKS:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"…and {len(note.alerts) - MAX_ALERT_BLOCKS} more"}]})
    context = f"severity *{escape(first.labels.get('severity', ''))}* · {escape(note.reason)}"
    if external_url:
        context += f" · <{external_url.rstrip('/')}/api/alerts?rule={note.rule}|alerts>"
        context += f" · <{runs_url(external_url, first.labels)}|runs behind it>"
    runbook = runbook_url(external_url, first.annotations)
    if runbook:
        context += f" · <{escape(runbook)}|runbook>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": _cut(text, 3000), "blocks": blocks}


def _alert_text(a: Alert) -> str:
    summary = escape(a.annotations.get('summary', a.rule))
    if a.state == "firing":
        lines = [f":red_circle: *{summary}*"]
    else:  # said in the past tense, with how long it lasted: the values in the summary are the firing ones
        lines = [f":white_check_mark: *Resolved after {_lasted(a)}*: it was: {summary}"]
    if a.annotations.get("description"):
        lines.append(escape(a.annotations["description"]))
    labels = [f"*{escape(k)}* {escape(v)}" for k, v in sorted(a.labels.items()) if k not in HIDDEN_LABELS and v != ""]
    if labels:
        lines.append("  ·  ".join(labels))
    return "\n".join(lines)


def _lasted(a: Alert) -> str:
    start = a.fired_at or a.active_at
    return duration((a.resolved_at or start) - start) if start else "?"


def escape(s: str) -> str:
    """Slack's control characters in a value: & < > (escaped as Slack asks; nothing else is)."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


class SlackNotifier(Notifier):
    def send(self, note: Notification) -> Sent:
        body = json.dumps(payload(note, self.context.external_url), ensure_ascii=False).encode()
        r = self._post(body, lambda status, text: status == 200 and text.strip() == "ok")
        fps = frozenset(a.fingerprint for a in note.alerts) if r.ok else frozenset()
        refused = frozenset(a.fingerprint for a in note.alerts) if refused_for_good(r.status) else frozenset()
        return Sent(fps, r.ok, r.status, r.attempts, r.error, r.retry_after_s, refused)

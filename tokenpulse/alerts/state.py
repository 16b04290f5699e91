"""The alert state machine: a pure function of (states, rows, now, rule).

Modelled on Prometheus ``rules/alerting.go`` and Alertmanager's
``notify/dedup_stage.go`` (docs/sources.md#webhooks):

    (no alert) --row--> pending --row for `for`--> firing --no row for `keep_firing_for`--> resolved
        pending --no row--> (dropped, never notified)
        resolved --row--> pending again (a new alert: new active_at)
        resolved --kept RESOLVED_RETENTION_S--> (dropped)

Notifications come from the same function. Each alert remembers, per channel,
what was last *delivered* (``Delivery``); ``step`` asks to send whenever the
current state differs from it, or when a firing alert's last delivery is older
than the rule's repeat interval. ``record_delivery`` feeds back the outcome: a
failed send leaves the delivery unchanged, so the next step asks again (after a
back-off), until the alert is dropped. That is how a lost resolve is re-sent,
and why a restart that reloads the states neither pages twice nor forgets a
resolve. A resolve is only sent to a channel that was told about the firing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from tokenpulse.alerts.incidents import DEFAULT_INHIBIT, Inhibit, incident, muted
from tokenpulse.alerts.rules import SEVERITIES, Rule, render

RESOLVED_RETENTION_S = 15 * 60  # as Prometheus' resolvedRetention
RESEND_BACKOFF_S = (5, 15, 30, 60, 120, 300)
# A resolved alert whose resolve waits for the rest of its incident (incidents.py) is kept this long.
INCIDENT_RETENTION_S = 24 * 3600  # after a failed delivery, wait this long before asking again


@dataclass(frozen=True)
class Delivery:
    state: str = ""  # what the channel was last told: "firing" | "resolved" | "" (nothing yet)
    at: float = 0.0  # when that was delivered
    failures: int = 0  # failed attempts since
    retry_at: float = 0.0  # no new attempt before this time


@dataclass(frozen=True)
class Alert:
    fingerprint: str
    rule: str
    labels: Mapping[str, str]  # rule labels + static labels + alertname + severity
    annotations: Mapping[str, str]  # summary, description, and the rule's extra columns
    value: float
    state: str  # "pending" | "firing" | "resolved"
    active_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    last_seen: float = 0.0
    deliveries: Mapping[str, Delivery] = field(default_factory=dict)


@dataclass(frozen=True)
class Notification:
    """One message for one rule and channel: the alerts whose news that channel has not had."""

    rule: str
    channel: str
    reason: str  # Alertmanager's notification_reason
    alerts: tuple[Alert, ...]
    # The whole group as Alertmanager sends it: every alert of the rule still firing, and the news.
    group: tuple[Alert, ...] = ()

    @property
    def status(self) -> str:
        return "firing" if any(a.state == "firing" for a in self.alerts) else "resolved"


@dataclass(frozen=True)
class Change:
    alert: Alert
    previous: str  # "" | "pending" | "firing" | "resolved"; alert.state "inactive" = dropped while pending


@dataclass
class StepResult:
    states: dict[str, Alert]
    notifications: list[Notification]
    changes: list[Change]


def instance(rule: Rule, row: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str], float]:
    """(labels, annotations, value) of one query row."""
    value = row.get("value")
    value = float(value) if value is not None else 0.0
    extra = {k: row[k] for k in rule.extra if k in row}
    own = {k: "" if v is None else str(v) for k, v in row.items() if k != "value" and k not in rule.extra}
    severity = own.pop("severity", "")  # a row may raise or lower its own severity (budgets: 50/80/100 %)
    labels = {**rule.labels, **own, "alertname": rule.name,
              "severity": severity if severity in SEVERITIES else rule.severity}
    context = {**rule.values, **extra}
    annotations = {"summary": render(rule.summary, own, context, value)}
    if rule.description:
        annotations["description"] = render(rule.description, own, context, value)
    annotations.update({k: "" if v is None else str(v) for k, v in extra.items()})
    if rule.runbook:
        annotations["runbook_url"] = rule.runbook  # Prometheus' name; a path is made absolute when sent
    return labels, annotations, value


def step(states: Mapping[str, Alert], rows: list[Mapping[str, Any]], now: float, rule: Rule,
         inhibit: tuple[Inhibit, ...] = DEFAULT_INHIBIT, held: frozenset[str] = frozenset()) -> StepResult:
    """Advance this rule's alerts to ``now`` given the query's rows. Pure: nothing is mutated.
    ``states`` holds every rule's alerts: inhibition and incidents look across rules. ``held``: the
    channels that key by incident (PagerDuty), where a resolve waits for the whole incident."""
    out: dict[str, Alert] = {fp: a for fp, a in states.items() if a.rule != rule.name}
    changes: list[Change] = []
    seen: set[str] = set()
    for row in rows:
        labels, annotations, value = instance(rule, row)
        fp = rule.fingerprint(labels)
        if fp in seen:
            continue  # duplicate label set in one result: first row wins (as Prometheus refuses duplicates)
        seen.add(fp)
        old = states.get(fp)
        if old is None or old.state == "resolved":
            state = "firing" if rule.for_s == 0 else "pending"
            a = Alert(fp, rule.name, labels, annotations, value, state, active_at=now,
                      fired_at=now if state == "firing" else None, last_seen=now,
                      deliveries=old.deliveries if old else {})
            changes.append(Change(a, old.state if old else ""))
        else:
            a = replace(old, labels=labels, annotations=annotations, value=value, last_seen=now)
            if a.state == "pending" and now - a.active_at >= rule.for_s:
                a = replace(a, state="firing", fired_at=now)
                changes.append(Change(a, "pending"))
        out[fp] = a
    for fp, old in states.items():
        if old.rule != rule.name or fp in seen:
            continue
        if old.state == "pending":
            changes.append(Change(replace(old, state="inactive"), "pending"))
            continue  # dropped
        if old.state == "firing":
            if now - old.last_seen < rule.keep_firing_for_s:
                out[fp] = old
                continue
            a = replace(old, state="resolved", resolved_at=now)
            changes.append(Change(a, "firing"))
            out[fp] = a
            continue
        # resolved: kept for a while so an undelivered resolve is re-sent, longer while its resolve
        # waits for the rest of its incident
        if old.resolved_at is not None:
            waiting = any(d.state == "firing" for d in old.deliveries.values())
            if now - old.resolved_at < (INCIDENT_RETENTION_S if waiting else RESOLVED_RETENTION_S):
                out[fp] = old
    return StepResult(out, _notifications(out, now, rule, inhibit, held), changes)


@dataclass(frozen=True)
class _View:
    """What the other rules' alerts say, for one step: the firing alerts' labels and open incidents."""

    firing: tuple[Mapping[str, str], ...]
    open: frozenset[str]
    inhibit: tuple[Inhibit, ...]
    held: frozenset[str]

    @classmethod
    def of(cls, states: Mapping[str, Alert], inhibit: tuple[Inhibit, ...], held: frozenset[str]) -> "_View":
        firing = tuple(a for a in states.values() if a.state == "firing")
        return cls(tuple(a.labels for a in firing), frozenset(incident(a.labels, a.fingerprint) for a in firing),
                   inhibit, held)


def _due(alert: Alert, channel: str, now: float, rule: Rule, view: _View) -> str:
    """Why ``channel`` must hear about ``alert`` now ('' = it need not)."""
    d = alert.deliveries.get(channel, Delivery())
    if now < d.retry_at:
        return ""
    if alert.state == "firing":
        if d.state != "firing":
            return "" if muted(alert.labels, view.firing, view.inhibit) else "new"
        if rule.repeat_interval_s > 0 and now - d.at >= rule.repeat_interval_s:
            return "repeat"
        return ""
    if alert.state == "resolved" and d.state == "firing":
        # on a channel keyed by incident, said once the whole incident is over: its resolve closes it
        if channel in view.held and incident(alert.labels, alert.fingerprint) in view.open:
            return ""
        return "resolved"
    return ""


def _notifications(states: Mapping[str, Alert], now: float, rule: Rule,
                   inhibit: tuple[Inhibit, ...] = DEFAULT_INHIBIT, held: frozenset[str] = frozenset()
                   ) -> list[Notification]:
    mine = sorted((a for a in states.values() if a.rule == rule.name), key=lambda a: (a.active_at, a.fingerprint))
    if not mine:
        return []
    view = _View.of(states, inhibit, held)
    out = []
    for channel in rule.channels:
        due = [(a, _due(a, channel, now, rule, view)) for a in mine]
        due = [(a, why) for a, why in due if why]
        if not due:
            continue
        whys = {why for _, why in due}
        told_before = any(a.deliveries.get(channel, Delivery()).state == "firing" for a in mine)
        still_firing = any(a.state == "firing" for a in mine)
        if "new" in whys:
            reason = "new alerts added" if told_before else "first notification"
        elif "resolved" in whys:
            reason = "some alerts resolved" if still_firing else "all alerts resolved"
        else:
            reason = "repeat interval elapsed"
        news = tuple(a for a, _ in due)
        # the group as Alertmanager sends it: what fires (muted alerts left out, as inhibited ones are) and the news
        group = tuple(a for a in mine if any(a is n for n in news)
                      or (a.state == "firing" and not muted(a.labels, view.firing, view.inhibit)))
        out.append(Notification(rule.name, channel, reason, news, group))
    return out


def record_delivery(states: Mapping[str, Alert], note: Notification, delivered: set[str] | frozenset[str],
                    now: float, retry_after_s: float | None = None) -> dict[str, Alert]:
    """States after ``note`` was sent: the fingerprints in ``delivered`` got through, the rest did not
    (they are asked for again after a back-off). Pure like ``step``."""
    out = dict(states)
    for sent in note.alerts:
        cur = out.get(sent.fingerprint)
        if cur is None:
            continue
        d = cur.deliveries.get(note.channel, Delivery())
        if sent.fingerprint in delivered:
            d = Delivery(sent.state, now, 0, 0.0)
        else:
            wait = RESEND_BACKOFF_S[min(d.failures, len(RESEND_BACKOFF_S) - 1)]
            if retry_after_s is not None:
                wait = max(wait, retry_after_s)
            d = replace(d, failures=d.failures + 1, retry_at=now + wait)
        out[sent.fingerprint] = replace(cur, deliveries={**cur.deliveries, note.channel: d})
    return out


def mark_sending(states: Mapping[str, Alert], note: Notification, until: float) -> dict[str, Alert]:
    """States with ``note``'s alerts marked in flight on its channel until ``until`` (or until
    ``record_delivery``), so a step in the meantime does not send them again. Pure."""
    out = dict(states)
    for sent in note.alerts:
        cur = out.get(sent.fingerprint)
        if cur is None:
            continue
        d = cur.deliveries.get(note.channel, Delivery())
        out[sent.fingerprint] = replace(cur, deliveries={**cur.deliveries, note.channel: replace(d, retry_at=until)})
    return out

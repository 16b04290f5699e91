"""Auto-throttle: per-tenant decisions driven by alerts, overridden by hand, persisted.

tokenpulse is not in the request path: it *publishes* decisions
(``GET /v1/throttle/{tenant}``) that agent services enforce
(``tokenpulse.client.ThrottleGuard``).

* A rule with ``action: throttle`` throttles the tenant of an alert instance
  when the instance starts firing: its ``tenant`` label, or for a budget on
  the tenant dimension its ``key`` (and only at the 100 % threshold).
* When every alert that throttles a tenant has resolved, the tenant is released
  after ``cooldown_s`` (a calm tenant, not a momentary dip). A new firing during
  the cool-down keeps it throttled.
* An operator can throttle a tenant for a while (``set``), which wins over the
  rules until it expires, or release it (``clear``): the alerts throttling it
  then are remembered as released by hand and do not throttle it again while
  they keep firing; a *new* alert will.

Every change is an ``Event`` (throttle / release) that the service writes to
``throttle_audit``; the decision itself is held in memory (served in microseconds) and written to
``throttle_state``. Operators hear of it through the alert path itself: ``throttle_rule`` is an
alert rule (``tenant_throttled``, evaluated every second) whose rows are the tenants throttled now,
so a notice is delivered, retried, recorded and re-sent after a restart exactly as any alert is,
and nothing a receiver does can hold up a tick or an operator's API call.
"""

from __future__ import annotations

import logging
import string
import threading
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping

from tokenpulse.alerts.rules import Rule

log = logging.getLogger(__name__)

DEFAULT_MESSAGE = ("Requests for ${tenant} are paused because usage rose far above its normal level "
                   "(${reason_short}); they resume ${cooldown_min} min after it is back to normal. Nothing is lost: "
                   "retry after ${retry_after_s} s. If this is unexpected, contact support and quote ${tenant}.")
# A budget throttle lasts until the budget's period resets: say so, with when.
BUDGET_MESSAGE = ("Requests for ${tenant} are paused until its budget resets at ${until_utc} UTC, in about "
                  "${minutes} min (${reason_short}). Nothing is lost: retry after ${retry_after_s} s. If this is "
                  "unexpected, contact support and quote ${tenant}.")
# A throttle set by hand says so: the customer is not told their usage rose when it may not have.
MANUAL_MESSAGE = ("Requests for ${tenant} are paused for about ${minutes} min by the operator (${reason_short}). "
                  "Nothing is lost: retry after ${retry_after_s} s. If this is unexpected, contact support and "
                  "quote ${tenant}.")


@dataclass(frozen=True)
class Throttle:
    tenant: str
    source: str  # "rule" | "manual"
    rule: str  # the rule of the first cause ("" for manual)
    reason: str
    actor: str  # "tokenpulse" for rules, the operator's name for manual
    since: float
    until: float | None = None  # manual: expiry
    release_at: float | None = None  # rule: set once every cause has resolved
    causes: Mapping[str, float | None] = field(default_factory=dict)  # fingerprint -> resolved_at


@dataclass(frozen=True)
class Event:
    action: str  # "throttle" | "release"
    throttle: Throttle
    at: float
    actor: str
    reason: str


def target(alert) -> str:
    """The tenant an alert would throttle ('' = none)."""
    labels = alert.labels
    if labels.get("dimension") == "tenant" and labels.get("key"):
        threshold = labels.get("threshold", "100")
        return labels["key"] if threshold.isdigit() and int(threshold) >= 100 else ""
    return labels.get("tenant", "") if labels.get("tenant") not in ("", "unattributed") else ""


THROTTLE_RULE = "tenant_throttled"


def throttle_rule(channels: Iterable[str] = ("default",)) -> Rule:
    """The notices of throttle decisions, as an alert rule over the book (``Throttler.rows``): one
    alert per tenant throttled now, its labels the tenant and the episode's start (one incident per
    episode in PagerDuty and Alertmanager receivers), resolved when the tenant is released."""
    return Rule(
        name=THROTTLE_RULE, path="tokenpulse/alerts/throttle.py", sql="-- the throttle book, not SQL", sql_line=1,
        summary="Tenant $tenant throttled ($source, by $actor): $reason",
        description="Agent services asking /v1/throttle/$tenant are told to pause: $customer_message",
        interval_s=1, severity="critical", channels=tuple(channels) or ("default",),
        extra=("actor", "reason", "customer_message", "retry_after_s"), runbook=f"/runbooks#{THROTTLE_RULE}")


def _period_end(labels) -> float | None:
    """When a budget alert's period ends (it resolves then): labels period (day|month), period_start."""
    period, start = labels.get("period"), labels.get("period_start")
    if period not in ("day", "month") or not start:
        return None
    try:
        t = datetime.fromisoformat(start).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    if period == "day":
        return (t + timedelta(days=1)).timestamp()
    return (t.replace(year=t.year + 1, month=1) if t.month == 12 else t.replace(month=t.month + 1)).timestamp()


class ThrottleBook:
    """The decisions. Methods take ``now`` and return the events they caused; thread-safe."""

    def __init__(self, throttle_rules: Iterable[str] = (), cooldown_s: float = 300.0,
                 message: str = DEFAULT_MESSAGE):
        self.throttle_rules = set(throttle_rules)
        self.cooldown_s = cooldown_s
        self.message = message
        self.throttles: dict[str, Throttle] = {}
        self.suppressed: dict[str, frozenset[str]] = {}  # tenant -> fingerprints released by hand
        self._lock = threading.Lock()

    # ------------------------------------------------------------ reads
    def decision(self, tenant: str, now: float) -> dict:
        t = self.throttles.get(tenant)
        if t is not None and t.source == "manual" and t.until is not None and now >= t.until:
            t = None  # over, even if ``advance`` has not run since (it publishes the release)
        if t is None:
            return {"tenant": tenant, "throttled": False, "reason": "", "source": "", "since": None,
                    "retry_after_s": 0, "message": ""}
        retry = self._retry_after(t, now)
        return {"tenant": tenant, "throttled": True, "reason": t.reason, "source": t.source,
                "since": t.since, "retry_after_s": retry, "message": self._message(t, retry)}

    def all(self, now: float) -> list[dict]:
        return [d for d in (self.decision(tenant, now) for tenant in sorted(self.throttles)) if d["throttled"]]

    def _retry_after(self, t: Throttle, now: float) -> int:
        """The expected time left: a manual throttle's end; a released-soon one's release; a budget
        throttle's period end plus the cool-down; else (a spike still firing) the cool-down, the
        least it can last."""
        if t.release_at is not None and t.source != "manual":
            end = t.release_at
        elif t.until is not None:
            end = t.until
        else:
            end = now + self.cooldown_s
        return max(1, int(round(end - now)))

    def _message(self, t: Throttle, retry: int) -> str:
        short = t.reason if len(t.reason) <= 80 else t.reason[:79] + "…"
        template = self.message
        if self.message == DEFAULT_MESSAGE:
            if t.source == "manual":
                template = MANUAL_MESSAGE
            elif t.rule == "budget" and t.until is not None and t.release_at is None:
                template = BUDGET_MESSAGE
        until_utc = "" if t.until is None else \
            datetime.fromtimestamp(t.until - (0 if t.source == "manual" else self.cooldown_s),
                                   timezone.utc).strftime("%Y-%m-%d %H:%M")
        return string.Template(template).safe_substitute(
            tenant=t.tenant, minutes=max(1, round(retry / 60)), retry_after_s=retry, reason=t.reason,
            reason_short=short, cooldown_min=max(1, round(self.cooldown_s / 60)), until_utc=until_utc)

    # ------------------------------------------------------------ alert-driven
    def on_alerts(self, changes, now: float) -> list[Event]:
        """Apply alert state changes (from the evaluator), then release what has cooled down."""
        events: list[Event] = []
        with self._lock:
            for change in changes:
                a = change.alert
                tenant = target(a) if a.rule in self.throttle_rules else ""
                if not tenant:
                    continue
                if a.state == "firing" and change.previous != "firing":
                    if a.fingerprint in self.suppressed.get(tenant, frozenset()):
                        continue  # released by hand while this alert fires
                    cur = self.throttles.get(tenant)
                    reason = a.annotations.get("summary", a.rule)
                    period_end = _period_end(a.labels)
                    if cur is None:
                        t = Throttle(tenant, "rule", a.rule, reason, "tokenpulse", now, causes={a.fingerprint: None},
                                     until=None if period_end is None else period_end + self.cooldown_s)
                        self.throttles[tenant] = t
                        events.append(Event("throttle", t, now, "tokenpulse", reason))
                    else:  # another cause, or a re-fire during the cool-down: keep throttling
                        self.throttles[tenant] = replace(cur, release_at=None,
                                                         causes={**cur.causes, a.fingerprint: None})
                elif a.state in ("resolved", "inactive"):
                    cur = self.throttles.get(tenant)
                    if cur is not None and a.fingerprint in cur.causes:
                        causes = {**cur.causes, a.fingerprint: now}
                        done = all(v is not None for v in causes.values())
                        self.throttles[tenant] = replace(cur, causes=causes,
                                                         release_at=now + self.cooldown_s if done else None)
                    sup = self.suppressed.get(tenant)
                    if sup and a.fingerprint in sup:
                        self.suppressed[tenant] = sup - {a.fingerprint}
            events += self._expire(now)
        return events

    def _expire(self, now: float) -> list[Event]:
        out = []
        for tenant, t in list(self.throttles.items()):
            end = t.until if t.source == "manual" else t.release_at
            if end is not None and now >= end:
                del self.throttles[tenant]
                why = "manual throttle expired" if t.source == "manual" else \
                    f"calm for the {int(self.cooldown_s)} s cool-down after its alerts resolved"
                out.append(Event("release", t, now, "tokenpulse", why))
        return out

    def advance(self, now: float) -> list[Event]:
        with self._lock:
            return self._expire(now)

    # ------------------------------------------------------------ by hand
    def set_manual(self, tenant: str, for_s: float, reason: str, actor: str, now: float) -> list[Event]:
        with self._lock:
            cur = self.throttles.get(tenant)
            t = Throttle(tenant, "manual", "", reason, actor, cur.since if cur else now, until=now + for_s,
                         causes=dict(cur.causes) if cur else {})
            self.throttles[tenant] = t
            return [Event("throttle", t, now, actor, reason)]

    def clear(self, tenant: str, actor: str, now: float, reason: str = "released by hand") -> list[Event]:
        with self._lock:
            cur = self.throttles.pop(tenant, None)
            if cur is None:
                return []
            firing = {fp for fp, resolved in cur.causes.items() if resolved is None}
            if firing:
                self.suppressed[tenant] = self.suppressed.get(tenant, frozenset()) | firing
            return [Event("release", cur, now, actor, reason)]

    # ------------------------------------------------------------ persistence
    def load(self, throttles: Iterable[Throttle], suppressed: Mapping[str, Iterable[str]]) -> None:
        with self._lock:
            self.throttles = {t.tenant: t for t in throttles}
            self.suppressed = {k: frozenset(v) for k, v in suppressed.items() if v}

    def snapshot(self, tenants: Iterable[str]) -> list[tuple[str, Throttle | None, frozenset[str]]]:
        with self._lock:
            return [(t, self.throttles.get(t), self.suppressed.get(t, frozenset())) for t in tenants]


class Throttler:
    """The book plus what its events cause: persistence and the audit log. Notices go through the
    evaluator (``throttle_rule``, ``rows``)."""

    def __init__(self, book: ThrottleBook, store=None):
        self.book = book
        self.store = store
        if store is not None:
            throttles, suppressed = store.load_throttles()
            book.load(throttles, suppressed)

    def on_alerts(self, changes, now: float) -> list[Event]:
        return self._publish(self.book.on_alerts(changes, now), now)

    def set(self, tenant: str, for_s: float, reason: str, actor: str, now: float) -> list[Event]:
        return self._publish(self.book.set_manual(tenant, for_s, reason, actor, now), now)

    def clear(self, tenant: str, actor: str, now: float) -> list[Event]:
        return self._publish(self.book.clear(tenant, actor, now), now)

    def advance(self, now: float) -> list[Event]:
        """Release what has expired (manual throttles past their ``until``, cooled-down ones);
        the service calls it every second, whether or not any rule is evaluated."""
        return self._publish(self.book.advance(now), now)

    def refresh(self) -> None:
        """Reload from storage (a receiver-role process serving decisions an evaluator makes)."""
        if self.store is not None:
            self.book.load(*self.store.load_throttles())

    def rows(self, now: float) -> list[dict]:
        """``throttle_rule``'s rows: the tenants throttled now (the decisions the API serves)."""
        decisions = self.book.all(now)
        actors = {t: th.actor for t, th, _ in self.book.snapshot(d["tenant"] for d in decisions) if th is not None}
        return [{"tenant": d["tenant"], "source": d["source"],
                 "since": datetime.fromtimestamp(d["since"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "value": d["retry_after_s"], "actor": actors.get(d["tenant"], ""), "reason": d["reason"],
                 "customer_message": d["message"], "retry_after_s": d["retry_after_s"]} for d in decisions]

    def query(self, rules_query: Callable[[Rule, float], list[dict]]) -> Callable[[Rule, float], list[dict]]:
        """An evaluator query function: ``throttle_rule`` answered from the book, others by ``rules_query``."""

        def query(rule: Rule, now: float) -> list[dict]:
            return self.rows(now) if rule.name == THROTTLE_RULE else rules_query(rule, now)

        return query

    def _publish(self, events: list[Event], now: float) -> list[Event]:
        if not events:
            return events
        for e in events:
            log.warning("tenant %s %s by %s: %s", e.throttle.tenant,
                        "THROTTLED" if e.action == "throttle" else "released", e.actor, e.reason)
        if self.store is not None:
            from tokenpulse.errors import StorageError

            try:
                self.store.save_throttles(self.book.snapshot({e.throttle.tenant for e in events}))
                self.store.audit_throttle(events)
            except StorageError as err:
                log.error("could not persist throttle decisions: %s", err)
        return events

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
``throttle_audit`` and sends to the operators' channels; the decision itself
is held in memory (served in microseconds) and written to ``throttle_state``.
"""

from __future__ import annotations

import logging
import string
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

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


def throttle_fingerprint(t: Throttle) -> str:
    """A hash like every alert's (rules.Rule.fingerprint): one per throttle episode of a tenant, so
    its firing and its release pair up in PagerDuty and Alertmanager receivers."""
    import hashlib
    import json

    key = json.dumps(["tenant_throttled", t.tenant, int(t.since)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


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
    """The book plus what its events cause: persistence, the audit log, operator notifications."""

    def __init__(self, book: ThrottleBook, store=None, notifiers: Mapping | None = None,
                 channels: Iterable[str] = ("default",)):
        self.book = book
        self.store = store
        self.notifiers = dict(notifiers or {})
        self.channels = tuple(c for c in channels if c in self.notifiers)
        # Notifications go out in the background: a slow receiver (up to ~30 s with retries) must not
        # hold the evaluator's tick or an operator's API call.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenpulse-throttle-notify")
        self._inflight: set = set()
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

    def close(self, timeout: float = 5.0) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        wait(list(self._inflight), timeout=timeout)

    def refresh(self) -> None:
        """Reload from storage (a receiver-role process serving decisions an evaluator makes)."""
        if self.store is not None:
            self.book.load(*self.store.load_throttles())

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
        self._notify(events, now)
        return events

    def _notify(self, events: list[Event], now: float) -> None:
        from tokenpulse.alerts.state import Alert, Notification

        for e in events:
            t = e.throttle
            firing = e.action == "throttle"
            labels = {"alertname": "tenant_throttled", "severity": "critical" if firing else "info",
                      "tenant": t.tenant, "source": t.source}
            summary = (f"Tenant {t.tenant} throttled ({t.source}, by {e.actor}): {e.reason}" if firing
                       else f"Tenant {t.tenant} released (by {e.actor}): {e.reason}")
            alert = Alert(throttle_fingerprint(t), "tenant_throttled", labels,
                          {"summary": summary, "customer_message": self.book.decision(t.tenant, now)["message"] if firing else ""},
                          0.0, "firing" if firing else "resolved", active_at=t.since, fired_at=t.since,
                          resolved_at=None if firing else now, last_seen=now)
            for ch in self.channels:
                note = Notification("tenant_throttled", ch, "first notification" if firing else "all alerts resolved",
                                    (alert,))
                fut = self._pool.submit(self.notifiers[ch].send, note)
                self._inflight.add(fut)
                fut.add_done_callback(lambda f, ch=ch: self._sent(f, ch))

    def _sent(self, fut, channel: str) -> None:
        self._inflight.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:  # a notifier bug must not stop throttling
            log.error("throttle notification to %s failed: %r", channel, fut.exception())

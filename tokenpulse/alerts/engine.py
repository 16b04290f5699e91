"""The evaluator: runs each rule on interval-aligned ticks, steps the state machine,
delivers notifications and persists it all.

Ticks are aligned to the rule's interval (a 5 s rule runs at :00, :05, :10...), and the rules
due at one tick run side by side (four at a time),
so evaluations of several receivers' data line up and a missed tick is well
defined: when an evaluation (or the machine) was slow and a tick went by, it is
skipped, not run late in a burst, and counted in
``tokenpulse_alert_ticks_missed_total``.

Everything that touches the world is passed in (the clock, the query function,
the notifiers, the store), so tests step time instead of sleeping.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Callable, Mapping

from tokenpulse.alerts.incidents import DEFAULT_INHIBIT, Inhibit
from tokenpulse.alerts.notify import MAX_INLINE_RETRY_AFTER_S, Notifier
from tokenpulse.alerts.routing import Route, channels_of, decide
from tokenpulse.alerts.rules import Rule, RuleError
from tokenpulse.alerts.state import (Alert, Change, Notification, StepResult, instance, mark_sending,
                                     record_delivery, step)
from tokenpulse.alerts.store import AlertStore
from tokenpulse.errors import StorageError

log = logging.getLogger(__name__)

QueryFn = Callable[[Rule, float], list[dict]]


def backend_query(backend) -> QueryFn:
    """Run a rule read-only on ``backend`` with ``now`` and its params bound server-side."""

    def query(rule: Rule, now: float) -> list[dict]:
        try:
            raw = backend.query(rule.sql, "JSON", readonly=True, params=rule.query_params(now))
        except StorageError as e:
            if e.code in (47, 62, 46, 60, 16, 36, 43, 386):  # the rule's fault, not storage's: say where
                raise RuleError(rule.where(str(e)), _first_line(str(e))) from None
            raise
        return json.loads(raw)["data"]

    return query


def check_rule(backend, rule: Rule, now: float) -> None:
    """Plan the rule's query without running it: syntax, tables, columns, a ``value`` column.
    Raises RuleError naming the rule file and line."""
    try:
        raw = backend.query(f"DESCRIBE TABLE (\n{rule.sql}\n)", "JSON", readonly=True, params=rule.query_params(now))
    except StorageError as e:
        raise RuleError(rule.where(str(e), prefix_lines=1), _first_line(str(e))) from None
    names = [row["name"] for row in json.loads(raw)["data"]]
    if "value" not in names:
        raise RuleError(f"{rule.path}:{rule.sql_line}",
                        f"the query returns no 'value' column (it returns {', '.join(names)})")


def _first_line(message: str) -> str:
    return message.split(". (", 1)[0] if ". (" in message else message


class Evaluator:
    def __init__(self, rules: Mapping[str, Rule], query: QueryFn, notifiers: Mapping[str, Notifier],
                 store: AlertStore | None = None, clock: Callable[[], float] = time.time, metrics=None,
                 on_change: Callable[[list, float], None] | None = None, delivery_wait_s: float = 2.0,
                 inhibit: tuple[Inhibit, ...] = DEFAULT_INHIBIT, routes: tuple[Route, ...] = ()):
        self.query = query
        self.inhibit = inhibit
        self.routes = routes
        self._own_channels: dict[str, tuple[str, ...]] = {}  # each rule's channels, for alerts no route takes
        self.notifiers = dict(notifiers)
        # channels keyed by incident (PagerDuty): a resolve there waits for the whole incident
        self.held = frozenset(n for n, x in self.notifiers.items() if getattr(x, "keys_by_incident", False))
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.on_change = on_change
        self.errors: dict[str, str] = {}  # rule -> last evaluation error (file:line: reason)
        self.rules: dict[str, Rule] = {}
        for name, rule in rules.items():
            unknown = [c for c in rule.channels if c not in self.notifiers and c != "default"]
            if unknown:
                self.errors[name] = f"{rule.path}:1: channels {', '.join(unknown)} are not configured " \
                                    f"(alert_channels has: {', '.join(self.notifiers) or 'none'})"
                log.error("alert rule not loaded: %s", self.errors[name])
                continue
            # no 'default' channel configured: the rule still keeps state and history
            own = tuple(c for c in rule.channels if c in self.notifiers)
            self._own_channels[name] = own
            # with routes, every channel a route names may hear this rule's alerts (decided per alert in _send)
            routed = tuple(sorted(c for c in channels_of(routes) if c in self.notifiers and c not in own))
            self.rules[name] = _with_channels(rule, own + routed)
        loaded = store.load() if store else {}
        self.states: dict[str, Alert] = {fp: a for fp, a in loaded.items() if a.rule in self.rules}
        # Alerts of rules no longer loaded (removed, disabled, broken) can never resolve by evaluation:
        # they are dropped here, and reported as resolved changes so that what they caused (a
        # throttle) is released. Their history ends with that change.
        self.orphans = [Change(replace(a, state="resolved", resolved_at=clock()), a.state)
                        for a in loaded.values() if a.rule not in self.rules]
        if self.orphans and store is not None:
            store.save([], [c.alert for c in self.orphans])
            store.history(self.orphans, clock())
        if self.orphans and on_change is not None:
            on_change(self.orphans, clock())
        self.last_slot: dict[str, int] = {}
        self.missed: dict[str, int] = {}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self.delivery_wait_s = delivery_wait_s
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tokenpulse-notify")
        self._eval_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokenpulse-evaluate")
        self._inflight: set = set()  # delivery futures not done yet (close waits for them)

    # ------------------------------------------------------------ one rule
    def evaluate(self, rule: Rule, now: float, deliver: bool = True) -> StepResult | None:
        started = time.monotonic()
        try:
            rows = self.query(rule, now)
        except RuleError as e:
            self._failed(rule, str(e))
            return None
        except Exception as e:  # storage down, timeout: keep the states, try next tick
            self._failed(rule, f"{rule.path}: evaluation failed: {e}")
            return None
        self.errors.pop(rule.name, None)
        with self._lock:
            before = self.states
            result = step(before, rows, now, rule, self.inhibit, self.held)
            self.states = result.states
        if self.metrics is not None:
            counts = {"pending": 0, "firing": 0, "resolved": 0}
            for a in result.states.values():
                counts[a.state] = counts.get(a.state, 0) + 1
            for state, n in counts.items():
                self.metrics.alerts_active.labels(state).set(n)
            self.metrics.alert_evaluations.labels(rule.name).inc()
            self.metrics.alert_evaluation_seconds.labels(rule.name).observe(time.monotonic() - started)
        if self.on_change is not None:  # every evaluation, so time-based effects (cool-downs) advance too
            try:
                self.on_change(result.changes, now)
            except Exception:
                log.exception("alert change listener failed")
        # History and state are written before anything is sent, and the delivery records after:
        # a crash in between re-sends (at least once), never loses a page.
        self._save({fp for fp, a in result.states.items() if before.get(fp) is not a},
                   [a for fp, a in before.items() if fp not in result.states])
        self._history(result.changes, now)
        if deliver and result.notifications:
            self._deliver(result.notifications, now)
        return result

    def _failed(self, rule: Rule, message: str) -> None:
        if self.errors.get(rule.name) != message:
            log.error("alert rule %s: %s", rule.name, message)
        self.errors[rule.name] = message
        if self.metrics is not None:
            self.metrics.alert_evaluation_failures.labels(rule.name).inc()

    def _deliver(self, notes: list[Notification], now: float) -> None:
        """Send in the background; wait up to ``delivery_wait_s`` so quick receivers are done by the
        time the evaluation returns, while a slow or hanging one never holds up the next tick. Until a
        send finishes, its alerts are marked in flight, so the next evaluation does not send them again."""
        started = time.monotonic()
        with self._lock:
            for note in notes:
                ch = getattr(self.notifiers[note.channel], "channel", None)
                budget = ch.timeout_s * ch.max_attempts + MAX_INLINE_RETRY_AFTER_S * (ch.max_attempts - 1) \
                    if ch is not None else 60.0
                self.states = mark_sending(self.states, note, now + budget)
        futures = [self._pool.submit(self._send, note, now, started) for note in notes]
        for f in futures:
            self._inflight.add(f)
            f.add_done_callback(self._sent)
        wait(futures, timeout=self.delivery_wait_s)

    def _sent(self, fut) -> None:
        self._inflight.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:  # a bug of ours: say so, never silently
            log.error("delivering a notification failed: %r", fut.exception())

    def _send(self, note: Notification, now: float, started: float) -> None:
        notifier = self.notifiers[note.channel]
        res = None
        retry_after = None
        ch = getattr(notifier, "channel", None)
        full = note
        # Routing: alerts the routing tree sends elsewhere, or this channel does not accept (its match),
        # count as told; the rest is sent.
        skipped = frozenset(a.fingerprint for a in note.alerts if not self._routed_here(a, note.channel)
                            or (ch is not None and not ch.accepts(a.labels)))
        if skipped:
            kept = tuple(a for a in note.alerts if a.fingerprint not in skipped)
            note = replace(note, alerts=kept, group=tuple(
                a for a in note.group if self._routed_here(a, note.channel) and (ch is None or ch.accepts(a.labels)))) \
                if kept else note
        if len(skipped) == len(full.alerts) or not notifier.wants(note):  # none routed here, or send_resolved off
            delivered = frozenset(a.fingerprint for a in full.alerts)  # counts as told
        else:
            try:
                sent = notifier.send(note)
                # refused for good counts as told: re-sending the same body cannot help (logged, counted)
                delivered, retry_after = sent.delivered | sent.refused | skipped, sent.retry_after_s
                res = {"ok": sent.ok, "status": sent.status, "attempts": sent.attempts, "error": sent.error,
                       "refused": bool(sent.refused)}
                if sent.refused:
                    log.error("channel %s refused %d notification(s) of %s for good (HTTP %s): %s; not re-sent",
                              note.channel, len(sent.refused), note.rule, sent.status, sent.error)
            except Exception as e:  # a notifier bug must not stop evaluation
                log.exception("notifier %s failed", note.channel)
                delivered, res = frozenset(), {"ok": False, "error": f"internal error: {type(e).__name__}"}
        done_at = now + (time.monotonic() - started)  # on the evaluation's clock
        with self._lock:
            self.states = record_delivery(self.states, full, delivered, done_at, retry_after)
        self._save({a.fingerprint for a in full.alerts}, [])
        if res is None:
            return
        if self.metrics is not None:
            self.metrics.alert_notifications.labels(
                note.channel, "ok" if res["ok"] else "refused" if res.get("refused") else "failed").inc()
        if self.store is not None:
            try:
                self.store.log([(note, res)], done_at)
            except StorageError as e:
                log.warning("could not write the notification log: %s", e)

    def _routed_here(self, alert: Alert, channel: str) -> bool:
        """Whether the routing tree (``alert_route``) sends ``alert`` to ``channel``; without routes,
        or when no route matches, its rule's own channels hear it."""
        if not self.routes:
            return True
        got = decide(self.routes, alert.labels)
        return channel in (got if got is not None else self._own_channels.get(alert.rule, ()))

    def _save(self, fingerprints: set[str], dropped: list[Alert]) -> None:
        """Write the *current* state of these alerts (serialized, so an older snapshot never lands last)."""
        if self.store is None or not (fingerprints or dropped):
            return
        with self._save_lock:
            with self._lock:
                current = [self.states[fp] for fp in fingerprints if fp in self.states]
            try:
                self.store.save(current, dropped)
            except StorageError as e:  # state stays in memory; the next change saves it again
                log.warning("could not persist alert state: %s", e)

    def _history(self, changes: list, now: float) -> None:
        if self.store is None or not changes:
            return
        try:
            self.store.history(changes, now)
        except StorageError as e:
            log.warning("could not write alert history: %s", e)

    # ------------------------------------------------------------ schedule
    def tick(self, now: float) -> list[str]:
        """Evaluate every rule whose interval-aligned tick has come; return their names."""
        ran = []
        for name, rule in self.rules.items():
            slot = math.floor(now / rule.interval_s)
            last = self.last_slot.get(name)
            if last is not None and slot <= last:
                continue
            if last is not None and slot > last + 1:
                self.missed[name] = self.missed.get(name, 0) + slot - last - 1
                if self.metrics is not None:
                    self.metrics.alert_ticks_missed.labels(name).inc(slot - last - 1)
            self.last_slot[name] = slot
            ran.append(name)
        # Due rules run side by side (each on its own reader: storage/embedded.py), so a tick lasts
        # as long as its slowest rule, not as long as all of them in a row.
        if len(ran) > 1:
            for f in [self._eval_pool.submit(self.evaluate, self.rules[n], now) for n in ran]:
                f.result()
        elif ran:
            self.evaluate(self.rules[ran[0]], now)
        return ran

    def next_tick(self, now: float) -> float:
        return min(((math.floor(now / r.interval_s) + 1) * r.interval_s for r in self.rules.values()),
                   default=now + 60)

    def run(self, stop: threading.Event) -> None:
        """Evaluate on ticks until ``stop`` is set (the service's evaluator thread)."""
        while not stop.is_set():
            try:
                self.tick(self.clock())
            except Exception:
                log.exception("alert evaluation tick failed")
            stop.wait(max(0.0, self.next_tick(self.clock()) - self.clock()))

    def close(self, timeout: float = 30.0) -> None:
        """Stop delivering: sends not started are dropped (their alerts stay pending delivery in
        the stored state, so the next start sends them); those in progress get ``timeout``."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._eval_pool.shutdown(wait=False, cancel_futures=True)
        wait(list(self._inflight), timeout=timeout)

    # ------------------------------------------------------------ views
    def active(self) -> list[Alert]:
        with self._lock:
            return sorted(self.states.values(), key=lambda a: (a.rule, a.active_at))

    def test(self, name: str, now: float, send: bool = False) -> dict:
        """Evaluate a rule now without touching its state; with ``send``, deliver the rows as a
        test notification (label ``test=true``) to the rule's channels."""
        rule = self.rules[name]
        rows = self.query(rule, now)
        alerts = []
        for row in rows:
            labels, annotations, value = instance(rule, row)
            labels = {**labels, "test": "true"}
            alerts.append(Alert(rule.fingerprint(labels), rule.name, labels, annotations, value, "firing",
                                active_at=now, fired_at=now, last_seen=now))
        out: dict = {"rule": name, "rows": rows,
                     "alerts": [{"fingerprint": a.fingerprint, "labels": dict(a.labels),
                                 "annotations": dict(a.annotations), "value": a.value} for a in alerts]}
        if send:
            if not alerts:  # nothing fires now: send one sample so the channel can be checked end to end
                labels = {**rule.labels, "alertname": rule.name, "severity": rule.severity, "test": "true"}
                alerts.append(Alert(rule.fingerprint(labels), rule.name, labels,
                                    {"summary": f"Test notification for rule {rule.name} (nothing fires now)"},
                                    0.0, "firing", active_at=now, fired_at=now, last_seen=now))
            out["sent"] = {}
            for channel in rule.channels:
                sent = self.notifiers[channel].send(Notification(rule.name, channel, "first notification",
                                                                 tuple(alerts)))
                out["sent"][channel] = {"ok": sent.ok, "status": sent.status, "attempts": sent.attempts,
                                        "error": sent.error}
        return out


def _with_channels(rule: Rule, channels: tuple[str, ...]) -> Rule:
    return replace(rule, channels=channels)

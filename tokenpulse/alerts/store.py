"""Alert state, history and the notification log, kept in ClickHouse.

``alert_state`` holds each alert's latest row (ReplacingMergeTree on
``updated_at``, read with FINAL; a dropped alert gets a row with
``deleted = 1``). ``alerts`` is the history of state changes and
``alert_notifications`` every delivery attempt. Tables: migration 0004.
"""

from __future__ import annotations

import json
import time
from typing import Iterable, Mapping

import pyarrow as pa

from tokenpulse.alerts.state import Alert, Change, Delivery, Notification

_MS = pa.timestamp("ms", tz="UTC")
_MAP = pa.map_(pa.string(), pa.string())


def _ms(ts: float | None) -> int | None:
    return None if ts is None else int(round(ts * 1000))


class AlertStore:
    def __init__(self, backend, database: str):
        self.backend = backend
        self.db = database

    def load(self) -> dict[str, Alert]:
        raw = self.backend.query(
            f"SELECT fingerprint, rule, labels, annotations, state, value, toUnixTimestamp64Milli(active_at), "
            f"toUnixTimestamp64Milli(fired_at), toUnixTimestamp64Milli(resolved_at), "
            f"toUnixTimestamp64Milli(last_seen), deliveries "
            f"FROM {self.db}.alert_state FINAL WHERE deleted = 0", "JSONCompact", readonly=False)
        out = {}
        for fp, rule, labels, ann, state, value, active, fired, resolved, seen, deliveries in json.loads(raw)["data"]:
            out[fp] = Alert(fp, rule, labels, ann, float(value), state, int(active) / 1000,
                            None if fired is None else int(fired) / 1000,
                            None if resolved is None else int(resolved) / 1000, int(seen) / 1000,
                            {ch: Delivery(**d) for ch, d in json.loads(deliveries or "{}").items()})
        return out

    def save(self, changed: Iterable[Alert], dropped: Iterable[Alert]) -> None:
        rows = [(a, 0) for a in changed] + [(a, 1) for a in dropped]
        if not rows:
            return
        now_us = int(time.time() * 1e6)
        data = pa.table({
            "fingerprint": pa.array([a.fingerprint for a, _ in rows], pa.string()),
            "rule": pa.array([a.rule for a, _ in rows], pa.string()),
            "labels": pa.array([list(a.labels.items()) for a, _ in rows], _MAP),
            "annotations": pa.array([list(a.annotations.items()) for a, _ in rows], _MAP),
            "state": pa.array([a.state for a, _ in rows], pa.string()),
            "value": pa.array([a.value for a, _ in rows], pa.float64()),
            "active_at": pa.array([_ms(a.active_at) for a, _ in rows], _MS),
            "fired_at": pa.array([_ms(a.fired_at) for a, _ in rows], _MS),
            "resolved_at": pa.array([_ms(a.resolved_at) for a, _ in rows], _MS),
            "last_seen": pa.array([_ms(a.last_seen) for a, _ in rows], _MS),
            "deliveries": pa.array([json.dumps({ch: d.__dict__ for ch, d in a.deliveries.items()})
                                    for a, _ in rows], pa.string()),
            "deleted": pa.array([d for _, d in rows], pa.uint8()),
            # distinct, increasing versions within one insert so FINAL keeps the last
            "updated_at": pa.array([now_us + i for i in range(len(rows))], pa.timestamp("us", tz="UTC")),
        })
        self.backend.insert_arrow(f"{self.db}.alert_state", data)

    def history(self, changes: Iterable[Change], now: float) -> None:
        changes = list(changes)
        if not changes:
            return
        data = pa.table({
            "at": pa.array([_ms(now)] * len(changes), _MS),
            "rule": pa.array([c.alert.rule for c in changes], pa.string()),
            "fingerprint": pa.array([c.alert.fingerprint for c in changes], pa.string()),
            "state": pa.array([c.alert.state for c in changes], pa.string()),
            "previous": pa.array([c.previous for c in changes], pa.string()),
            "severity": pa.array([c.alert.labels.get("severity", "") for c in changes], pa.string()),
            "labels": pa.array([list(c.alert.labels.items()) for c in changes], _MAP),
            "value": pa.array([c.alert.value for c in changes], pa.float64()),
            "summary": pa.array([c.alert.annotations.get("summary", "") for c in changes], pa.string()),
            "description": pa.array([c.alert.annotations.get("description", "") for c in changes], pa.string()),
        })
        self.backend.insert_arrow(f"{self.db}.alerts", data)

    def log(self, entries: list[tuple[Notification, Mapping]], now: float) -> None:
        """``entries``: (notification, {ok, status, attempts, error}) pairs."""
        if not entries:
            return
        data = pa.table({
            "at": pa.array([_ms(now)] * len(entries), _MS),
            "rule": pa.array([n.rule for n, _ in entries], pa.string()),
            "channel": pa.array([n.channel for n, _ in entries], pa.string()),
            "kind": pa.array([n.status for n, _ in entries], pa.string()),
            "reason": pa.array([n.reason for n, _ in entries], pa.string()),
            "fingerprints": pa.array([[a.fingerprint for a in n.alerts] for n, _ in entries], pa.list_(pa.string())),
            "ok": pa.array([int(bool(r["ok"])) for _, r in entries], pa.uint8()),
            "http_status": pa.array([int(r.get("status", 0)) for _, r in entries], pa.uint16()),
            "attempts": pa.array([min(255, int(r.get("attempts", 0))) for _, r in entries], pa.uint8()),
            "error": pa.array([str(r.get("error", "")) for _, r in entries], pa.string()),
        })
        self.backend.insert_arrow(f"{self.db}.alert_notifications", data)

    def replace_budgets(self, budgets: list[Mapping]) -> None:
        self.backend.command(f"TRUNCATE TABLE IF EXISTS {self.db}.budgets")
        if not budgets:
            return
        data = pa.table({
            "name": pa.array([b["name"] for b in budgets], pa.string()),
            "dimension": pa.array([b["dimension"] for b in budgets], pa.string()),
            "value": pa.array([b["value"] for b in budgets], pa.string()),
            "period": pa.array([b["period"] for b in budgets], pa.string()),
            "limit_usd": pa.array([float(b["limit_usd"]) for b in budgets], pa.float64()),
        })
        self.backend.insert_arrow(f"{self.db}.budgets", data)

    # ------------------------------------------------------------ throttle (migration 0005)
    def load_throttles(self):
        from tokenpulse.alerts.throttle import Throttle

        raw = self.backend.query(
            f"SELECT tenant, throttled, source, rule, reason, actor, toUnixTimestamp64Milli(since), "
            f"toUnixTimestamp64Milli(until), toUnixTimestamp64Milli(release_at), causes, suppressed "
            f"FROM {self.db}.throttle_state FINAL", "JSONCompact", readonly=False)
        throttles, suppressed = [], {}
        for tenant, on, source, rule, reason, actor, since, until, release, causes, sup in json.loads(raw)["data"]:
            if int(on):
                throttles.append(Throttle(tenant, source, rule, reason, actor, int(since) / 1000,
                                          None if until is None else int(until) / 1000,
                                          None if release is None else int(release) / 1000,
                                          json.loads(causes or "{}")))
            if sup and json.loads(sup):
                suppressed[tenant] = json.loads(sup)
        return throttles, suppressed

    def save_throttles(self, rows) -> None:
        """``rows``: (tenant, Throttle or None when released, suppressed fingerprints)."""
        rows = list(rows)
        if not rows:
            return
        now_us = int(time.time() * 1e6)
        t = [r[1] for r in rows]
        data = pa.table({
            "tenant": pa.array([r[0] for r in rows], pa.string()),
            "throttled": pa.array([int(x is not None) for x in t], pa.uint8()),
            "source": pa.array([x.source if x else "" for x in t], pa.string()),
            "rule": pa.array([x.rule if x else "" for x in t], pa.string()),
            "reason": pa.array([x.reason if x else "" for x in t], pa.string()),
            "actor": pa.array([x.actor if x else "" for x in t], pa.string()),
            "since": pa.array([_ms(x.since) if x else 0 for x in t], _MS),
            "until": pa.array([_ms(x.until) if x else None for x in t], _MS),
            "release_at": pa.array([_ms(x.release_at) if x else None for x in t], _MS),
            "causes": pa.array([json.dumps(dict(x.causes)) if x else "{}" for x in t], pa.string()),
            "suppressed": pa.array([json.dumps(sorted(r[2])) for r in rows], pa.string()),
            "updated_at": pa.array([now_us + i for i in range(len(rows))], pa.timestamp("us", tz="UTC")),
        })
        self.backend.insert_arrow(f"{self.db}.throttle_state", data)

    def audit_throttle(self, events) -> None:
        events = list(events)
        if not events:
            return
        data = pa.table({
            "at": pa.array([_ms(e.at) for e in events], _MS),
            "tenant": pa.array([e.throttle.tenant for e in events], pa.string()),
            "action": pa.array([e.action for e in events], pa.string()),
            "source": pa.array([e.throttle.source for e in events], pa.string()),
            "rule": pa.array([e.throttle.rule for e in events], pa.string()),
            "actor": pa.array([e.actor for e in events], pa.string()),
            "reason": pa.array([e.reason for e in events], pa.string()),
        })
        self.backend.insert_arrow(f"{self.db}.throttle_audit", data)

"""One page per incident: which alerts belong together, and which silence which.

A tenant's spike fires ``tenant_spike``, then ``tenant_outlier`` (which throttles it), the throttle
notice ``tenant_throttled``, and often the global rate warnings; a budget crossing fires 50, 80 and
100 % at once. Told separately that is 4-5 messages and as many PagerDuty incidents for one thing
going wrong. Two mechanisms, both as Alertmanager has them:

* **Incidents** (Alertmanager's ``group_by``, per tenant): ``incident(alert)`` is the tenant the
  alert is about (its ``tenant`` label, or a tenant budget's ``key``), else its session, else the
  alert alone. PagerDuty gets one ``dedup_key`` per incident, so every alert of it lands in one
  PagerDuty incident (one page); there an alert's resolve waits until the whole incident is
  resolved (``state.step``, ``held``), so the incident is not closed while the tenant still spikes
  or is throttled. Other channels hear each alert resolve, as Alertmanager's group messages do.
* **Inhibition** (Alertmanager's ``inhibit_rules``): an alert matching a rule's ``target`` is not
  sent while an alert matching its ``source`` fires with the same values of the ``equal`` labels.
  It is only muted: it still fires, shows in ``/api/alerts`` and throttles; when the source
  resolves and the target still fires, the target is sent. A muted alert that resolves is never
  announced as resolved (nobody was told it fired). The rules are named (``DEFAULT_RULES``); the
  ``alert_inhibit`` setting adds rules and replaces or (with ``null``) removes defaults by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from tokenpulse.errors import ConfigError


@dataclass(frozen=True)
class Inhibit:
    source: Mapping[str, tuple[str, ...]]  # label -> accepted values
    target: Mapping[str, tuple[str, ...]]
    equal: tuple[str, ...] = ()

    @staticmethod
    def _matches(match: Mapping[str, tuple[str, ...]], labels: Mapping[str, str]) -> bool:
        return all(labels.get(k, "") in values for k, values in match.items())

    def mutes(self, target: Mapping[str, str], source: Mapping[str, str]) -> bool:
        return (self._matches(self.target, target) and self._matches(self.source, source)
                and all(_same(k, target, source) for k in self.equal))


def _same(label: str, target: Mapping[str, str], source: Mapping[str, str]) -> bool:
    """``equal`` on one label; ``incident`` stands for the incident both belong to (a tenant's alerts
    share it whatever their labels are called: ``tenant``, a tenant budget's ``key``)."""
    if label == "incident":
        mine = incident(target, "")
        return not mine.startswith("alert:") and mine == incident(source, "")
    return target.get(label, "") == source.get(label, "")


def _rule(source: dict, target: dict, equal: Iterable[str] = ()) -> Inhibit:
    norm = lambda m: {("alertname" if k == "rule" else k): tuple([v] if isinstance(v, str) else v)  # noqa: E731
                      for k, v in m.items()}
    return Inhibit(norm(source), norm(target), tuple(equal))


DEFAULT_RULES: dict[str, dict] = {
    # a tenant's critical alert silences its warnings and infos
    "critical_silences_warnings": {"source": {"severity": "critical"}, "target": {"severity": ["warning", "info"]},
                                   "equal": ["tenant"]},
    # a tenant spiking explains the global rate warnings
    "tenant_spike_explains_rate": {"source": {"rule": ["tenant_spike", "tenant_outlier"]},
                                   "target": {"rule": ["token_rate_anomaly", "token_rate_anomaly_by_role"]}},
    # the spike page came first and says it all; the outlier still throttles (and the throttle is told)
    "spike_before_outlier": {"source": {"rule": "tenant_spike"}, "target": {"rule": "tenant_outlier"},
                             "equal": ["tenant"]},
    # while a tenant is throttled, the throttle notice says what is going on with it: its spike,
    # outlier or budget forecast firing (again, or later than the notice) is not news
    "throttle_says_it": {"source": {"rule": "tenant_throttled"},
                         "target": {"rule": ["tenant_spike", "tenant_outlier", "budget_forecast"]},
                         "equal": ["incident"]},
    # a budget: the highest threshold crossed, once (100 % silences 80 and 50; 80 silences 50)
    "budget_highest_threshold": {"source": {"rule": "budget", "severity": "critical"},
                                 "target": {"rule": "budget", "severity": ["warning", "info"]},
                                 "equal": ["budget", "key", "period_start"]},
    "budget_warning_over_info": {"source": {"rule": "budget", "severity": "warning"},
                                 "target": {"rule": "budget", "severity": "info"},
                                 "equal": ["budget", "key", "period_start"]},
    # a budget forecast pages before the crossing; the crossing, once there, says it; the forecast
    # says more than the 50 and 80 % marks
    "budget_crossed_over_forecast": {"source": {"rule": "budget", "severity": "critical"},
                                     "target": {"rule": "budget_forecast"}, "equal": ["budget", "key", "period_start"]},
    "budget_forecast_over_marks": {"source": {"rule": "budget_forecast"},
                                   "target": {"rule": "budget", "severity": ["warning", "info"]},
                                   "equal": ["budget", "key", "period_start"]},
}


def parse_inhibit(raw: Mapping[str, Any] | None = None, source: str = "alert_inhibit") -> tuple[Inhibit, ...]:
    """``DEFAULT_RULES`` with the ``alert_inhibit`` setting applied: {NAME: {source: {label: value(s)},
    target: {...}, equal: [labels]}}, or {NAME: null} to drop a default."""
    merged: dict[str, Any] = {**DEFAULT_RULES, **dict(raw or {})}
    out = []
    for name, item in merged.items():
        if item is None:
            continue
        where = f"{source}.{name}"
        if not isinstance(item, Mapping) or set(item) - {"source", "target", "equal"} \
                or not isinstance(item.get("source"), Mapping) or not isinstance(item.get("target"), Mapping):
            raise ConfigError(f"{where}: must be {{source: {{label: values}}, target: {{label: values}}, "
                              f"equal: [labels]}}, or null to drop it")
        for side in ("source", "target"):
            if not all(isinstance(v, (str, list)) for v in item[side].values()):
                raise ConfigError(f"{where}.{side}: each label maps to a value or a list of values")
        equal = item.get("equal", [])
        if not isinstance(equal, list) or not all(isinstance(x, str) for x in equal):
            raise ConfigError(f"{where}.equal: must be a list of label names")
        out.append(_rule(dict(item["source"]), dict(item["target"]), equal))
    return tuple(out)


DEFAULT_INHIBIT = parse_inhibit()


def incident(labels: Mapping[str, str], fingerprint: str) -> str:
    """The incident an alert belongs to: its tenant, else its session, else itself."""
    tenant = labels.get("tenant", "")
    if not tenant and labels.get("dimension") == "tenant":
        tenant = labels.get("key", "")
    if tenant and tenant != "unattributed":
        return f"tenant:{tenant}"
    if labels.get("session"):
        return f"session:{labels['session']}"
    if labels.get("budget"):  # a budget's forecast and crossings, one period
        return f"budget:{labels['budget']}:{labels.get('key', '')}:{labels.get('period_start', '')}"
    return f"alert:{fingerprint}"


def muted(labels: Mapping[str, str], firing: Iterable[Mapping[str, str]], rules: Iterable[Inhibit]) -> bool:
    """Whether an alert with ``labels`` is inhibited by one of the ``firing`` alerts' labels."""
    rules = tuple(rules)
    return any(r.mutes(labels, src) for src in firing if src is not labels for r in rules)

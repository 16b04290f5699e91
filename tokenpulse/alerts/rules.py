"""Alert rules: one ``.sql`` file each, a header of ``--`` lines, then one query.

A rule file looks like this (``queries/rules/tenant_outlier.sql``)::

    -- summary: Tenant $tenant burns $value x the median tenant's tokens/min
    -- description: What it means and what to look at first.
    -- interval: 5s
    -- for: 15s
    -- keep_firing_for: 1m
    -- repeat_interval: 4h
    -- severity: critical
    -- labels: team=platform
    -- channels: default
    -- extra: tokens_per_min, median_tokens_per_min
    -- action: throttle
    -- runbook: https://wiki.example.com/runbooks/tenant-outlier
    -- param: factor Float64 10 Page when a tenant is this many times the median tenant
    SELECT tenant, ... AS value, ... FROM usage_minute WHERE minute >= {now:DateTime64(3, 'UTC')} - ...

The query returns one row per alert instance: the label columns, ``value``,
and the message-only columns named in ``extra``. Every rule receives the
evaluation time as the query parameter ``{now:DateTime64(3, 'UTC')}`` (so a
test steps time by passing it) plus its declared ``param``s, bound
server-side. ``summary`` and ``description`` are ``string.Template`` texts
over the labels, extras and ``$value``. ``runbook`` is the rule's runbook (a URL, or a path on the
service such as ``/runbooks#NAME``); every message links to it. Built-in rules default to their
section of the service's own ``/runbooks`` page (admin.py), rendered from the rules themselves.

A bad rule is reported as ``FILE:LINE: reason`` and skipped; the others load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Mapping

from tokenpulse.errors import TokenpulseError
from tokenpulse.queries import parse_duration, QueryError

SEVERITIES = ("critical", "error", "warning", "info")
PARAM_TYPES = ("UInt32", "UInt64", "Float64", "String")
_KEYS = ("name", "summary", "description", "interval", "for", "keep_firing_for", "repeat_interval", "severity",
         "labels", "channels", "extra", "action", "runbook", "param")
_HEADER_RE = re.compile(r"^--\s*([a-z_]+):\s*(.*)$")
_PARAM_RE = re.compile(r'^(\w+)\s+(\w+)\s+("[^"]*"|\S+)\s*(.*)$')
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USED_RE = re.compile(r"\{(\w+):")
_IDENT_RE = re.compile(r"(?:identifier|table|column|function) [`'](\w+)[`']")
_LINE_RE = re.compile(r"\(line (\d+), col \d+\)")


class RuleError(TokenpulseError):
    """A rule that cannot load or run, with ``where`` = ``file:line``."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.reason = message


@dataclass(frozen=True)
class RuleParam:
    name: str
    type: str
    default: str
    doc: str


@dataclass(frozen=True)
class Rule:
    name: str
    path: str
    sql: str
    sql_line: int  # line of the file where the query starts (for error positions)
    summary: str
    description: str = ""
    interval_s: int = 60
    for_s: int = 0
    keep_firing_for_s: int = 0
    repeat_interval_s: int = 4 * 3600
    severity: str = "warning"
    labels: Mapping[str, str] = field(default_factory=dict)
    channels: tuple[str, ...] = ("default",)
    extra: tuple[str, ...] = ()
    action: str = ""
    params: tuple[RuleParam, ...] = ()
    values: Mapping[str, Any] = field(default_factory=dict)  # bound param values (defaults + overrides)
    runbook: str = ""  # a URL, or a path on the service ("/runbooks#NAME")

    def query_params(self, now: float) -> dict:
        return {**self.values, "now": format_time(now)}

    def fingerprint(self, labels: Mapping[str, str]) -> str:
        """Stable id of one alert instance: the rule and its labels (Prometheus uses the label set)."""
        key = json.dumps([self.name, sorted(labels.items())], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "summary": self.summary, "description": self.description,
                "interval_s": self.interval_s, "for_s": self.for_s, "keep_firing_for_s": self.keep_firing_for_s,
                "repeat_interval_s": self.repeat_interval_s, "severity": self.severity, "labels": dict(self.labels),
                "channels": list(self.channels), "action": self.action, "runbook": self.runbook,
                "params": {p.name: self.values[p.name] for p in self.params}}

    def where(self, message: str, prefix_lines: int = 0) -> str:
        """``file:line`` for a ClickHouse error about this query (run after ``prefix_lines`` extra lines)."""
        m = _LINE_RE.search(message)
        if m:
            return f"{self.path}:{self.sql_line + max(0, int(m.group(1)) - 1 - prefix_lines)}"
        m = _IDENT_RE.search(message)  # unknown column/table: the first line that names it
        if m:
            for i, line in enumerate(self.sql.splitlines()):
                if re.search(rf"\b{re.escape(m.group(1))}\b", line):
                    return f"{self.path}:{self.sql_line + i}"
        return f"{self.path}:{self.sql_line}"


def format_time(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def render(template: str, labels: Mapping[str, str], extra: Mapping[str, Any], value: float) -> str:
    mapping = {k: _fmt(v) for k, v in {**extra, **labels}.items()}
    mapping["value"] = _fmt(value)
    return string.Template(template).safe_substitute(mapping)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"


def _convert_param(p: RuleParam, raw: Any, where: str) -> Any:
    try:
        if p.type in ("UInt32", "UInt64"):
            v = parse_duration(str(raw))
            if not 0 <= v < 2 ** (32 if p.type == "UInt32" else 64):
                raise ValueError
            return v
        if p.type == "Float64":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        return str(raw)
    except (QueryError, ValueError, TypeError):
        raise RuleError(where, f"param {p.name}: {raw!r} is not a valid {p.type}") from None


def _duration(raw: str, where: str, key: str) -> int:
    try:
        return parse_duration(str(raw))
    except QueryError:
        raise RuleError(where, f"{key}: {raw!r} is not a duration (e.g. 5s, 1m, 4h; 0 for none)") from None


def parse_rule(path: str, text: str) -> Rule:
    """Parse one rule file; raise RuleError naming ``path:line`` on anything wrong."""
    stem = os.path.splitext(os.path.basename(path))[0]
    head: dict[str, tuple[str, int]] = {}
    params: list[RuleParam] = []
    sql_line = 0
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            continue
        if not s.startswith("--"):
            sql_line = n
            break
        m = _HEADER_RE.match(s)
        if not m:
            continue  # a plain comment
        key, value = m.group(1), m.group(2).strip()
        where = f"{path}:{n}"
        if key not in _KEYS:
            raise RuleError(where, f"unknown header {key!r} (known: {', '.join(_KEYS)})")
        if key == "param":
            pm = _PARAM_RE.match(value)
            if not pm or pm.group(2) not in PARAM_TYPES:
                raise RuleError(where, f"param must be 'NAME TYPE DEFAULT doc' with TYPE one of "
                                       f"{', '.join(PARAM_TYPES)}: {value!r}")
            p = RuleParam(pm.group(1), pm.group(2), pm.group(3).strip('"'), pm.group(4).strip())
            if p.name == "now" or any(q.name == p.name for q in params):
                raise RuleError(where, f"param {p.name!r} is reserved or declared twice")
            _convert_param(p, p.default, where)
            params.append(p)
        elif key in head:
            raise RuleError(where, f"header {key!r} given twice")
        else:
            head[key] = (value, n)
    if not sql_line:
        raise RuleError(f"{path}:{len(lines)}", "no query after the header")
    sql = "\n".join(lines[sql_line - 1:]).strip().rstrip(";")

    def get(key: str, default: str = "") -> tuple[str, str]:
        value, n = head.get(key, (default, sql_line))
        return value, f"{path}:{n}"

    name, where = get("name", stem)
    if not _NAME_RE.match(name):
        raise RuleError(where, f"name {name!r} must be lowercase letters, digits and _")
    summary, where = get("summary")
    if not summary:
        raise RuleError(f"{path}:1", "no '-- summary:' header (the one-line alert text)")
    severity, where = get("severity", "warning")
    if severity not in SEVERITIES:
        raise RuleError(where, f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    labels: dict[str, str] = {}
    value, where = get("labels")
    for item in filter(None, (x.strip() for x in value.split(","))):
        k, eq, v = item.partition("=")
        if not eq or not _LABEL_RE.match(k.strip()):
            raise RuleError(where, f"labels must be 'name=value, ...': {item!r}")
        labels[k.strip()] = v.strip()
    channels = tuple(c.strip() for c in get("channels", "default")[0].split(",") if c.strip())
    extra = tuple(c.strip() for c in get("extra")[0].split(",") if c.strip())
    interval = _duration(*get("interval", "60s"), "interval")
    if interval <= 0:
        raise RuleError(get("interval")[1], "interval must be at least 1s")
    action, where = get("action")
    if action not in ("", "throttle"):
        raise RuleError(where, f"action {action!r} is not 'throttle'")
    used = set(_USED_RE.findall(sql))
    declared = {p.name for p in params} | {"now"}
    if used - declared:
        raise RuleError(f"{path}:{sql_line}", f"query uses undeclared parameters {sorted(used - declared)}")
    if {p.name for p in params} - used:
        raise RuleError(f"{path}:{sql_line}", f"declared parameters not used: {sorted({p.name for p in params} - used)}")
    return Rule(
        name=name, path=path, sql=sql, sql_line=sql_line, summary=summary, description=get("description")[0],
        interval_s=interval, for_s=_duration(*get("for", "0"), "for"),
        keep_firing_for_s=_duration(*get("keep_firing_for", "0"), "keep_firing_for"),
        repeat_interval_s=_duration(*get("repeat_interval", "4h"), "repeat_interval"),
        severity=severity, labels=labels, channels=channels or ("default",), extra=extra, action=action,
        params=tuple(params), values={p.name: _convert_param(p, p.default, path) for p in params},
        runbook=get("runbook")[0],
    )


# Keys of an `alert_rules:` override that are not rule parameters.
OVERRIDE_KEYS = {"enabled", "interval", "for", "keep_firing_for", "repeat_interval", "severity", "channels",
                 "labels", "action", "runbook"}


def apply_overrides(rule: Rule, over: Mapping[str, Any], source: str) -> Rule | None:
    """The rule with config overrides applied (thresholds, timings, channels); None if disabled."""
    if over.get("enabled", True) is False:
        return None
    changes: dict[str, Any] = {}
    for key, attr in (("interval", "interval_s"), ("for", "for_s"), ("keep_firing_for", "keep_firing_for_s"),
                      ("repeat_interval", "repeat_interval_s")):
        if key in over:
            changes[attr] = _duration(str(over[key]), source, key)
    if "severity" in over:
        if over["severity"] not in SEVERITIES:
            raise RuleError(source, f"severity {over['severity']!r} is not one of {', '.join(SEVERITIES)}")
        changes["severity"] = over["severity"]
    if "channels" in over:
        ch = over["channels"]
        changes["channels"] = tuple([ch] if isinstance(ch, str) else ch)
    if "labels" in over:
        changes["labels"] = {**rule.labels, **{str(k): str(v) for k, v in dict(over["labels"]).items()}}
    if "runbook" in over:
        changes["runbook"] = str(over["runbook"] or "")
    if "action" in over:
        changes["action"] = "" if over["action"] in (None, "", "none") else str(over["action"])
    byname = {p.name: p for p in rule.params}
    values = dict(rule.values)
    for key, raw in over.items():
        if key in OVERRIDE_KEYS:
            continue
        if key not in byname:
            raise RuleError(source, f"rule {rule.name} has no parameter {key!r} "
                                    f"(it takes: {', '.join(byname) or 'none'})")
        values[key] = _convert_param(byname[key], raw, source)
    return replace(rule, values=values, **changes)


def builtin_rule_files() -> list[tuple[str, str]]:
    out = []
    for entry in sorted(resources.files("tokenpulse.queries.rules").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            out.append((f"tokenpulse/queries/rules/{entry.name}", entry.read_text(encoding="utf-8")))
    return out


def load_rules(extra_dir: str = "", overrides: Mapping[str, Mapping[str, Any]] | None = None
               ) -> tuple[dict[str, Rule], list[RuleError]]:
    """Built-in rules plus the ``*.sql`` files of ``extra_dir`` (a user file replaces a built-in of
    the same name). Returns (rules by name, errors); a bad rule never stops the others."""
    files = builtin_rule_files()
    if extra_dir:
        try:
            names = sorted(os.listdir(extra_dir))
        except OSError as e:
            return {}, [RuleError(extra_dir, f"cannot read the rules directory: {e.strerror}")]
        for fname in names:
            if fname.endswith(".sql"):
                path = os.path.join(extra_dir, fname)
                try:
                    with open(path, encoding="utf-8") as fh:
                        files.append((path, fh.read()))
                except (OSError, UnicodeDecodeError) as e:
                    files.append((path, f"-- unreadable: {e}"))
    rules: dict[str, Rule] = {}
    errors: list[RuleError] = []
    for path, text in files:
        try:
            rule = parse_rule(path, text)
        except RuleError as e:
            errors.append(e)
            continue
        if not rule.runbook and path.startswith("tokenpulse/queries/rules/"):
            rule = replace(rule, runbook=f"/runbooks#{rule.name}")
        rules[rule.name] = rule
    overrides = overrides or {}
    for name, over in overrides.items():
        if name not in rules:
            errors.append(RuleError("alert_rules", f"override for unknown rule {name!r}"))
            continue
        try:
            got = apply_overrides(rules[name], over or {}, f"alert_rules.{name}")
        except RuleError as e:
            errors.append(e)
            del rules[name]
            continue
        if got is None:
            del rules[name]
        else:
            rules[name] = got
    return rules, errors

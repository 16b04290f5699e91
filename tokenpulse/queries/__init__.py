"""Dashboard panels (and, later, alert rules) as .sql files, and their loader.

Each ``panels/NAME.sql`` starts with a header of ``--`` comment lines::

    -- title: Tokens per run
    -- description: What the panel shows and how it is computed.
    -- param: since UInt32 3600 Window, seconds back from now
    -- param: by Identifier feature choices=feature,tenant,model Dimension to group by

and then one ClickHouse query whose inputs are ClickHouse query parameters
(``{since:UInt32}``), bound server-side, never pasted into the text. The same
file runs on the embedded engine and on a server, and can be copied into any
ClickHouse client (with ``SET param_since = 3600`` and so on).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Mapping

from tokenpulse.errors import TokenpulseError


class QueryError(TokenpulseError):
    """A bad panel name or parameter value (a client error: HTTP 400)."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # UInt32 | String | Identifier
    default: str
    doc: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Query:
    name: str
    title: str
    description: str
    params: tuple[Param, ...]
    sql: str

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "description": self.description,
                "params": [{"name": p.name, "type": p.type, "default": p.default, "doc": p.doc,
                            **({"choices": list(p.choices)} if p.choices else {})} for p in self.params]}


_HEADER_RE = re.compile(r"^--\s*(title|description|param):\s*(.*)$")
_PARAM_RE = re.compile(r'^(\w+)\s+(UInt32|String|Identifier)\s+("(?:[^"]*)"|\S+)\s*(?:choices=(\S+)\s*)?(.*)$')
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_query(name: str, text: str) -> Query:
    title = description = ""
    params: list[Param] = []
    for line in text.splitlines():
        m = _HEADER_RE.match(line.strip())
        if not m:
            if line.strip() and not line.strip().startswith("--"):
                break
            continue
        key, value = m.groups()
        if key == "title":
            title = value.strip()
        elif key == "description":
            description = value.strip()
        else:
            pm = _PARAM_RE.match(value.strip())
            if not pm:
                raise QueryError(f"{name}.sql: bad param line {value!r}")
            pname, ptype, default, choices, doc = pm.groups()
            params.append(Param(pname, ptype, default.strip('"'), doc.strip(),
                                tuple(choices.split(",")) if choices else ()))
    if not title:
        raise QueryError(f"{name}.sql: no '-- title:' header")
    used = set(re.findall(r"\{(\w+):", text))
    declared = {p.name for p in params}
    if used != declared:
        raise QueryError(f"{name}.sql: parameters used {sorted(used)} != declared {sorted(declared)}")
    return Query(name, title, description, tuple(params), text)


def load_panels() -> dict[str, Query]:
    out = {}
    for entry in sorted(resources.files("tokenpulse.queries.panels").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            name = entry.name[:-4]
            out[name] = parse_query(name, entry.read_text(encoding="utf-8"))
    return out


def parse_duration(value: str) -> int:
    """'90', '15m', '1h', '7d' -> seconds."""
    m = _DURATION_RE.match(str(value))
    if not m:
        raise QueryError(f"not a duration: {value!r} (use e.g. 900, 15m, 1h, 7d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def bind(query: Query, values: Mapping[str, str]) -> dict:
    """Parameter values for ``query`` from user input (strings), checked; defaults filled."""
    unknown = set(values) - {p.name for p in query.params}
    if unknown:
        raise QueryError(f"panel {query.name} has no parameter {', '.join(sorted(unknown))} "
                         f"(it takes: {', '.join(p.name for p in query.params)})")
    out = {}
    for p in query.params:
        raw = values.get(p.name)
        raw = p.default if raw is None else str(raw)
        if p.type == "UInt32":
            value = parse_duration(raw) if p.name == "since" else _uint(p.name, raw)
        elif p.type == "Identifier":
            if raw not in p.choices:
                raise QueryError(f"{p.name} must be one of {', '.join(p.choices)}, not {raw!r}")
            value = raw
        else:
            value = raw
        out[p.name] = value
    return out


def _uint(name: str, raw: str) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise QueryError(f"{name} must be a whole number, not {raw!r}") from None
    if not 0 <= v < 2**32:
        raise QueryError(f"{name} must be between 0 and {2**32 - 1}")
    return v


def run(backend, query: Query, values: Mapping[str, str]) -> tuple[list[str], list[list]]:
    """Run a panel (read-only) and return (columns, rows)."""
    params = bind(query, values)
    raw = backend.query(query.sql, "JSONCompact", readonly=True, params=params)
    doc = json.loads(raw)
    return [m["name"] for m in doc["meta"]], doc["data"]

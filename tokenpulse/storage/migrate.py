"""Versioned, idempotent schema migrations.

Migrations are the numbered ``.sql`` files in ``migrations/``, applied in order
and recorded in ``{db}.schema_migrations``. Each statement is idempotent
(``IF NOT EXISTS`` and friends), so a migration interrupted before it was
recorded is simply run again. A migration file is never edited once released;
a change is a new file.

Retention is a setting, not a migration: ``apply_retention`` compares the TTL
on ``spans`` with the configured number of days and changes it only when they
differ, without rewriting existing parts (``materialize_ttl_after_modify=0``;
old parts expire at their next merge).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

from tokenpulse.errors import ConfigError
from tokenpulse.storage.backend import Backend
from tokenpulse.storage.cluster import rewrite

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self, db: str, ttl_days: int) -> list[str]:
        text = self.sql.replace("{db}", db).replace("{ttl_days}", str(int(ttl_days)))
        lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
        return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def load_migrations() -> list[Migration]:
    out = []
    for entry in resources.files("tokenpulse.storage.migrations").iterdir():
        m = _NAME_RE.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"duplicate migration versions: {versions}")
    return out


def check_identifier(name: str, what: str) -> str:
    if not _IDENT_RE.match(name):
        raise ConfigError(f"{what} {name!r} must be a plain identifier (letters, digits, _)")
    return name


def applied_versions(backend: Backend, db: str) -> set[int]:
    raw = backend.query(f"SELECT version FROM {db}.schema_migrations", "JSONCompact", readonly=False)
    return {int(row[0]) for row in json.loads(raw)["data"]}


def sql_aliases() -> set[str]:
    """Every name the migrations introduce with ``AS`` (table and column aliases, cast types).

    A database with one of these names breaks them: in ``FROM a.spans ... JOIN (...) AS a``
    ClickHouse resolves ``a.spans`` against the alias (seen with migration 0002's view)."""
    return {name for m in load_migrations() for name in re.findall(r"\bAS\s+([A-Za-z_][A-Za-z0-9_]*)", m.sql)}


def migrate(backend: Backend, db: str, ttl_days: int, cluster: str = "") -> list[int]:
    """Apply pending migrations; return the versions applied now. With ``cluster``, every
    statement is rewritten for that ClickHouse cluster (``storage/cluster.py``)."""
    check_identifier(db, "database name")
    if db in sql_aliases():
        raise ConfigError(f"database name {db!r} is also an alias in the schema's SQL (a migration names a "
                          f"table or column {db!r}), where ClickHouse would read {db}.spans as that alias; "
                          "choose another database name")
    if cluster:
        check_identifier(cluster, "cluster name")

    def run(stmt: str) -> None:
        for s in (rewrite(stmt, db, cluster) if cluster else [stmt]):
            backend.command(s)

    run(f"CREATE DATABASE IF NOT EXISTS {db}")
    run(f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations\n"
        "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version")
    done = applied_versions(backend, db)
    applied = []
    for m in load_migrations():
        if m.version in done:
            continue
        for stmt in m.statements(db, ttl_days):
            run(stmt)
        backend.command(f"INSERT INTO {db}.schema_migrations (version, name) VALUES ({m.version}, '{m.name}')")
        applied.append(m.version)
    apply_retention(backend, db, ttl_days, cluster)
    return applied


def apply_insert_fsync(backend: Backend, db: str, on: bool, cluster: str = "") -> list[str]:
    """Make every MergeTree table an insert writes (``spans`` and the views' targets) fsync each new
    part and its directory (ClickHouse's ``fsync_after_insert`` and ``fsync_part_directory``), or
    stop doing so. Returns the tables changed."""
    raw = backend.query(
        f"SELECT name, engine_full FROM system.tables WHERE database = '{db}' AND engine LIKE '%MergeTree'",
        "JSONCompact", readonly=False)
    want = "1" if on else "0"
    changed = []
    for name, engine_full in json.loads(raw)["data"]:
        if name == "schema_migrations":
            continue
        now = re.search(r"fsync_after_insert = (\d)", engine_full)
        if (now.group(1) if now else "0") == want:
            continue
        on_cluster = f" ON CLUSTER {cluster}" if cluster else ""  # every node's local tables
        backend.command(f"ALTER TABLE {db}.{name}{on_cluster} MODIFY SETTING "
                        f"fsync_after_insert = {want}, fsync_part_directory = {want}")
        changed.append(name)
    return changed


def current_ttl_days(backend: Backend, db: str, table: str = "spans") -> int | None:
    raw = backend.query(
        f"SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = '{table}'",
        "JSONCompact", readonly=False,
    )
    rows = json.loads(raw)["data"]
    if not rows:
        return None
    # The server prints the TTL back as ``toIntervalDay(N)``; accept both spellings.
    m = re.search(r"TTL .*?(?:toIntervalDay\((\d+)\)|INTERVAL (\d+) DAY)", rows[0][0])
    return int(m.group(1) or m.group(2)) if m else None


RETAINED_TABLES = ("spans", "trace_tags", "agent_spans", "runs", "sessions")


def apply_retention(backend: Backend, db: str, ttl_days: int, cluster: str = "") -> None:
    for table in RETAINED_TABLES:
        physical = f"{table}_local" if cluster else table  # where the TTL lives in cluster mode
        if current_ttl_days(backend, db, physical) in (ttl_days, None):
            continue
        stmt = (f"ALTER TABLE {db}.{table} MODIFY TTL toDateTime(start_time) + INTERVAL {int(ttl_days)} DAY "
                "SETTINGS materialize_ttl_after_modify = 0")
        for s in (rewrite(stmt, db, cluster) if cluster else [stmt]):
            backend.command(s)

"""Cluster mode: the same migrations, rewritten for a ClickHouse cluster (``clickhouse_cluster``).

Every statement gets ``ON CLUSTER``. Tables fall in two groups:

* **Sharded** (spans and everything derived from them): each becomes a local
  ``NAME_local`` table with the Replicated form of its engine (one replica set
  per shard, ZooKeeper/Keeper path ``/clickhouse/tables/{shard}/DB/NAME_local``)
  and a ``Distributed`` table ``NAME`` over it. Reads and writes use ``NAME``, so
  every query, panel and rule runs unchanged. Materialized views read
  ``spans_local`` and write the local rollups on the shard where the spans land.
* **Global** (small control tables: alert state and history, budgets,
  throttle decisions, schema versions): one Replicated table ``NAME`` with a
  single replica set across the cluster, so every node holds all of it and
  ``FINAL``/``TRUNCATE`` keep their single-node meaning.

**Sharding key: ``cityHash64(trace_id)``** for spans (and the per-trace
tables). All spans of a trace land on one shard, so the per-trace work is
exact and local: retry dedup in ``ReplacingMergeTree`` (same trace and span
id, same shard), trace-level attribution (``trace_tags`` joins), ``runs``, and
the tool panels' joins within a run (queries run with
``distributed_product_mode = 'local'``). Trace ids are random, so load spreads
evenly. The alternative, tenant, would also co-locate sessions and users but
put a whale tenant, which is exactly the one that spikes, on a single
shard. Per-minute, per-session and per-user rollups are partial on each
shard and merged at query time by their ``GROUP BY`` (sums and aggregate
states), so they stay correct.

The server macros ``{shard}`` and ``{replica}`` must be defined on every node,
as in any Replicated setup.
"""

from __future__ import annotations

import re

SHARDED = {
    "spans": "cityHash64(trace_id)",
    "trace_tags": "cityHash64(trace_id)",
    "agent_spans": "cityHash64(trace_id)",
    "runs": "cityHash64(trace_id)",
    "usage_minute": "rand()",  # written by views on each shard, not through the Distributed table
    "sessions": "rand()",
    "user_minute": "rand()",
    "usage_10s": "rand()",
    "recent_calls": "cityHash64(trace_id)",
    "session_inputs": "rand()",
}
# The scheduled rollups (0006, 0007) are global too: one job writes them and panels read them with
# FINAL. The job itself stays off in cluster mode for now (service.py), so on a cluster they stay
# empty. Before turning it on there, session_turns (a row per call with a session) should become
# sharded by session: global, every node would hold all of it.
GLOBAL = {"alert_state", "alerts", "alert_notifications", "budgets", "throttle_state", "throttle_audit",
          "schema_migrations", "role_minute", "role_feature_hour", "tool_call_growth", "run_summary", "rollup_state",
          "user_hour", "session_turns", "reprice_audit"}
VIEWS_ON_SHARDS = {"spans_attributed"}  # a view joining co-sharded tables: a local view + a Distributed one

# Settings for queries on a cluster (see the module docstring).
QUERY_SETTINGS = {"distributed_product_mode": "local"}
# Acknowledge an insert into a Distributed table only once the shards have it (durability as on one node).
INSERT_SETTINGS = {"distributed_foreground_insert": 1}

_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)\s*\n?(.*)$", re.S)
_ENGINE = re.compile(r"ENGINE\s*=\s*(\w*MergeTree)(?:\(([^)]*)\))?")
_CREATE_MV = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+)\.(\w+) TO (\w+)\.(\w+) AS\s*(.*)$", re.S)
_CREATE_VIEW = re.compile(r"^CREATE VIEW IF NOT EXISTS (\w+)\.(\w+) AS\s*(.*)$", re.S)


class ClusterDDLError(ValueError):
    pass


def _local_refs(sql: str, db: str) -> str:
    """``db.spans`` -> ``db.spans_local`` for every sharded table named in ``sql``."""
    for name in SHARDED:
        sql = re.sub(rf"\b{re.escape(db)}\.{name}\b(?!_)", f"{db}.{name}_local", sql)
    return sql


def _replicated(engine_match: re.Match, path: str) -> str:
    kind, args = engine_match.group(1), engine_match.group(2)
    extra = f", {args}" if args and args.strip() else ""
    return f"ENGINE = Replicated{kind}('{path}', '{{replica}}'{extra})"


def rewrite(statement: str, db: str, cluster: str) -> list[str]:
    """One single-node statement -> its cluster statements."""
    s = statement.strip()
    on = f"ON CLUSTER {cluster}"
    if s.startswith("CREATE DATABASE IF NOT EXISTS"):
        return [f"{s} {on}"]
    m = _CREATE_TABLE.match(s)
    if m:
        tdb, name, rest = m.groups()
        engine = _ENGINE.search(rest)
        if engine is None:
            raise ClusterDDLError(f"{name}: no MergeTree engine to replicate")
        if name in SHARDED:
            local = f"{name}_local"
            body = rest[:engine.start()] + _replicated(engine, f"/clickhouse/tables/{{shard}}/{tdb}/{local}") \
                + rest[engine.end():]
            return [f"CREATE TABLE IF NOT EXISTS {tdb}.{local} {on}\n{body}",
                    f"CREATE TABLE IF NOT EXISTS {tdb}.{name} {on} AS {tdb}.{local} "
                    f"ENGINE = Distributed({cluster}, {tdb}, {local}, {SHARDED[name]})"]
        if name in GLOBAL:
            body = rest[:engine.start()] + _replicated(engine, f"/clickhouse/tables/all/{tdb}/{name}") \
                + rest[engine.end():]
            return [f"CREATE TABLE IF NOT EXISTS {tdb}.{name} {on}\n{body}"]
        raise ClusterDDLError(f"table {name} is neither sharded nor global: add it to storage/cluster.py")
    m = _CREATE_MV.match(s)
    if m:
        vdb, view, tdb, target, select = m.groups()
        if target not in SHARDED:
            raise ClusterDDLError(f"materialized view {view} writes {target}, which is not sharded")
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {vdb}.{view} {on} TO {tdb}.{target}_local AS\n"
                f"{_local_refs(select, db)}"]
    m = _CREATE_VIEW.match(s)
    if m:
        vdb, view, select = m.groups()
        if view not in VIEWS_ON_SHARDS:
            raise ClusterDDLError(f"view {view}: say whether it runs per shard in storage/cluster.py")
        return [f"CREATE VIEW IF NOT EXISTS {vdb}.{view}_local {on} AS\n{_local_refs(select, db)}",
                f"CREATE TABLE IF NOT EXISTS {vdb}.{view} {on} AS {vdb}.{view}_local "
                f"ENGINE = Distributed({cluster}, {vdb}, {view}_local)"]
    m = re.match(r"^DROP VIEW IF EXISTS (\w+)\.(\w+)$", s)
    if m:
        vdb, view = m.groups()
        if view not in VIEWS_ON_SHARDS:
            raise ClusterDDLError(f"view {view}: say whether it runs per shard in storage/cluster.py")
        return [f"DROP TABLE IF EXISTS {vdb}.{view} {on}", f"DROP VIEW IF EXISTS {vdb}.{view}_local {on}"]
    if s.startswith("INSERT INTO"):
        return [s]
    m = re.match(r"^ALTER TABLE (\w+)\.(\w+)\s+(.*)$", s, re.S)
    if m:
        tdb, name, rest = m.groups()
        if name in SHARDED:
            out = [f"ALTER TABLE {tdb}.{name}_local {on} {rest}"]
            if "MODIFY COLUMN" in rest or "ADD COLUMN" in rest:  # the Distributed table repeats the local columns
                out.append(f"ALTER TABLE {tdb}.{name} {on} {rest}")
            return out
        return [f"ALTER TABLE {tdb}.{name} {on} {rest}"]
    raise ClusterDDLError(f"no cluster form for: {s[:80]}")

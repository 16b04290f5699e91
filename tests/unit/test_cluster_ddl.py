"""Cluster mode DDL: every migration statement has a cluster form, and the forms are right."""

from __future__ import annotations

import pytest

from tokenpulse.config import load_settings
from tokenpulse.errors import ConfigError
from tokenpulse.storage.cluster import GLOBAL, SHARDED, ClusterDDLError, rewrite
from tokenpulse.storage.migrate import load_migrations


def all_cluster_statements(db="tp", cluster="main"):
    out = []
    for m in load_migrations():
        for stmt in m.statements(db, 30):
            out += rewrite(stmt, db, cluster)
    return out


def test_every_statement_has_a_cluster_form_and_runs_on_cluster():
    stmts = all_cluster_statements()
    assert stmts
    for s in stmts:
        if not s.startswith("INSERT"):
            assert " ON CLUSTER main" in s, s[:120]


def test_spans_become_replicated_local_plus_distributed_by_trace_id():
    stmts = [s for s in all_cluster_statements() if "tp.spans_local" in s.split("\n", 1)[0] or
             s.startswith("CREATE TABLE IF NOT EXISTS tp.spans ")]
    local, dist = stmts[0], stmts[1]
    assert local.startswith("CREATE TABLE IF NOT EXISTS tp.spans_local ON CLUSTER main\n(")
    assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tp/spans_local', '{replica}', " \
           "ingested_at)" in local
    assert "ORDER BY (tenant, toStartOfHour(start_time), service, trace_id, span_id)" in local  # rest kept
    assert dist == ("CREATE TABLE IF NOT EXISTS tp.spans ON CLUSTER main AS tp.spans_local "
                    "ENGINE = Distributed(main, tp, spans_local, cityHash64(trace_id))")


def test_engines_without_arguments_and_global_tables():
    stmts = all_cluster_statements()
    usage = next(s for s in stmts if s.startswith("CREATE TABLE IF NOT EXISTS tp.usage_minute_local"))
    assert "ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/tp/usage_minute_local', '{replica}')" in usage
    state = next(s for s in stmts if s.startswith("CREATE TABLE IF NOT EXISTS tp.alert_state "))
    assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/tp/alert_state', '{replica}', " \
           "updated_at)" in state
    assert not any(s.startswith(f"CREATE TABLE IF NOT EXISTS tp.{name}_local") for s in stmts for name in GLOBAL)


def test_materialized_views_read_and_write_local_tables():
    stmts = all_cluster_statements()
    mv = next(s for s in stmts if s.startswith("CREATE MATERIALIZED VIEW IF NOT EXISTS tp.usage_minute_mv"))
    assert mv.startswith("CREATE MATERIALIZED VIEW IF NOT EXISTS tp.usage_minute_mv ON CLUSTER main "
                         "TO tp.usage_minute_local AS")
    assert "FROM tp.spans_local AS s" in mv and "FROM tp.spans AS" not in mv
    mvs = [s for s in stmts if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(mvs) == 9 and all(" TO tp." in s and "_local AS" in s for s in mvs)


def test_the_joining_view_runs_per_shard():
    stmts = all_cluster_statements()
    view = next(s for s in stmts if s.startswith("CREATE VIEW IF NOT EXISTS tp.spans_attributed_local"))
    assert "FROM tp.spans_local AS s" in view and "FROM tp.trace_tags_local" in view and \
        "FROM tp.agent_spans_local" in view
    assert "CREATE TABLE IF NOT EXISTS tp.spans_attributed ON CLUSTER main AS tp.spans_attributed_local " \
           "ENGINE = Distributed(main, tp, spans_attributed_local)" in stmts


def test_retention_alters_the_local_tables():
    (s,) = rewrite("ALTER TABLE tp.spans MODIFY TTL toDateTime(start_time) + INTERVAL 7 DAY", "tp", "main")
    assert s == "ALTER TABLE tp.spans_local ON CLUSTER main MODIFY TTL toDateTime(start_time) + INTERVAL 7 DAY"


def test_every_table_is_classified():
    names = set()
    for m in load_migrations():
        for stmt in m.statements("tp", 30):
            if stmt.startswith("CREATE TABLE"):
                names.add(stmt.split()[5].split(".")[1])
    assert names <= set(SHARDED) | GLOBAL
    with pytest.raises(ClusterDDLError, match="neither sharded nor global"):
        rewrite("CREATE TABLE IF NOT EXISTS tp.mystery (x UInt8) ENGINE = MergeTree ORDER BY x", "tp", "main")


def test_cluster_needs_a_server():
    with pytest.raises(ConfigError, match="clickhouse_cluster needs a ClickHouse server"):
        load_settings({"clickhouse_cluster": "main"}, env={})
    assert load_settings({"clickhouse_cluster": "main", "clickhouse_url": "http://ch:8123"}, env={}).clickhouse_cluster


def test_a_column_type_change_reaches_the_local_and_the_distributed_table():
    """Migration 0009 makes usage_minute's counts signed: the Distributed table repeats the local
    table's column types, so both are altered (a sum read through it would otherwise be cast back)."""
    stmts = [s for s in all_cluster_statements() if s.startswith("ALTER TABLE tp.usage_minute")]
    assert len(stmts) == 2
    assert stmts[0].startswith("ALTER TABLE tp.usage_minute_local ON CLUSTER main")
    assert stmts[1].startswith("ALTER TABLE tp.usage_minute ON CLUSTER main")
    assert all("MODIFY COLUMN input_tokens Int64" in s for s in stmts)
    spans = [s for s in all_cluster_statements() if s.startswith("ALTER TABLE tp.spans")]
    settings = [s for s in spans if "ADD COLUMN" not in s]
    assert settings and all(s.startswith("ALTER TABLE tp.spans_local ") for s in settings)  # settings: local only
    added = [s for s in spans if "ADD COLUMN" in s]  # migration 0011: new columns on both tables
    assert [s.split(" ON ")[0] for s in added] == ["ALTER TABLE tp.spans_local", "ALTER TABLE tp.spans"]

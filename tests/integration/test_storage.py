"""Migrations and the spans table, on the real engine (and a server when configured)."""

from __future__ import annotations

import json

import pytest

from tests.otlp import request, span
from tokenpulse.errors import StorageError
from tokenpulse.otlp.decode import decode_protobuf
from tokenpulse.storage.migrate import apply_insert_fsync, applied_versions, current_ttl_days, load_migrations, migrate
from tokenpulse.storage.schema import DEFAULT_COLUMNS, SPAN_COLUMNS, batch_to_arrow


def test_migrations_are_versioned_and_idempotent(backend, database):
    versions = [m.version for m in load_migrations()]
    assert migrate(backend, database, 30) == versions
    assert migrate(backend, database, 30) == []
    assert applied_versions(backend, database) == set(versions)


def test_table_columns_match_the_insert_schema(backend, database):
    migrate(backend, database, 30)
    rows = json.loads(backend.query(f"DESCRIBE TABLE {database}.spans", "JSONCompact"))["data"]
    described = {r[0]: r[1] for r in rows}
    expected = {name: ch_type for name, _, _, ch_type in SPAN_COLUMNS} | DEFAULT_COLUMNS
    assert described == expected


def test_per_span_tables_keep_parts_compact_up_to_100_mb(backend, database):
    # Migration 0008: a 10,000-span insert (~10 MB) is written as one Compact part, not a Wide one.
    migrate(backend, database, 30)
    for table in ("spans", "trace_tags", "agent_spans"):
        engine = backend.query(f"SELECT engine_full FROM system.tables WHERE database = '{database}' "
                               f"AND name = '{table}'", "TSV").decode()
        assert "min_bytes_for_wide_part = 104857600" in engine, (table, engine)
    many = [span(attrs={"gen_ai.request.model": "gpt-4o", "payload": "x" * 1000}) for _ in range(12_000)]
    backend.insert_arrow(f"{database}.spans", batch_to_arrow(decode_protobuf(request(many).SerializeToString()).batch))
    parts = backend.query(f"SELECT part_type, bytes_on_disk > 0 FROM system.parts WHERE database = '{database}' "
                          "AND table = 'spans' AND active", "TSV").decode().split()
    assert parts == ["Compact", "1"]


def test_insert_fsync_makes_every_table_an_insert_writes_fsync_its_parts(backend, database):
    """insert_fsync on: an acknowledgement survives power loss (docs/durability.md)."""
    migrate(backend, database, 30)

    def fsynced() -> dict[str, bool]:
        rows = json.loads(backend.query(f"SELECT name, engine_full FROM system.tables WHERE database = '{database}' "
                                        "AND engine LIKE '%MergeTree'", "JSONCompact"))["data"]
        return {name: "fsync_after_insert = 1" in e and "fsync_part_directory = 1" in e for name, e in rows}

    assert not any(fsynced().values())  # off by default
    changed = apply_insert_fsync(backend, database, True)
    assert {"spans", "usage_minute", "trace_tags"} <= set(changed)
    now = fsynced()
    assert all(v for name, v in now.items() if name != "schema_migrations"), now
    assert apply_insert_fsync(backend, database, True) == []  # idempotent
    backend.insert_arrow(f"{database}.spans", batch_to_arrow(decode_protobuf(request([span()]).SerializeToString()).batch))
    assert backend.query(f"SELECT count() FROM {database}.spans", "TSV").strip() == b"1"
    apply_insert_fsync(backend, database, False)
    assert not any(fsynced().values())


def test_retention_follows_settings(backend, database):
    migrate(backend, database, 30)
    assert current_ttl_days(backend, database) == 30
    migrate(backend, database, 7)
    assert current_ttl_days(backend, database) == 7


def test_insert_types_and_defaults(backend, database):
    migrate(backend, database, 30)
    b = decode_protobuf(request([span(duration_ns=2_500_000, kind=2, status=2)]).SerializeToString()).batch
    b.input_tokens[0], b.cost_usd[0], b.tenant[0] = 1200, 0.0125, "acme"
    backend.insert_arrow(f"{database}.spans", batch_to_arrow(b))
    row = json.loads(backend.query(
        f"SELECT kind, status_code, duration_ms, input_tokens, cost_usd, tenant, toTypeName(input_tokens), "
        f"ingested_at > now() - 60 FROM {database}.spans", "JSONCompact"))["data"][0]
    assert row == ["server", "error", 2.5, 1200, 0.0125, "acme", "UInt64", 1]


def test_read_only_queries_cannot_write(backend, database):
    migrate(backend, database, 30)
    with pytest.raises(StorageError, match="readonly"):
        backend.query(f"DROP TABLE {database}.spans", "JSONCompact", readonly=True)
    with pytest.raises(StorageError, match="readonly"):
        backend.query(f"INSERT INTO {database}.spans (trace_id) VALUES ('x')", "JSONCompact", readonly=True)


def test_read_only_queries_have_resource_limits_they_cannot_lift(backend, database):
    with pytest.raises(StorageError, match="(?i)limit for result rows|TOO_MANY_ROWS"):
        backend.query("SELECT number FROM numbers(2000000)", "JSONCompact", readonly=True)
    with pytest.raises(StorageError, match="readonly"):
        backend.query("SELECT number FROM numbers(2000000) SETTINGS max_result_rows = 0", "JSONCompact",
                      readonly=True)
    assert len(json.loads(backend.query("SELECT number FROM numbers(2000000)", "JSONCompact",
                                        readonly=False))["data"]) == 2000000  # the service's own queries


@pytest.mark.parametrize("name", ["a", "s", "t"])
def test_a_database_named_like_an_alias_in_the_schema_is_refused_clearly(backend, name):
    # Migration 0002's view joins `{db}.spans AS s` with subqueries `AS t` and `AS a`: with a
    # database of such a name ClickHouse read `a.spans` as the alias and the migration failed
    # with "Compound identifier 'a.spans' cannot be resolved".
    from tokenpulse.errors import ConfigError

    with pytest.raises(ConfigError, match="alias in the schema's SQL"):
        migrate(backend, name, 30)
    assert name not in backend.query("SHOW DATABASES", "TSV").decode().split()

"""The ``spans`` table as the writer's sink, and the bounded lookups the writer makes in it.

Lookups by trace id go in chunks of ``LOOKUP_CHUNK`` ids: one ``IN (...)`` list of every trace
of a 50k-span batch would exceed ClickHouse's default ``max_query_size`` (256 KiB, ~7.5k ids)
and fail the same way on every retry.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from tokenpulse.errors import RetryableStorageError
from tokenpulse.record import SpanBatch
from tokenpulse.storage.backend import Backend
from tokenpulse.storage.schema import batch_to_arrow

LOOKUP_CHUNK = 2_000  # trace ids per query: ~70 KB of SQL


class Sink(Protocol):
    def encode(self, batch: SpanBatch) -> pa.Table:
        """The batch as the sink's insert format (runs on the submitting thread)."""

    def write(self, table: pa.Table) -> None:
        """Durably store encoded spans. Raises RetryableStorageError or DataError."""


def _hex_ids(ids) -> list[str]:
    # trace ids are 32 lowercase hex characters (the decoder checked them): safe in the SQL text
    return [t for t in ids if len(t) == 32 and t.isalnum()]


def chunks(ids: list[str], size: int = LOOKUP_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


class SpanTable:
    """The ``spans`` table as a sink."""

    def __init__(self, backend: Backend, database: str):
        self.backend = backend
        self.database = database
        self.table = f"{database}.spans"
        # Failpoint for the fault tests (tests/integration/test_durability.py): while this file
        # exists, inserts and pings fail as if ClickHouse were unreachable. Unset in normal use.
        self._down_flag = os.environ.get("TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE", "")

    def encode(self, batch: SpanBatch) -> pa.Table:
        return batch_to_arrow(batch)

    def _check_up(self) -> None:
        if self._down_flag and os.path.exists(self._down_flag):
            raise RetryableStorageError("failpoint: storage down (TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE)", 210)

    def write(self, table: pa.Table) -> None:
        self._check_up()
        self.backend.insert_arrow(self.table, table)

    def ping(self) -> None:
        """Raise StorageError unless storage answers a trivial query."""
        self._check_up()
        self.backend.query("SELECT 1", "TSV", readonly=True)

    def existing(self, table: pa.Table) -> dict[int, set[str]]:
        """The spans of ``table`` already in storage: (trace id + span id as an int) -> their tenants."""
        tids = _hex_ids(pc.unique(table.column("trace_id")).to_pylist())
        if not tids:
            return {}
        lo, hi = pc.min_max(table.column("start_time").cast(pa.int64())).values()
        found: dict[int, set[str]] = {}
        for part in chunks(tids):
            raw = self.backend.query(
                f"SELECT concat(trace_id, span_id), tenant FROM {self.table} WHERE trace_id IN ("
                + ",".join(f"'{t}'" for t in part) + ") "
                f"AND start_time BETWEEN fromUnixTimestamp64Nano({lo.as_py()}) AND fromUnixTimestamp64Nano({hi.as_py()})",
                "JSONCompact", readonly=True)
            for key, tenant in json.loads(raw)["data"]:
                found.setdefault(int(key, 16), set()).add(tenant)
        return found

    def trace_tags(self, trace_ids: list[str], tenant: str = "") -> dict[str, dict[str, str]]:
        """Trace-level tags stored for these traces (``trace_tags``, the root's values first), for a
        receiver that did not see the tagged span; only the tenant's own when ``tenant`` is given.
        User ids are left out: stored ones are pseudonyms."""
        ids = _hex_ids(trace_ids)
        dims = ("tenant", "feature", "session_id", "route", "environment")
        out: dict[str, dict[str, str]] = {}
        for part in chunks(ids):
            raw = self.backend.query(
                "SELECT trace_id, " + ", ".join(f"argMax({d}, ({d} != '', is_root))" for d in dims)
                + f" FROM {self.database}.trace_tags WHERE trace_id IN (" + ",".join(f"'{t}'" for t in part) + ")"
                + (" AND tenant = {tenant:String}" if tenant else "") + " GROUP BY trace_id",
                "JSONCompact", readonly=True, params={"tenant": tenant} if tenant else None)
            for row in json.loads(raw)["data"]:
                tags = {d: v for d, v in zip(dims, row[1:]) if v}
                if tags:
                    out[row[0]] = tags
        return out

"""The dedup memory: keys of recently stored spans, so an exporter's retry is not stored twice.

A key is the span's (trace id, span id) *within its sender's tenant*: the tenant an API key is
bound to (receiver/auth.py), or one shared namespace for senders without a bound tenant. Trace
and span ids are chosen by clients and cross service boundaries in ``traceparent``, so a tenant
that learns another's ids must not be able to make that tenant's spans look like repeats: keyed
by id alone, its copy was stored first and the owner's dropped. Exact integers: the 192-bit
ids with the namespace's number above them; a hash collision would silently drop a real span.
"""

from __future__ import annotations

import time
from typing import Callable

import pyarrow as pa

from tokenpulse.record import SpanBatch

ID_BITS = 192  # 128-bit trace id + 64-bit span id
ID_MASK = (1 << ID_BITS) - 1


class Namespaces:
    """Tenant name <-> a small number, for keys. Bound tenants come from the API-key file: few."""

    def __init__(self, tenants: tuple[str, ...] = ()):
        self._ids: dict[str, int] = {"": 0}
        self._names: list[str] = [""]
        for t in tenants:
            self.offset(t)

    def known(self, tenant: str) -> int | None:
        n = self._ids.get(tenant)
        return None if n is None else n << ID_BITS

    def offset(self, tenant: str) -> int:
        n = self._ids.get(tenant)
        if n is None:
            n = self._ids[tenant] = len(self._names)
            self._names.append(tenant)
        return n << ID_BITS

    def tenant_of(self, key: int) -> str:
        return self._names[key >> ID_BITS]


class DedupCache:
    """Keys of recently stored spans, for dropping exporter retries.

    Two generations: lookups check both, inserts go to the current one, and the
    current becomes the previous every ``window_s / 2`` seconds or when it holds
    ``max_keys / 2`` keys. So a key is remembered for at least ``window_s / 2``
    and memory stays under ``max_keys`` keys (~70 bytes each).
    """

    def __init__(self, window_s: float, max_keys: int, clock: Callable[[], float] = time.monotonic,
                 tenants: tuple[str, ...] = ()):
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._current: set[int] = set()
        self._previous: set[int] = set()
        self._rotated_at = clock()
        self.namespaces = Namespaces(tenants)  # the API keys' bound tenants

    def key(self, trace_id: str, span_id: str, tenant: str = "") -> int:
        return self.namespaces.offset(tenant) | int(trace_id + span_id, 16)

    def keys_of(self, batch: SpanBatch, tenant: str = "") -> list[int]:
        off = self.namespaces.offset(tenant)
        if off == 0:
            return [int(t + s, 16) for t, s in zip(batch.trace_id, batch.span_id)]
        return [off | int(t + s, 16) for t, s in zip(batch.trace_id, batch.span_id)]

    @staticmethod
    def ids_of_table(table: pa.Table) -> list[int]:
        """(trace id, span id) as ints, without a namespace."""
        return [int(t + s, 16) for t, s in zip(table.column("trace_id").to_pylist(),
                                               table.column("span_id").to_pylist())]

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _maybe_rotate(self) -> None:
        if self._clock() - self._rotated_at >= self.window_s / 2 or len(self._current) >= self.max_keys // 2:
            self._previous = self._current
            self._current = set()
            self._rotated_at = self._clock()

    def filter(self, keys: list[int]) -> tuple[list[int] | None, list[int]]:
        """Indexes to keep (None: all) and the keys of the kept spans."""
        if self.max_keys <= 0:
            return None, []
        self._maybe_rotate()
        cur, prev = self._current, self._previous
        distinct = set(keys)
        if len(distinct) == len(keys) and distinct.isdisjoint(cur) and distinct.isdisjoint(prev):
            return None, keys  # the usual case, checked in C
        seen_here: set[int] = set()
        keep: list[int] | None = None
        for i, k in enumerate(keys):
            if k in cur or k in prev or k in seen_here:
                if keep is None:
                    keep = list(range(i))
                continue
            seen_here.add(k)
            if keep is not None:
                keep.append(i)
        if keep is None:
            return None, keys
        return keep, [keys[i] for i in keep]

    def add(self, keys: list[int]) -> None:
        if self.max_keys > 0:
            self._current.update(keys)

    def add_rows(self, rows) -> None:
        """Remember stored spans given as (tenant, trace id, span id): a retry is then a repeat
        whether its sender was bound to that tenant or to none."""
        if self.max_keys <= 0:
            return
        keys = []
        for tenant, trace_id, span_id in rows:
            ident = int(trace_id + span_id, 16)
            keys.append(ident)
            off = self.namespaces.known(tenant)
            if off:
                keys.append(off | ident)
        self._current.update(keys)

    def add_stored(self, table: pa.Table) -> None:
        self.add_rows(zip(table.column("tenant").to_pylist(), table.column("trace_id").to_pylist(),
                          table.column("span_id").to_pylist()))

    def stored_elsewhere(self, keys: list[int], found: dict[int, set[str]]) -> list[bool]:
        """For each key, whether storage holds that span for the key's tenant (``found``:
        id -> tenants, from ``SpanTable.existing``). The shared namespace matches any tenant."""
        out = []
        for k in keys:
            tenants = found.get(k & ID_MASK)
            if not tenants:
                out.append(False)
                continue
            ns = self.namespaces.tenant_of(k)
            out.append(ns == "" or ns in tenants)
        return out

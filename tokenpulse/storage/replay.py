"""The spool's replay: spooled records inserted in order, each once, none ever silently dropped.

One record at a time, oldest first (``Spool.peek``): its spans already in storage are dropped
(a crash between an insert and the cursor update, or an insert that failed after writing rows),
the rest inserted, then the record is committed. Outcomes are typed (``Idle``, ``Replayed``,
``Retry``, ``DeadLettered``).

Retries: storage that is down is retried for as long as it takes, with exponential back-off
and jitter (the spool exists to ride out outages). A record that keeps failing while storage
answers a ping is the record's own problem: after ``max_attempts`` it is written to a
dead-letter file ``DIR/refused-*.arrow`` (fsynced before the commit), counted in
``tokenpulse_spans_dead_lettered_total{reason}`` and logged, and the replay goes on; so is a
record storage refuses as invalid (``DataError``). Load a dead-letter file with
``INSERT INTO spans FROM INFILE`` (format Arrow) once the cause is fixed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

from tokenpulse.errors import DataError, RetryableStorageError, StorageError
from tokenpulse.metrics import Metrics
from tokenpulse.retry import Backoff
from tokenpulse.storage.dedup import DedupCache
from tokenpulse.storage.sink import Sink
from tokenpulse.storage.spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Idle:
    pass


@dataclass(frozen=True)
class Replayed:
    spans: int
    duplicates: int


@dataclass(frozen=True)
class Retry:
    delay_s: float
    error: str


@dataclass(frozen=True)
class DeadLettered:
    spans: int
    path: str
    reason: str  # "refused" | "retries_exhausted"


class Replayer:
    def __init__(self, spool: Spool, sink: Sink, dedup: DedupCache, metrics: Metrics, *,
                 on_degraded: Callable[[Exception], None], on_empty: Callable[[], None],
                 max_attempts: int = 10, backoff: Backoff | None = None):
        self.spool = spool
        self.sink = sink
        self.dedup = dedup
        self.m = metrics
        self.on_degraded = on_degraded
        self.on_empty = on_empty  # called when the spool is found empty (the writer goes direct again)
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff(initial_s=0.5, max_s=10.0)
        self.wake = threading.Event()
        self._attempts = 0  # failed attempts at the current record while storage answered

    def run(self, stop: threading.Event) -> None:
        """The worker loop (supervised: an unexpected error restarts it, see supervise.py)."""
        while not stop.is_set():
            got = self.step()
            if isinstance(got, Idle):
                self.on_empty()
                self.publish_metrics()
                self.wake.wait(1.0)
                self.wake.clear()
            elif isinstance(got, Retry):
                self.wake.wait(got.delay_s)
                self.wake.clear()
            else:
                self.publish_metrics()

    def step(self) -> Idle | Replayed | Retry | DeadLettered:
        got = self.spool.peek()
        if got is None:
            return Idle()
        position, table = got
        try:
            table, duplicates = self._unstored(table)
            if table.num_rows:
                self.sink.write(table)
        except RetryableStorageError as e:
            self.on_degraded(e)
            if self._record_is_the_problem():
                return self._dead_letter(position, table, "retries_exhausted", e)
            delay = self.backoff.next_delay()
            return Retry(delay if delay is not None else self.backoff.max_s, str(e))
        except DataError as e:  # acknowledged spans ClickHouse refuses: keep them, loudly
            self.m.write_errors.labels("data").inc()
            return self._dead_letter(position, table, "refused", e)
        self.m.spans_stored.inc(table.num_rows)
        self.m.spans_replayed.inc(table.num_rows)
        if duplicates:
            self.m.spans_duplicate.inc(duplicates)
        self.dedup.add_stored(table)
        self.spool.commit(position)
        self._attempts = 0
        self.backoff.reset()
        return Replayed(table.num_rows, duplicates)

    def _unstored(self, table: pa.Table) -> tuple[pa.Table, int]:
        """The record's rows storage does not hold yet (same tenant, trace and span id)."""
        existing = getattr(self.sink, "existing", None)
        if existing is None:
            return table, 0
        try:
            found = existing(table)
        except StorageError as e:  # cannot tell yet: retry later, never dead-letter for this
            raise RetryableStorageError(f"checking spooled spans against storage: {e}") from None
        if not found:
            return table, 0
        ids = DedupCache.ids_of_table(table)
        tenants = table.column("tenant").to_pylist()
        rows = [i for i, (k, t) in enumerate(zip(ids, tenants)) if t not in found.get(k, ())]
        return table.take(pa.array(rows, pa.int64())), table.num_rows - len(rows)

    def _record_is_the_problem(self) -> bool:
        """Count a failed attempt if storage itself answers; True once the budget is spent."""
        ping = getattr(self.sink, "ping", None)
        if ping is None:
            return False
        try:
            ping()
        except Exception:  # storage is down: that is what the spool waits out, however long
            return False
        self._attempts += 1
        return self._attempts >= self.max_attempts

    def _dead_letter(self, position, table: pa.Table, reason: str, error: Exception) -> DeadLettered:
        path = os.path.join(self.spool.dir, f"refused-{time.time_ns()}.arrow")
        with pa.OSFile(path, "wb") as fh, pa.ipc.new_file(fh, table.schema) as w:
            w.write_table(table)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # durable before the record leaves the spool
        finally:
            os.close(fd)
        self.m.spans_dead_lettered.labels(reason).inc(table.num_rows)
        log.error("spool replay: %d acknowledged spans set aside in %s (%s: %s); the replay goes on",
                  table.num_rows, path, reason, error)
        self.spool.commit(position)
        self._attempts = 0
        self.backoff.reset()
        return DeadLettered(table.num_rows, path, reason)

    def publish_metrics(self) -> None:
        self.m.spool_records.set(self.spool.records)
        self.m.spool_bytes.set(self.spool.bytes)

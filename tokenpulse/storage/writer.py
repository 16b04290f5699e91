"""The batching writer: the ClickHouse sink, with end-to-end acknowledgement.

The receivers ``submit`` a decoded, enriched batch and get a Future that
resolves only once the batch is in ClickHouse (Vector's end-to-end ack; STYLE
habit 6). Requests are merged into large inserts (chDB's fixed 10-60 ms per
insert makes insert size dominate, docs/sources.md#platform), flushed when the pending
spans reach ``max_rows`` or ``max_bytes``, when ``eager_rows`` are queued or no other request is on its way
(receivers announce requests they are decoding with ``arriving()``: waiting
for companions that are not coming only adds latency, and exporters wait for
our answer before sending more), or when the oldest waited ``max_age_s``.
While an insert runs, new requests pile up, so under load inserts grow large.

Why the defaults (eager 20,000 spans, 0.5 s): an insert's cost is mostly fixed. On this machine
kind an insert into ``spans`` with its six views costs ~60-70 ms of CPU even for 10 rows (parts
written for seven tables, later merged), so ClickHouse spent ~48-55 us of CPU per span in
5,000-row inserts, ~35 in 10,000-row, ~25 in 20,000-row and ~22 in 50,000-row ones (measured
with ``bench/storage.py``'s inserts and merges). With 5,000 eager spans every 5,000-span request
was inserted alone. A request that no other is following is still written at once: a lone
exporter waits for its answer before it sends more, so holding its batch only slows it down.
Under load the receiving loop decodes one request after another, and between one's submit and the
next one's start nobody is announced. The receivers yield once before announcing and once before
un-announcing, so requests already received are seen, and the writer lingers ``linger_s`` (5 ms)
for the next one after having waited. Measured (bench/ingest.py, 8 clients): 512-span requests
went from ~2,000 to ~3,800 spans per insert, near the 4,096 the clients can have in flight.

Bounded: ``submit`` answers ``Busy`` instead of queueing when the queue holds
``max_queue_spans`` or storage is backing off after a failure; the receiver
turns ``Busy`` into UNAVAILABLE + RetryInfo / 429 or 503 + Retry-After.

Failures: with a spool (``storage/spool.py``), a retryable storage error sends
the batch to disk instead: once it is fsync'd there the requests are
acknowledged, later batches follow it into the spool (order kept), and a replay
thread inserts the spool's records in order until it is empty. Without a spool,
or when the spool is full, a retryable error fails every request in the insert
(their clients retry) and starts a backoff. A DataError re-inserts request by
request so only the offending request is refused.

Exactly once in sums: exporters retry, so the same span can arrive twice.
``DedupCache`` remembers the (trace_id, span_id) of spans stored in the last
``dedup_window_s`` and drops repeats before the insert; the table's
ReplacingMergeTree key (which ends in trace_id, span_id) is the backstop for
repeats older than the window or split across receivers.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Protocol

import pyarrow as pa
from tokenpulse.errors import DataError, InternalWriteError, RetryableStorageError, StorageError
from tokenpulse.metrics import Metrics
from tokenpulse.record import SpanBatch
from tokenpulse.storage.backend import Backend
from tokenpulse.storage.schema import batch_to_arrow
from tokenpulse.telemetry import Telemetry

log = logging.getLogger(__name__)


class Sink(Protocol):
    def encode(self, batch: SpanBatch) -> pa.Table:
        """The batch as the sink's insert format (runs on the submitting thread)."""

    def write(self, table: pa.Table) -> None:
        """Durably store encoded spans. Raises RetryableStorageError or DataError."""


class SpanTable:
    """The ``spans`` table as a sink."""

    def __init__(self, backend: Backend, database: str):
        import os

        self.backend = backend
        self.table = f"{database}.spans"
        # Failpoint for the fault tests (tests/integration/test_durability.py): while this file
        # exists, inserts fail as if ClickHouse were unreachable. Unset in normal use.
        self._down_flag = os.environ.get("TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE", "")

    def encode(self, batch: SpanBatch) -> pa.Table:
        return batch_to_arrow(batch)

    def existing(self, table: pa.Table) -> set[int]:
        """Dedup keys of the table's spans already in storage (for several receivers without trace
        routing, where a retry can land on a receiver whose memory has not seen the first try)."""
        import pyarrow.compute as pc

        tids = pc.unique(table.column("trace_id")).to_pylist()
        if not tids:
            return set()
        lo, hi = pc.min_max(table.column("start_time").cast(pa.int64())).values()
        # trace ids are 32 lowercase hex characters (the decoder checked them): safe in the SQL text
        raw = self.backend.query(
            f"SELECT concat(trace_id, span_id) FROM {self.table} WHERE trace_id IN ("
            + ",".join(f"'{t}'" for t in tids if len(t) == 32 and t.isalnum()) + ") "
            f"AND start_time BETWEEN fromUnixTimestamp64Nano({lo.as_py()}) AND fromUnixTimestamp64Nano({hi.as_py()})",
            "TSV", readonly=True)
        return {int(line, 16) for line in raw.decode().split()}

    def trace_tags(self, trace_ids: list[str]) -> dict[str, dict[str, str]]:
        """Trace-level tags stored for these traces (``trace_tags``, the root's values first), for a
        receiver that did not see the tagged span. User ids are left out: stored ones are pseudonyms."""
        ids = [t for t in trace_ids if len(t) == 32 and t.isalnum()]  # hex from the decoder
        if not ids:
            return {}
        dims = ("tenant", "feature", "session_id", "route", "environment")
        db = self.table.rsplit(".", 1)[0]
        raw = self.backend.query(
            "SELECT trace_id, " + ", ".join(f"argMax({d}, ({d} != '', is_root))" for d in dims)
            + f" FROM {db}.trace_tags WHERE trace_id IN (" + ",".join(f"'{t}'" for t in ids) + ") GROUP BY trace_id",
            "JSONCompact", readonly=True)
        import json

        out = {}
        for row in json.loads(raw)["data"]:
            tags = {d: v for d, v in zip(dims, row[1:]) if v}
            if tags:
                out[row[0]] = tags
        return out

    def write(self, table: pa.Table) -> None:
        if self._down_flag:
            import os

            if os.path.exists(self._down_flag):
                raise RetryableStorageError("failpoint: storage down (TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE)", 210)
        self.backend.insert_arrow(self.table, table)


@dataclass(frozen=True)
class Busy:
    """Not accepted: the client should retry after ``retry_after_s``."""

    retry_after_s: float
    reason: str  # "queue_full" | "storage_unavailable" | "shutting_down"
    message: str


@dataclass(frozen=True)
class Stored:
    spans: int
    duplicates: int
    kept: list[int] | None = None  # indexes of the request's spans that were stored (None: all)


class DedupCache:
    """Keys of recently stored spans, for dropping exporter retries.

    Two generations: lookups check both, inserts go to the current one, and the
    current becomes the previous every ``window_s / 2`` seconds or when it holds
    ``max_keys / 2`` keys. So a key is remembered for at least ``window_s / 2``
    and memory stays under ``max_keys`` keys (~70 bytes each).
    """

    def __init__(self, window_s: float, max_keys: int, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._current: set[int] = set()
        self._previous: set[int] = set()
        self._rotated_at = clock()

    @staticmethod
    def key(trace_id: str, span_id: str) -> int:
        # Exact (96-bit) key: a hash collision would silently drop a real span.
        return int(trace_id + span_id, 16)

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _maybe_rotate(self) -> None:
        if self._clock() - self._rotated_at >= self.window_s / 2 or len(self._current) >= self.max_keys // 2:
            self._previous = self._current
            self._current = set()
            self._rotated_at = self._clock()

    @staticmethod
    def keys_of(batch: SpanBatch) -> list[int]:
        return [int(t + s, 16) for t, s in zip(batch.trace_id, batch.span_id)]

    @staticmethod
    def keys_of_table(table: pa.Table) -> list[int]:
        return [int(t + s, 16) for t, s in zip(table.column("trace_id").to_pylist(),
                                               table.column("span_id").to_pylist())]

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


class Arrival:
    """A request on its way to the writer (see ``Writer.arriving``). ``close`` is idempotent."""

    __slots__ = ("_writer",)

    def __init__(self, writer: "Writer"):
        self._writer = writer

    def close(self) -> None:
        if self._writer is not None:
            w, self._writer = self._writer, None
            w._arrived()

    def __enter__(self) -> "Arrival":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _Pending:
    table: pa.Table
    keys: list[int]
    nbytes: int
    future: Future
    enqueued: float
    cancelled: bool = False


@dataclass
class WriterSettings:
    max_rows: int = 50_000
    eager_rows: int = 20_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: float = 0.5
    linger_s: float = 0.005  # after waiting for announced requests, how long to wait for the next one
    max_queue_spans: int = 500_000
    retry_after_s: float = 1.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    dedup_window_s: float = 600.0
    dedup_max_keys: int = 2_000_000
    dedup_storage_check: bool = False


def p_rows(p: _Pending) -> int:
    return p.table.num_rows


class Writer:
    def __init__(self, sink: Sink, settings: WriterSettings, metrics: Metrics | None = None, spool=None):
        self.sink = sink
        self.spool = spool
        self._spool_lock = threading.Lock()
        self._spooling = spool is not None and not spool.empty()  # records left from before a restart
        self._replay_wake = threading.Event()
        self._replay_thread: threading.Thread | None = None
        self._replay_stop = False
        self.s = settings
        self.metrics = metrics or Metrics()
        self.dedup = DedupCache(settings.dedup_window_s, settings.dedup_max_keys)
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._queued_spans = 0
        self._queued_bytes = 0
        self._incoming = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._backoff_until = 0.0
        self._backoff_s = 0.0
        self.last_error: str | None = None
        self.telemetry = Telemetry(None)  # the service sets its own (tokenpulse/telemetry.py)
        self.metrics.queue_capacity.set(settings.max_queue_spans)
        self.metrics.storage_up.set(1)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tokenpulse-writer", daemon=True)
        self._thread.start()
        if self.spool is not None:
            self._replay_thread = threading.Thread(target=self._replay, name="tokenpulse-spool-replay", daemon=True)
            self._replay_thread.start()
            self._spool_metrics()

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Refuse new batches, write what is queued, stop. True if fully drained."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        if self._replay_thread is not None:  # what is still spooled stays on disk for the next start
            self._replay_stop = True
            self._replay_wake.set()
            self._replay_thread.join(max(0.1, deadline - time.monotonic()))
        return not self._queue

    @property
    def queued_spans(self) -> int:
        return self._queued_spans

    # ------------------------------------------------------------ intake
    def arriving(self) -> "Arrival":
        """Announce a request being decoded, so the writer waits for it before flushing.

        Close the returned Arrival once the request is submitted (or refused)."""
        with self._cond:
            self._incoming += 1
            self._cond.notify_all()  # a writer lingering for companions stops lingering
        return Arrival(self)

    def _arrived(self) -> None:
        with self._cond:
            self._incoming -= 1
            if self._incoming == 0:
                self._cond.notify_all()

    def submit(self, batch: SpanBatch, nbytes: int = 0) -> Future | Busy:
        """Queue a batch; the Future resolves once it is stored (or fails).

        Encoding and dedup keys are computed here, on the caller's thread: the
        writer thread then does only C++ work (concatenation, insert) and the
        two threads do not take turns at the GIL for Python work."""
        n = len(batch)
        if self._closing:
            return Busy(self.s.retry_after_s, "shutting_down", "tokenpulse is shutting down; retry")
        table = self.sink.encode(batch)
        keys = DedupCache.keys_of(batch) if self.s.dedup_max_keys > 0 else []
        with self._cond:
            if self._closing:
                return Busy(self.s.retry_after_s, "shutting_down", "tokenpulse is shutting down; retry")
            now = time.monotonic()
            if now < self._backoff_until:
                wait = max(self._backoff_until - now, 0.1)
                return Busy(wait, "storage_unavailable",
                            f"storage unavailable ({self.last_error}); retry in {wait:.1f}s")
            if self._queued_spans and self._queued_spans + n > self.s.max_queue_spans:
                return Busy(self.s.retry_after_s, "queue_full",
                            f"write queue full ({self._queued_spans} spans pending); retry")
            fut: Future = Future()
            self._queue.append(_Pending(table, keys, nbytes, fut, now))
            self._queued_spans += n
            self._queued_bytes += nbytes
            self.metrics.queue_spans.set(self._queued_spans)
            self._cond.notify_all()
            return fut

    def cancel(self, fut: Future) -> bool:
        """Withdraw a batch whose client stopped waiting, if it is not being written yet."""
        with self._cond:
            for p in self._queue:
                if p.future is fut:
                    p.cancelled = True
                    return True
        return False

    # ------------------------------------------------------------ the loop
    def _take(self) -> list[_Pending] | None:
        with self._cond:
            while True:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return None  # closing and drained
                deadline = self._queue[0].enqueued + self.s.max_age_s
                waited = False
                linger_until = 0.0
                while (self._queued_spans < self.s.eager_rows and self._queued_bytes < self.s.max_bytes
                       and not self._closing):
                    now = time.monotonic()
                    if now >= deadline:
                        break
                    if self._incoming > 0:
                        waited, linger_until = True, 0.0
                        self._cond.wait(deadline - now)
                        continue
                    # Nobody announced. Having just waited for a request, give the next one a moment:
                    # under load the receiving loop starts it right after submitting the last, and
                    # flushing in that gap split inserts into one per request (measured).
                    if not waited:
                        break
                    if not linger_until:
                        linger_until = now + self.s.linger_s
                    elif now >= linger_until:
                        break
                    self._cond.wait(min(deadline, linger_until) - now)
                items, rows = [], 0
                while self._queue and (not items or rows + p_rows(self._queue[0]) <= self.s.max_rows):
                    p = self._queue.pop(0)
                    self._queued_spans -= p_rows(p)
                    self._queued_bytes -= p.nbytes
                    if p.cancelled:
                        p.future.cancel()
                        continue
                    items.append(p)
                    rows += p_rows(p)
                self.metrics.queue_spans.set(self._queued_spans)
                if items:
                    return items

    def _run(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            try:
                self._write(items)
            except Exception:  # a bug of ours: keep the writer alive, isolate the request
                log.exception("unexpected error writing %d request(s)", len(items))
                self._isolate_bug(items)

    def _isolate_bug(self, items: list[_Pending]) -> None:
        for p in items:
            if p.future.done():
                continue
            try:
                self._write([p])
            except Exception as e:
                self.metrics.write_errors.labels("internal").inc()
                p.future.set_exception(InternalWriteError(f"internal error storing the spans: {type(e).__name__}: {e}"))

    def _write(self, items: list[_Pending]) -> None:
        table = items[0].table if len(items) == 1 else pa.concat_tables([p.table for p in items])
        all_keys = items[0].keys if len(items) == 1 else [k for p in items for k in p.keys]
        keep, keys = self.dedup.filter(all_keys)
        to_store = table if keep is None else table.take(pa.array(keep, pa.int64()))
        if self.s.dedup_storage_check and to_store.num_rows and hasattr(self.sink, "existing"):
            try:
                rows = self._unstored(to_store, keys)
            except StorageError as e:  # cannot check now: the ReplacingMergeTree key stays the backstop
                log.warning("dedup storage check failed: %s", e)
                rows = None
            if rows is not None:
                base = keep if keep is not None else range(table.num_rows)
                keep, keys = [base[i] for i in rows], [keys[i] for i in rows]
                to_store = table.take(pa.array(keep, pa.int64()))
        duplicates = table.num_rows - to_store.num_rows
        if self.spool is not None:
            with self._spool_lock:
                if self._spooling:  # spooled batches are still waiting: keep the order
                    self._to_spool(items, to_store, keys, keep, duplicates)
                    return
        start = time.monotonic()
        try:
            if to_store.num_rows:
                with self.telemetry.span("tokenpulse.insert", rows=to_store.num_rows, requests=len(items)):
                    self.sink.write(to_store)
        except RetryableStorageError as e:
            self.metrics.write_errors.labels("retryable").inc()
            if self.spool is not None:
                with self._spool_lock:
                    self._spooling = True
                    self._degraded(e)
                    self._to_spool(items, to_store, keys, keep, duplicates)
                return
            self._failed(e)
            for p in items:
                p.future.set_exception(e)
            return
        except DataError as e:
            self.metrics.write_errors.labels("data").inc()
            if len(items) > 1:
                # Find the offending request(s); the others are written.
                for p in items:
                    self._write([p])
            else:
                log.warning("storage refused a batch of %d spans: %s", table.num_rows, e)
                items[0].future.set_exception(e)
            return
        self.metrics.inserts.observe(time.monotonic() - start)
        self.metrics.insert_rows.observe(to_store.num_rows)
        self.dedup.add(keys)
        self.metrics.dedup_keys.set(len(self.dedup))
        self._succeeded()
        self.metrics.spans_stored.inc(to_store.num_rows)
        self._resolve(items, keep, duplicates)

    def _unstored(self, table: pa.Table, keys: list[int]) -> list[int] | None:
        """Positions of the rows storage does not have yet (None: none of them is stored).
        Raises StorageError when storage cannot be asked."""
        found = self.sink.existing(table)
        if not found:
            return None
        return [i for i, k in enumerate(keys) if k not in found]

    def _resolve(self, items: list[_Pending], keep: list[int] | None, duplicates: int) -> None:
        """Acknowledge the requests: each gets the indexes of its own spans that were kept."""
        if duplicates:
            self.metrics.spans_duplicate.inc(duplicates)
        if keep is None:
            for p in items:
                p.future.set_result(Stored(p_rows(p), 0))
            return
        # Hand each request the indexes of its own spans that were stored (keep is ascending).
        it, start = 0, 0
        for p in items:
            end = start + p_rows(p)
            kept = []
            while it < len(keep) and keep[it] < end:
                kept.append(keep[it] - start)
                it += 1
            p.future.set_result(Stored(p_rows(p), p_rows(p) - len(kept), kept))
            start = end

    # ------------------------------------------------------------ the spool
    def _to_spool(self, items: list[_Pending], table: pa.Table, keys: list[int], keep, duplicates: int) -> None:
        """Called with the spool lock held: append durably and acknowledge, or refuse (retryable)."""
        from tokenpulse.storage.spool import SpoolFull

        try:
            if table.num_rows:
                self.spool.append(table)
        except (SpoolFull, OSError) as e:
            err = RetryableStorageError(f"storage unavailable ({self.last_error}) and the spool cannot take more: {e}")
            self.metrics.spool_refused.inc(table.num_rows)
            self._failed(err)
            for p in items:
                p.future.set_exception(err)
            return
        self.dedup.add(keys)
        self.metrics.spans_spooled.inc(table.num_rows)
        self._spool_metrics()
        self._replay_wake.set()
        self._resolve(items, keep, duplicates)

    def _spool_metrics(self) -> None:
        self.metrics.spool_records.set(self.spool.records)
        self.metrics.spool_bytes.set(self.spool.bytes)

    def _replay(self) -> None:
        """Insert the spool's records in order whenever there are any; back off while storage fails."""
        backoff = self.s.backoff_initial_s
        while not self._replay_stop:
            try:
                got = self.spool.peek()
            except Exception:
                log.exception("cannot read the spool")
                got = None
            if got is None:
                with self._spool_lock:
                    if self._spooling and self.spool.empty():
                        self._spooling = False
                        self._succeeded()
                        log.info("spool replayed; writing to storage directly again")
                self._spool_metrics()
                self._replay_wake.wait(1.0)
                self._replay_wake.clear()
                continue
            position, table = got
            keys = DedupCache.keys_of_table(table)
            try:
                if hasattr(self.sink, "existing"):
                    # Idempotent replay: a record inserted before a crash that came before its cursor
                    # update, or an insert that failed after writing rows, is not counted twice.
                    try:
                        rows = self._unstored(table, keys)
                    except StorageError as e:  # cannot tell yet: retry later, never dead-letter for this
                        raise RetryableStorageError(f"checking spooled spans against storage: {e}") from None
                    if rows is not None:
                        self.metrics.spans_duplicate.inc(table.num_rows - len(rows))
                        table, keys = table.take(pa.array(rows, pa.int64())), [keys[i] for i in rows]
                if table.num_rows:
                    self.sink.write(table)
            except RetryableStorageError as e:
                self._degraded(e)
                self._replay_wake.wait(backoff)
                backoff = min(backoff * 2, self.s.backoff_max_s)
                continue
            except DataError as e:  # acknowledged spans ClickHouse refuses: keep them, loudly
                path = self._dead_letter(table)
                log.error("storage refused %d spooled spans (%s); kept in %s", table.num_rows, e, path)
                self.metrics.write_errors.labels("data").inc()
            else:
                self.metrics.spans_stored.inc(table.num_rows)
                self.metrics.spans_replayed.inc(table.num_rows)
                self.dedup.add(keys)
            self.spool.commit(position)
            self._spool_metrics()
            backoff = self.s.backoff_initial_s

    def _dead_letter(self, table: pa.Table) -> str:
        import os

        path = os.path.join(self.spool.dir, f"refused-{time.time_ns()}.arrow")
        with pa.OSFile(path, "wb") as fh, pa.ipc.new_file(fh, table.schema) as w:
            w.write_table(table)
        return path

    def _degraded(self, e: Exception) -> None:
        if self.last_error is None:
            log.warning("storage write failed; spooling accepted spans to disk: %s", e)
        self.last_error = str(e)
        self.metrics.storage_up.set(0)

    def _failed(self, e: Exception) -> None:
        self._backoff_s = min(max(self._backoff_s * 2, self.s.backoff_initial_s), self.s.backoff_max_s)
        self._backoff_until = time.monotonic() + self._backoff_s
        self.last_error = str(e)
        self.metrics.storage_up.set(0)
        log.warning("storage write failed, backing off %.1fs: %s", self._backoff_s, e)

    def _succeeded(self) -> None:
        if self.last_error is not None:
            log.info("storage writes succeed again")
        self._backoff_s = 0.0
        self._backoff_until = 0.0
        self.last_error = None
        self.metrics.storage_up.set(1)

    def warm_dedup(self, keys: list[int]) -> None:
        self.dedup.add(keys)

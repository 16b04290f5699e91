"""The writer: batches go to ClickHouse, or durably to the spool, and only then are acknowledged.

The receivers ``submit`` an enriched batch and get a Future that resolves once the batch is in
ClickHouse or fsynced in the spool (Vector's end-to-end ack), with a typed result: ``Stored``
(which of the request's spans were new) or ``Refused`` (why, and whether a retry can help).
When to flush is ``storage/batching.py``'s pure policy; the sink is ``storage/sink.py``; the
dedup memory ``storage/dedup.py``; the spool's replay ``storage/replay.py``.

Modes (``Mode``): DIRECT writes to storage. A retryable storage error with a spool switches to
SPOOLING: that batch and every later one are appended to the spool (order kept) and
acknowledged once fsynced, until the replay has emptied it. Without a spool, or when the spool
cannot take a batch, the batch is refused and the writer is BACKING_OFF: ``submit`` answers
``Busy`` with the remaining delay (the receivers turn it into UNAVAILABLE + RetryInfo / 503 +
Retry-After). A ``DataError`` re-inserts request by request, so only the offending request is
refused. ``submit`` also answers ``Busy`` when the queue holds ``max_queue_spans``.

Exactly once in sums: exporters retry, so the same span can arrive twice. The dedup memory drops
repeats of spans stored in the last ``dedup_window_s`` (per sender tenant); the table's
ReplacingMergeTree key (tenant, hour, service, trace id, span id) is the backstop.

The writer loop and the replay run under a supervisor (``tokenpulse/supervise.py``): an
unexpected error is logged, counted and the loop restarted.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import pyarrow as pa

from tokenpulse.errors import DataError, RetryableStorageError, StorageError
from tokenpulse.metrics import Metrics
from tokenpulse.record import SpanBatch
from tokenpulse.retry import Backoff
from tokenpulse.storage.batching import BatchSettings, Flush, Progress, Queue, next_flush
from tokenpulse.storage.dedup import DedupCache
from tokenpulse.storage.replay import Replayer
from tokenpulse.storage.sink import Sink
from tokenpulse.supervise import Supervisor
from tokenpulse.telemetry import Telemetry

log = logging.getLogger(__name__)


class Mode(enum.Enum):
    DIRECT = "direct"
    SPOOLING = "spooling"
    BACKING_OFF = "backing_off"


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


@dataclass(frozen=True)
class Refused:
    """The batch was not stored. ``retryable``: storage trouble (the client should retry);
    otherwise the spans themselves were refused (``invalid``) or a bug of ours (``internal``)."""

    reason: str  # "storage_unavailable" | "invalid" | "internal"
    message: str
    retry_after_s: float | None = None  # storage_unavailable: when storage will be tried again

    @property
    def retryable(self) -> bool:
        return self.reason == "storage_unavailable"


@dataclass(frozen=True)
class ShutdownReport:
    drained: bool  # everything accepted is in storage or in the spool
    unwritten_spans: int  # accepted but neither stored nor spooled (refused to their clients)
    spooled_records: int  # left in the spool for the next start


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
    replay_max_attempts: int = 10  # per spooled record, while storage answers (then dead-lettered)
    bound_tenants: tuple[str, ...] = ()  # the API keys' tenants: dedup namespaces (storage/dedup.py)

    @property
    def batching(self) -> BatchSettings:
        return BatchSettings(self.eager_rows, self.max_bytes, self.max_age_s, self.linger_s)


class Writer:
    def __init__(self, sink: Sink, settings: WriterSettings, metrics: Metrics | None = None, spool=None):
        self.sink = sink
        self.spool = spool
        self.s = settings
        self.metrics = metrics or Metrics()
        self.dedup = DedupCache(settings.dedup_window_s, settings.dedup_max_keys, tenants=settings.bound_tenants)
        self.telemetry = Telemetry(None)  # the service sets its own (tokenpulse/telemetry.py)
        self.supervisor = Supervisor(lambda name: self.metrics.worker_restarts.labels(name).inc())
        self._cond = threading.Condition()  # the queue, and the mode's fields below
        self._queue: list[_Pending] = []
        self._queued_spans = 0
        self._queued_bytes = 0
        self._incoming = 0
        self._closing = False
        self._stop = threading.Event()  # set once the queue is drained: the workers return
        # Clients are told the remaining delay: never shorter than the doubling schedule, or an exporter's
        # few retries (the Python SDK's six) are spent inside one outage.
        self._backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s, jitter="up")
        self._backoff_until = 0.0
        self.last_error: str | None = None
        # Appends to the spool and the switch back to DIRECT happen under this lock, so no batch is
        # written directly while older ones still wait in the spool.
        self._spool_lock = threading.Lock()
        self._spooling = spool is not None and not spool.empty()  # records left from before a restart
        self.replayer = None if spool is None else Replayer(
            spool, sink, self.dedup, self.metrics, on_degraded=self._degraded, on_empty=self._spool_empty,
            max_attempts=settings.replay_max_attempts, backoff=Backoff(settings.backoff_initial_s,
                                                                       settings.backoff_max_s))
        self.metrics.queue_capacity.set(settings.max_queue_spans)
        self.metrics.storage_up.set(1)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.supervisor.start("writer", self._run, self._stop)
        if self.replayer is not None:
            self.supervisor.start("spool-replay", self.replayer.run, self._stop)
            self.replayer.publish_metrics()

    def shutdown(self, timeout: float = 30.0, deadline: float | None = None) -> bool:
        """Refuse new batches, write what is queued, stop. True if fully drained."""
        return self.close(deadline if deadline is not None else time.monotonic() + timeout).drained

    def close(self, deadline: float) -> ShutdownReport:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        done = self.supervisor.join("writer", deadline - time.monotonic())
        self._stop.set()  # what is still spooled stays on disk for the next start
        if self.replayer is not None:
            self.replayer.wake.set()
        self.supervisor.join("spool-replay", max(0.1, deadline - time.monotonic()))
        with self._cond:
            left = self._queued_spans
        return ShutdownReport(done and not left, left, self.spool.records if self.spool is not None else 0)

    @property
    def queued_spans(self) -> int:
        return self._queued_spans

    @property
    def mode(self) -> Mode:
        if self._spooling:
            return Mode.SPOOLING
        with self._cond:
            return Mode.BACKING_OFF if time.monotonic() < self._backoff_until else Mode.DIRECT

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

    def submit(self, batch: SpanBatch, nbytes: int = 0, tenant: str = "") -> Future | Busy:
        """Queue a batch; the Future resolves to Stored or Refused. ``tenant``: the sender's
        authenticated tenant, the namespace of its spans' dedup keys (storage/dedup.py).

        Encoding and dedup keys are computed here, on the caller's thread: the
        writer thread then does only C++ work (concatenation, insert) and the
        two threads do not take turns at the GIL for Python work."""
        n = len(batch)
        if self._closing:
            return Busy(self.s.retry_after_s, "shutting_down", "tokenpulse is shutting down; retry")
        table = self.sink.encode(batch)
        keys = self.dedup.keys_of(batch, tenant) if self.s.dedup_max_keys > 0 else []
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
        settings = self.s.batching
        with self._cond:
            while True:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return None  # closing and drained
                progress = Progress()
                while True:
                    now = time.monotonic()
                    q = Queue(self._queued_spans, self._queued_bytes, self._queue[0].enqueued, self._incoming,
                              self._closing)
                    decision = next_flush(q, progress, now, settings)
                    if isinstance(decision, Flush):
                        break
                    progress = decision.progress
                    self._cond.wait(max(decision.until - now, 0.0))
                items, rows = [], 0
                while self._queue and (not items or rows + self._queue[0].table.num_rows <= self.s.max_rows):
                    p = self._queue.pop(0)
                    self._queued_spans -= p.table.num_rows
                    self._queued_bytes -= p.nbytes
                    if p.cancelled:
                        p.future.cancel()
                        continue
                    items.append(p)
                    rows += p.table.num_rows
                self.metrics.queue_spans.set(self._queued_spans)
                if items:
                    return items

    def _run(self, stop: threading.Event) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            try:
                self._write(items)
            except Exception as e:  # a bug of ours: keep the writer alive, isolate the request
                log.exception("unexpected error writing %d request(s)", len(items))
                self._isolate_bug(items, e)

    def _isolate_bug(self, items: list[_Pending], first: Exception) -> None:
        if len(items) == 1:
            self._refuse_internal(items[0], first)
            return
        for p in items:  # which request triggers it? the others are written
            if p.future.done():
                continue
            try:
                self._write([p])
            except Exception as e:
                self._refuse_internal(p, e)

    def _refuse_internal(self, p: _Pending, e: Exception) -> None:
        self.metrics.write_errors.labels("internal").inc()
        if not p.future.done():
            p.future.set_result(Refused("internal", f"internal error storing the spans: {type(e).__name__}: {e}"))

    def _write(self, items: list[_Pending]) -> None:
        table = items[0].table if len(items) == 1 else pa.concat_tables([p.table for p in items])
        all_keys = items[0].keys if len(items) == 1 else [k for p in items for k in p.keys]
        keep, keys = self.dedup.filter(all_keys)
        to_store = table if keep is None else table.take(pa.array(keep, pa.int64()))
        if self.s.dedup_storage_check and to_store.num_rows and hasattr(self.sink, "existing"):
            try:
                found = self.sink.existing(to_store)
            except StorageError as e:  # cannot check now: the ReplacingMergeTree key stays the backstop
                log.warning("dedup storage check failed: %s", e)
                found = {}
            if found:
                rows = [i for i, there in enumerate(self.dedup.stored_elsewhere(keys, found)) if not there]
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
            delay = self._failed(e)
            for p in items:
                p.future.set_result(Refused("storage_unavailable", f"storage unavailable: {e}", delay))
            return
        except DataError as e:
            self.metrics.write_errors.labels("data").inc()
            if len(items) > 1:
                # Find the offending request(s); the others are written.
                for p in items:
                    self._write([p])
            else:
                log.warning("storage refused a batch of %d spans: %s", table.num_rows, e)
                items[0].future.set_result(Refused("invalid", f"storage refused the spans: {e}"))
            return
        self.metrics.inserts.observe(time.monotonic() - start)
        self.metrics.insert_rows.observe(to_store.num_rows)
        self.dedup.add(keys)
        self.metrics.dedup_keys.set(len(self.dedup))
        self._succeeded()
        self.metrics.spans_stored.inc(to_store.num_rows)
        self._resolve(items, keep, duplicates)

    def _resolve(self, items: list[_Pending], keep: list[int] | None, duplicates: int) -> None:
        """Acknowledge the requests: each gets the indexes of its own spans that were kept."""
        if duplicates:
            self.metrics.spans_duplicate.inc(duplicates)
        if keep is None:
            for p in items:
                p.future.set_result(Stored(p.table.num_rows, 0))
            return
        # Hand each request the indexes of its own spans that were stored (keep is ascending).
        it, start = 0, 0
        for p in items:
            end = start + p.table.num_rows
            kept = []
            while it < len(keep) and keep[it] < end:
                kept.append(keep[it] - start)
                it += 1
            p.future.set_result(Stored(p.table.num_rows, p.table.num_rows - len(kept), kept))
            start = end

    # ------------------------------------------------------------ the spool
    def _to_spool(self, items: list[_Pending], table: pa.Table, keys: list[int], keep, duplicates: int) -> None:
        """Called with the spool lock held: append durably and acknowledge, or refuse (retryable)."""
        from tokenpulse.storage.spool import SpoolFull

        try:
            if table.num_rows:
                self.spool.append(table)
        except (SpoolFull, OSError) as e:
            if not isinstance(e, SpoolFull):
                self.metrics.spool_append_errors.inc()
            reason = str(e) if isinstance(e, SpoolFull) else f"{e.strerror or e}"
            self.metrics.spool_refused.inc(table.num_rows)
            delay = self._failed(RetryableStorageError(f"{self.last_error}; the spool cannot take more: {reason}"))
            for p in items:
                p.future.set_result(Refused("storage_unavailable", f"storage unavailable ({self.last_error}); retry",
                                            delay))
            return
        self.dedup.add(keys)
        self.metrics.spans_spooled.inc(table.num_rows)
        self.replayer.publish_metrics()
        self.replayer.wake.set()
        self._resolve(items, keep, duplicates)

    def _spool_empty(self) -> None:
        """The replay found the spool empty: write directly again (under the spool lock, so no
        append can slip in between)."""
        with self._spool_lock:
            if self._spooling and self.spool.empty():
                self._spooling = False
                self._succeeded()
                log.info("spool replayed; writing to storage directly again")

    # ------------------------------------------------------------ mode
    def _degraded(self, e: Exception) -> None:
        with self._cond:
            first = self.last_error is None
            self.last_error = str(e)
        if first:
            log.warning("storage write failed; spooling accepted spans to disk: %s", e)
        self.metrics.storage_up.set(0)

    def _failed(self, e: Exception) -> float:
        """Back off; returns the delay, which the refused requests are told (so a retry does not
        arrive while the writer still backs off, spending one of the exporter's few attempts)."""
        with self._cond:
            delay = self._backoff.next_delay() or self.s.backoff_max_s
            self._backoff_until = time.monotonic() + delay
            self.last_error = str(e)
        self.metrics.storage_up.set(0)
        log.warning("storage write failed, backing off %.1fs: %s", delay, e)
        return delay

    def _succeeded(self) -> None:
        with self._cond:
            recovered = self.last_error is not None
            self._backoff.reset()
            self._backoff_until = 0.0
            self.last_error = None
        if recovered:
            log.info("storage writes succeed again")
        self.metrics.storage_up.set(1)

    def warm_dedup(self, rows: list[tuple[str, str, str]]) -> None:
        """Remember stored spans (tenant, trace id, span id), e.g. the last window's after a restart."""
        self.dedup.add_rows(rows)

"""The forward path: stored requests -> re-encoded OTLP -> one queue and sender per destination.

    writer (stored) --offer--> jobs --encoder thread--> destination queue --sender thread--> OTLP

Nothing here can slow or fail ingestion. ``offer`` is called when the writer
resolves a request (stored, or fsync'd in the spool) and only appends to a
bounded list; the acknowledgement to the client never waits for it. Every
span that is not delivered is counted in ``tokenpulse_forward_dropped_spans_total``
by destination and reason:

* ``queue_full``: the destination's queue (``queue_spans``) or the encoder's
  was full, as when a downstream has been down a while (the newest spans are
  the ones refused, as the Collector's sending queue does);
* ``rejected``: the downstream answered a non-retryable error;
* ``partial``: the downstream accepted the request but refused some spans
  (OTLP partial success: not retried);
* ``retries_exhausted``: still failing after ``retry.max_elapsed_s``;
* ``unencodable``: the received request could not be re-encoded;
* ``shutdown``: still queued when the service stopped.

Queued requests are merged into one Export of up to 4 MiB: concatenated
protobuf messages of one type parse as their merge, and ``resource_spans`` is
a repeated field, so the bytes of several requests are one valid request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

from tokenpulse.forward.config import Destination
from tokenpulse.forward.transport import Outcome, make_sender
from tokenpulse.metrics import Metrics
from tokenpulse.retry import Backoff
from tokenpulse.otlp.reencode import Reencoder

log = logging.getLogger(__name__)

MAX_EXPORT_BYTES = 4 * 1024 * 1024  # per merged Export; gRPC servers often default to 4 MiB max
MAX_ENCODER_BACKLOG_SPANS = 50_000


class DestinationQueue:
    def __init__(self, d: Destination, sender, metrics: Metrics):
        self.d = d
        self.sender = sender
        self.m = metrics
        self._cond = threading.Condition()
        self._items: deque[tuple[bytes, int]] = deque()
        self.queued_spans = 0
        self._stopping = False
        self._deadline = float("inf")  # after shutdown: give up sending at this time
        self._thread = threading.Thread(target=self._run, name=f"tokenpulse-forward-{d.name}", daemon=True)
        self.m.forward_queue.labels(d.name).set(0)
        self.m.forward_up.labels(d.name).set(1)

    def start(self) -> None:
        self._thread.start()

    def put(self, body: bytes, n: int) -> None:
        with self._cond:
            if self._stopping:
                self.drop(n, "shutdown")
                return
            if self.queued_spans + n > self.d.queue_spans:
                self.drop(n, "queue_full")
                return
            self._items.append((body, n))
            self.queued_spans += n
            self.m.forward_queue.labels(self.d.name).set(self.queued_spans)
            self._cond.notify()

    def drop(self, n: int, reason: str) -> None:
        if n:
            self.m.forward_dropped.labels(self.d.name, reason).inc(n)

    def _take(self) -> tuple[bytes, int] | None:
        with self._cond:
            while not self._items and not self._stopping:
                self._cond.wait()
            if not self._items:
                return None
            parts, n, size = [], 0, 0
            while self._items and (not parts or size + len(self._items[0][0]) <= MAX_EXPORT_BYTES):
                body, k = self._items.popleft()
                parts.append(body)
                n += k
                size += len(body)
            self.queued_spans -= n
            self.m.forward_queue.labels(self.d.name).set(self.queued_spans)
            return b"".join(parts), n

    def _run(self) -> None:
        while True:
            got = self._take()
            if got is None:
                return
            self._deliver(*got)

    def _deliver(self, body: bytes, n: int) -> None:
        name = self.d.name
        first = time.monotonic()
        if first > self._deadline:  # stopping, and out of time: do not start another attempt
            self.drop(n, "shutdown")
            return
        backoff = Backoff(self.d.retry_initial_s, self.d.retry_max_s, self.d.retry_max_elapsed_s, started=first)
        while True:
            start = time.monotonic()
            try:
                out = self.sender.send(body)
            except Exception as e:  # a bug of ours or the client library's: never kill the thread
                log.exception("forward to %s failed unexpectedly", name)
                out = Outcome("retry", message=f"{type(e).__name__}: {e}")
            self.m.forward_seconds.labels(name).observe(time.monotonic() - start)
            if out.kind == "ok":
                self.m.forward_up.labels(name).set(1)
                self.m.forward_sent.labels(name).inc(n - out.rejected)
                if out.rejected:
                    self.drop(out.rejected, "partial")
                    log.warning("forward to %s: downstream refused %d of %d spans: %s", name, out.rejected, n,
                                out.message)
                return
            if out.kind == "drop":
                self.m.forward_up.labels(name).set(0)
                self.drop(n, "rejected")
                log.warning("forward to %s: %d spans refused, not retried (%s)", name, n, out.message)
                return
            self.m.forward_up.labels(name).set(0)
            self.m.forward_retries.labels(name).inc()
            # the downstream's own delay when it gave one, else exponential back-off with jitter
            wait = backoff.next_delay(out.retry_after_s)
            now = time.monotonic()
            if wait is None:
                self.drop(n, "retries_exhausted")
                log.warning("forward to %s: gave up on %d spans after %.0fs (%s)", name, n, now - first, out.message)
                return
            if now + wait > self._deadline:
                self.drop(n, "shutdown")
                return
            log.debug("forward to %s: retry in %.1fs (%s)", name, wait, out.message)
            with self._cond:
                self._cond.wait_for(lambda: time.monotonic() > self._deadline, wait)
            if time.monotonic() > self._deadline:
                self.drop(n, "shutdown")
                return

    def stop(self, deadline: float) -> None:
        """Send what is queued until ``deadline`` (monotonic), then drop the rest, counted."""
        with self._cond:
            self._stopping = True
            self._deadline = deadline
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()) + self.d.timeout_s)
        with self._cond:
            left = sum(k for _, k in self._items)
            self._items.clear()
            self.queued_spans = 0
        self.drop(left, "shutdown")
        self.sender.close()


class Forwarder:
    def __init__(self, destinations: dict[str, Destination], reencoder: Reencoder, metrics: Metrics,
                 sender_factory: Callable = make_sender):
        self.m = metrics
        self.reencoder = reencoder
        self.queues = [DestinationQueue(d, sender_factory(d), metrics) for d in destinations.values()]
        self.filters = tuple(sorted({q.d.spans for q in self.queues}))
        # Requests waiting for the encoder hold their decoded batch and parsed message (a few KB per
        # span), so that backlog is bounded tighter than the destination queues (encoded, ~1 KB/span).
        self.max_job_spans = min(max(q.d.queue_spans for q in self.queues), MAX_ENCODER_BACKLOG_SPANS)
        self._cond = threading.Condition()
        self._jobs: deque = deque()
        self._job_spans = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tokenpulse-forward-encode", daemon=True)

    def start(self) -> None:
        for q in self.queues:
            q.start()
        self._thread.start()

    def offer(self, source, batch, kept: list[int] | None) -> None:
        """Forward the stored spans of one request (``kept``: their positions, None: all). Never
        blocks: when the encoder is behind by ``queue_spans``, the spans are dropped and counted."""
        n = len(batch) if kept is None else len(kept)
        if not n:
            return
        with self._cond:
            if self._stopping or self._job_spans + n > self.max_job_spans:
                for q in self.queues:
                    q.drop(n, "shutdown" if self._stopping else "queue_full")
                return
            self._jobs.append((source, batch, kept, n))
            self._job_spans += n
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs:
                    return
                source, batch, kept, n = self._jobs.popleft()
                self._job_spans -= n
            try:
                bodies = self.reencoder.encode(source, batch, kept, self.filters)
            except Exception as e:
                log.warning("cannot re-encode %d spans for forwarding: %s", n, e)
                for q in self.queues:
                    q.drop(n, "unencodable")
                continue
            for q in self.queues:
                body, k = bodies[q.d.spans]
                if k:
                    q.put(body, k)

    def shutdown(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        for q in self.queues:
            q.stop(deadline)

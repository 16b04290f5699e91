"""What both OTLP transports do with a decoded request, and what they answer.

decoded batch -> enrich -> writer.submit -> wait for the durable write -> Answer.
The transports only translate an ``Answer`` into gRPC statuses or HTTP codes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from tokenpulse.enrich import RequestContext
from tokenpulse.metrics import Metrics
from tokenpulse.otlp.decode import Decoded
from tokenpulse.receiver.limits import Limits, apply_limits
from tokenpulse.storage.writer import Arrival, Busy, Refused, Stored, Writer
from tokenpulse.telemetry import Telemetry


log = logging.getLogger(__name__)

MAX_FUTURE_NS = 86_400 * 10**9  # spans starting later than this from now are refused (clock skew)


@dataclass(frozen=True)
class Answer:
    kind: str  # "ok" | "retry" | "invalid" | "internal"
    rejected: int = 0
    message: str = ""
    retry_after_s: float = 0.0
    reason: str = ""  # for kind == "retry": queue_full | storage_unavailable | shutting_down | timeout


class Ingest:
    def __init__(self, writer: Writer, enrich: Callable[[Decoded], Decoded], metrics: Metrics,
                 ack_timeout_s: float, retention_days: int, limits: Limits | None = None,
                 max_inflight_bytes: int = 64 * 1024 * 1024,
                 trace_tags_lookup: Callable[[list[str]], dict] | None = None,
                 forward: Callable[[object, object, list[int] | None], None] | None = None,
                 telemetry: Telemetry | None = None, late: Callable[[list], None] | None = None):
        self.telemetry = telemetry or Telemetry(None)
        self.late = late  # late(traces): their earlier unattributed calls can be moved (late_attribution.py)
        # forward(source, batch, kept): hand stored spans to the forwarder (never blocks, never fails
        # the request: the acknowledgement depends on storage only)
        self.forward = forward
        self.trace_tags_lookup = trace_tags_lookup  # storage lookup for traces this process has not seen
        self.limits = limits or Limits()
        self.max_inflight_bytes = max_inflight_bytes
        self.inflight_bytes = 0  # request bodies admitted and not yet answered (one event loop: no lock)
        self.writer = writer
        self.enrich = enrich
        self.metrics = metrics
        self.ack_timeout_s = ack_timeout_s
        self.retention_ns = retention_days * 86_400 * 10**9
        # Decoding and enrichment run on this one thread, never on the event loop: a request that
        # costs seconds to decode (a gzip bomb of empty spans) must not keep the loop from answering
        # other requests, shedding overload at once, and /healthz. One thread, so enrichment's
        # memories (duplicate calls, trace tags) are touched by it alone.
        self.cpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenpulse-decode")

    async def on_cpu(self, fn, *args):
        """Run ``fn(*args)`` on the decode/enrich thread."""
        return await asyncio.get_running_loop().run_in_executor(self.cpu, fn, *args)

    def close(self) -> None:
        self.cpu.shutdown(wait=False)

    def _limit(self, decoded: Decoded) -> None:
        """Per-request limits and the retention window (on the decode thread)."""
        cut = apply_limits(decoded, self.limits)
        for kind, count in cut.items():
            if count:
                self.metrics.attributes_limited.labels(kind).inc(count)
        if len(decoded.batch):
            self._drop_expired(decoded)

    def _limit_and_enrich(self, decoded: Decoded, limit: bool) -> None:
        if limit:
            self._limit(decoded)
        if len(decoded.batch):
            got = self.enrich(decoded.batch, RequestContext(decoded.tenant))
            decoded.batch = got.batch
            decoded.tenant_overridden = got.tenant_overridden
            decoded.late_traces = got.late_traces
            for reason in got.rejects:
                decoded.reject(reason, "missing_tags")

    def _drop_expired(self, decoded: Decoded) -> None:
        """Refuse spans that started before the retention window, or more than a day from now.

        ClickHouse drops rows already past the table TTL when it writes them
        (seen with the ReplacingMergeTree spans table), so storing them would
        acknowledge spans that are never stored. Better to say so. Far-future
        start times (a broken clock) overflow the TTL's DateTime the same way."""
        now = time.time_ns()
        cutoff, ceiling = now - self.retention_ns, now + MAX_FUTURE_NS
        starts = decoded.batch.start_time_ns
        if min(starts) >= cutoff and max(starts) <= ceiling:
            return
        keep = []
        for i, t in enumerate(starts):
            if t < cutoff:
                decoded.reject(f"start time older than the {self.retention_ns // 86_400_000_000_000}-day "
                               "retention (would expire at once)", "expired")
            elif t > ceiling:
                decoded.reject("start time more than a day in the future (is the sender's clock right?)", "future")
            else:
                keep.append(i)
        decoded.batch = decoded.batch.take(keep)

    async def export(self, decoded: Decoded, nbytes: int, transport: str, arrival: Arrival | None = None) -> Answer:
        with self.telemetry.span("tokenpulse.export", transport=transport, spans=len(decoded.batch)) as span:
            try:
                answer = await self._export(decoded, nbytes, transport, arrival)
            finally:
                if arrival is not None:
                    arrival.close()
            if span is not None:
                span.set_attribute("outcome", answer.kind)
                span.set_attribute("rejected", answer.rejected)
            return answer

    async def _export(self, decoded: Decoded, nbytes: int, transport: str, arrival: Arrival | None) -> Answer:
        if self.forward is None:
            decoded.source = None  # only forwarding re-reads the received message: free it now
        self.metrics.spans_received.labels(transport).inc(len(decoded.batch) + decoded.rejected)
        if len(decoded.batch) and self.trace_tags_lookup is not None:
            await self.on_cpu(self._limit, decoded)
            if len(decoded.batch):
                await self._warm_trace_tags(decoded)
        if len(decoded.batch):
            try:
                # One hop to the decode thread: limits (unless done above), then enrichment, which may
                # refuse spans (tag-or-reject): they join decoded.rejected.
                await self.on_cpu(self._limit_and_enrich, decoded, self.trace_tags_lookup is None)
            except Exception as e:  # a bug of ours: this request fails clearly, the service goes on
                return self._internal("enrichment", e, len(decoded.batch), transport)
        if decoded.tenant_overridden:
            self.metrics.tenant_overridden.inc(decoded.tenant_overridden)
        for kind, count in decoded.reasons.items():
            self.metrics.spans_rejected.labels(transport, kind).inc(count)
        n = len(decoded.batch)
        if n == 0:
            # An empty request is a success (otlp.md); all-rejected is a partial success.
            return self._ok(decoded, transport)
        try:
            got = self.writer.submit(decoded.batch, nbytes, decoded.tenant)
        except Exception as e:
            return self._internal("encoding", e, n, transport)
        if isinstance(got, Busy):
            if arrival is not None:
                arrival.close()
            return self._retry(n, got.reason, got.message, got.retry_after_s, transport)
        if self.forward is not None:
            # On the writer's thread once stored (or spooled), even if this client stopped waiting
            # (its retry is then dropped as a duplicate, so this is the only forward of these spans).
            # Registered before this handler's next await: a cancelled call must not skip it.
            got.add_done_callback(lambda f, d=decoded: self._forward_stored(d, f))
        # Counted once stored, even if this client stopped waiting: its retry is then dropped as a
        # duplicate, so this is the only count of these spans.
        got.add_done_callback(lambda f, b=decoded.batch: self._count_stored(b, f))
        if decoded.late_traces and self.late is not None:
            # Once the root is stored, its trace's earlier calls can be moved in the rollups.
            got.add_done_callback(lambda f, t=decoded.late_traces: self.late(t) if _stored(f) else None)
        if arrival is not None:
            # Queued: the writer need not wait for this one any more. Yield once first, so requests
            # already received announce themselves before this one stops counting: otherwise the
            # writer sees nobody coming in that gap and inserts each request alone under load.
            await asyncio.sleep(0)
            arrival.close()
        try:
            stored = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(got)), self.ack_timeout_s)
        except asyncio.TimeoutError:
            # Withdraw it if not yet being written; if it is written anyway, the
            # client's retry is dropped as a duplicate.
            self.writer.cancel(got)
            return self._retry(n, "timeout", "storage is slow; the write did not finish in time, retry",
                               self.writer.s.retry_after_s, transport)
        if isinstance(stored, Refused):
            if stored.retryable:
                return self._retry(n, "storage_unavailable", stored.message,
                                   max(stored.retry_after_s or 0.0, self.writer.s.retry_after_s), transport)
            self.metrics.requests.labels(transport, stored.reason).inc()
            return Answer(stored.reason, rejected=n, message=stored.message)
        return self._ok(decoded, transport)

    def _count_stored(self, batch, fut) -> None:
        """Token and cost counters: only what this request stored (spans dropped as retries were
        counted the first time)."""
        if not _stored(fut):
            return
        kept = fut.result().kept
        try:
            self.metrics.count_usage(batch if kept is None else batch.take(kept))
        except Exception:  # counters must never disturb the writer
            log.exception("counting %d stored spans failed", len(batch))

    def _forward_stored(self, decoded: Decoded, fut) -> None:
        if not _stored(fut):
            return
        try:
            self.forward(decoded.source, decoded.batch, fut.result().kept)
        except Exception:  # forwarding must never disturb the writer
            log.exception("handing %d spans to the forwarder failed", len(decoded.batch))

    def _internal(self, stage: str, e: Exception, n: int, transport: str) -> Answer:
        log.exception("bug in %s of %d spans", stage, n)
        self.metrics.requests.labels(transport, "internal").inc()
        return Answer("internal", rejected=n, message=f"internal error in {stage}: {type(e).__name__}: {e}")

    def _ok(self, decoded: Decoded, transport: str) -> Answer:
        self.metrics.requests.labels(transport, "partial" if decoded.rejected else "ok").inc()
        return Answer("ok", rejected=decoded.rejected, message=decoded.error_message)

    async def _warm_trace_tags(self, decoded: Decoded) -> None:
        """Several receivers without routing by trace id: before enrichment, fetch from storage the
        tags of traces whose child spans arrive here but whose tagged span this process never saw.
        The memory is read and filled on the decode thread (its only user)."""
        memory = self.enrich.attributor.memory
        b = decoded.batch
        tenant = decoded.tenant  # a bound sender learns only its own tenant's traces

        def unknown_traces():
            keys = memory.scope(tenant, b.trace_id)
            return sorted({t for t, k, p in zip(b.trace_id, keys, b.parent_span_id) if p and memory.trace(k) is None})

        def learn(found):
            for trace_id, tags in found.items():
                memory.add_trace(memory.scope(tenant, [trace_id])[0], tags, is_root=True)

        unknown = await self.on_cpu(unknown_traces)
        if not unknown:
            return
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, self.trace_tags_lookup, unknown, tenant)
        except Exception as e:  # storage trouble: attribute from what this request says, as without the lookup
            log.warning("trace tag lookup failed: %s", e)
            return
        await self.on_cpu(learn, found)

    def admit(self, nbytes: int, transport: str) -> Answer | None:
        """Admission control before a body is read or decoded: decoding and enrichment run on one
        thread, so requests beyond ``max_inflight_bytes`` would only wait there until their
        exporters time out. They are answered retry at once instead. One request is always
        admitted when nothing is in flight. Call ``release`` with the same size when done."""
        return self.grow(0, nbytes, transport)

    def grow(self, held: int, extra: int, transport: str) -> Answer | None:
        """A request already holding ``held`` bytes needs ``extra`` more: its body is still arriving
        (chunked, or longer than declared) or it inflated. Shed like ``admit`` unless it is the
        only request in progress. On None it holds ``held + extra``."""
        if self.inflight_bytes > held and self.inflight_bytes + extra > self.max_inflight_bytes:
            self.metrics.requests.labels(transport, "retry").inc()
            self.metrics.requests_shed.labels(transport).inc()
            return Answer("retry", message=f"overloaded: {self.inflight_bytes >> 20} MiB of requests in progress; "
                                           "retry", retry_after_s=self.writer.s.retry_after_s, reason="overloaded")
        self.inflight_bytes += extra
        return None

    def release(self, nbytes: int) -> None:
        self.inflight_bytes -= nbytes

    def _retry(self, n: int, reason: str, message: str, after: float, transport: str) -> Answer:
        self.metrics.requests.labels(transport, "retry").inc()
        self.metrics.spans_refused_retry.labels(reason).inc(n)
        return Answer("retry", message=message, retry_after_s=after, reason=reason)


def _stored(fut) -> bool:
    return not fut.cancelled() and fut.exception() is None and isinstance(fut.result(), Stored)

"""When the writer flushes: a pure policy, ``next_flush(queue, progress, now, settings)``.

Requests are merged into large inserts (chDB's fixed 10-60 ms per insert makes insert size
dominate, docs/sources.md#platform). A batch is flushed when the pending spans reach
``eager_rows`` or ``max_bytes``, when the oldest waited ``max_age_s``, when the writer is
closing, or when no other request is on its way: receivers announce requests they are decoding
(``Writer.arriving``), and waiting for companions that are not coming only adds latency, since
exporters wait for our answer before sending more.

Why the defaults (eager 20,000 spans, 0.5 s): an insert's cost is mostly fixed. On this machine
kind an insert into ``spans`` with its six views costs ~60-70 ms of CPU even for 10 rows, so
ClickHouse spent ~48-55 us of CPU per span in 5,000-row inserts, ~35 in 10,000-row, ~25 in
20,000-row and ~22 in 50,000-row ones (``bench/storage.py``). Under load the receiving loop
decodes one request after another, and between one's submit and the next one's start nobody is
announced: having waited for an announced request, the writer lingers ``linger_s`` (5 ms) for
the next one. Measured (bench/ingest.py, 8 clients): 512-span requests went from ~2,000 to
~3,800 spans per insert, near the 4,096 the clients can have in flight.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchSettings:
    eager_rows: int = 20_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: float = 0.5
    linger_s: float = 0.005


@dataclass(frozen=True)
class Queue:
    """What the writer's queue holds right now."""

    spans: int
    nbytes: int
    oldest_enqueued: float  # monotonic time the oldest pending request was queued
    incoming: int  # requests announced and not yet submitted
    closing: bool = False


@dataclass(frozen=True)
class Progress:
    """What this flush has waited for so far."""

    waited: bool = False  # it waited for an announced request
    linger_until: float = 0.0  # when lingering for a next request ends (0: not lingering)


@dataclass(frozen=True)
class Flush:
    reason: str  # "closing" | "full" | "age" | "alone" | "linger"


@dataclass(frozen=True)
class Wait:
    until: float  # monotonic time to look again at the latest (sooner if the queue changes)
    progress: Progress


def next_flush(q: Queue, progress: Progress, now: float, s: BatchSettings) -> Flush | Wait:
    """Flush the pending requests now, or wait; call again when woken or ``until`` has come."""
    if q.closing:
        return Flush("closing")
    if q.spans >= s.eager_rows or q.nbytes >= s.max_bytes:
        return Flush("full")
    deadline = q.oldest_enqueued + s.max_age_s
    if now >= deadline:
        return Flush("age")
    if q.incoming > 0:
        return Wait(deadline, Progress(waited=True))
    if not progress.waited:
        return Flush("alone")  # nobody is coming: holding this batch only slows its exporter down
    linger_until = progress.linger_until or now + s.linger_s
    if now >= linger_until:
        return Flush("linger")
    return Wait(min(deadline, linger_until), Progress(True, linger_until))

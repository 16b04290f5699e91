"""The writer's flush policy, a pure function of the queue, what it waited for, and the time."""

from __future__ import annotations

from tokenpulse.storage.batching import BatchSettings, Flush, Progress, Queue, Wait, next_flush

S = BatchSettings(eager_rows=1000, max_bytes=10_000, max_age_s=0.5, linger_s=0.005)


def test_flushes_when_full_old_or_closing():
    assert next_flush(Queue(1000, 10, 0.0, incoming=3), Progress(), 0.1, S) == Flush("full")
    assert next_flush(Queue(10, 10_000, 0.0, incoming=3), Progress(), 0.1, S) == Flush("full")
    assert next_flush(Queue(10, 10, 0.0, incoming=3), Progress(), 0.5, S) == Flush("age")
    assert next_flush(Queue(10, 10, 0.0, incoming=3, closing=True), Progress(), 0.1, S) == Flush("closing")


def test_a_lone_request_is_written_at_once():
    assert next_flush(Queue(10, 10, 0.0, incoming=0), Progress(), 0.01, S) == Flush("alone")


def test_waits_for_announced_requests_then_lingers_briefly_for_the_next():
    waiting = next_flush(Queue(10, 10, 0.0, incoming=2), Progress(), 0.01, S)
    assert waiting == Wait(0.5, Progress(waited=True))  # until the age limit, or woken sooner
    lingering = next_flush(Queue(500, 10, 0.0, incoming=0), waiting.progress, 0.02, S)
    assert isinstance(lingering, Wait) and abs(lingering.until - 0.025) < 1e-9
    assert next_flush(Queue(500, 10, 0.0, incoming=0), lingering.progress, 0.026, S) == Flush("linger")
    # a request announced while lingering: wait for it again
    assert next_flush(Queue(500, 10, 0.0, incoming=1), lingering.progress, 0.021, S) == Wait(0.5, Progress(True))
    near_age = next_flush(Queue(500, 10, 0.0, incoming=0), Progress(True), 0.498, S)
    assert near_age.until == 0.5  # lingering never outlasts the age limit

"""The one retry policy and Retry-After parser the writer, forwarder and notifiers share."""

from __future__ import annotations

import email.utils

from tokenpulse.retry import Backoff, parse_retry_after


def test_retry_after_follows_rfc_9110():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 3 ") == 3.0
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)  # "Fri, 15 Jan 2027 08:00:30 GMT"
    assert parse_retry_after(date, now=lambda: now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=lambda: now) == 0.0  # past: now
    for bad in (None, "", "soon", "-5", "1.5", "Fri, 15 Jan 2027 08:00:30"):  # no zone: not an HTTP-date
        assert parse_retry_after(bad, now=lambda: now) is None, bad


def test_backoff_doubles_to_its_cap_with_jitter_and_honours_the_deadline():
    clock = [0.0]
    b = Backoff(initial_s=1.0, max_s=8.0, max_elapsed_s=30.0, jitter="equal", clock=lambda: clock[0],
                rand=lambda lo, hi: hi)  # the top of each jitter range
    assert [b.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    low = Backoff(initial_s=1.0, max_s=8.0, rand=lambda lo, hi: lo)
    assert [low.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]  # equal jitter: at least half
    full = Backoff(initial_s=1.0, max_s=8.0, jitter="full", rand=lambda lo, hi: lo)
    assert full.next_delay() == 0.0
    up = Backoff(initial_s=1.0, max_s=8.0, jitter="up", rand=lambda lo, hi: (lo, hi))
    assert up.next_delay() == (1.0, 1.5)  # never shorter than the doubling schedule
    assert b.next_delay(asked_s=3.0) == 3.0  # the other side's own delay wins
    clock[0] = 25.0
    assert b.next_delay() is None  # 25 + 8 > 30: give up rather than sleep past the deadline
    b.reset()
    assert b.next_delay() == 1.0

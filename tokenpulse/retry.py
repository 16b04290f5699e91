"""Retrying, one way for every part that retries: the writer's replay, the forwarder, the notifiers.

``Backoff``: exponential delays with jitter, capped, optionally ended by a deadline (the OTel
Collector's exporter helper: initial interval, multiplier 2, max interval, max elapsed time;
"full jitter" or "equal jitter" as in the AWS Architecture Blog's "Exponential Backoff And
Jitter", which spreads retries of many clients that failed together).

``parse_retry_after``: the ``Retry-After`` header of RFC 9110 section 10.2.3, either
delay-seconds (a non-negative integer) or an HTTP-date; anything else is ignored (None), so a
caller falls back to its own back-off rather than guessing.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Backoff:
    initial_s: float = 0.5
    max_s: float = 10.0
    max_elapsed_s: float | None = None  # None: retry for as long as the caller wants
    jitter: str = "equal"  # "equal": a delay in [d/2, d]; "full": in [0, d]; "up": in [d, 1.5 d]
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[float, float], float] = random.uniform
    started: float | None = None  # when the first attempt began (default: the first next_delay call)
    attempts: int = field(default=0, init=False)

    def next_delay(self, asked_s: float | None = None) -> float | None:
        """The delay before the next attempt, or None when the deadline would pass first.
        ``asked_s``: the other side's own delay (Retry-After, RetryInfo), used as given."""
        now = self.clock()
        if self.started is None:
            self.started = now
        ceiling = min(self.initial_s * 2 ** self.attempts, self.max_s)
        self.attempts += 1
        if asked_s is not None:
            delay = max(0.0, asked_s)
        elif self.jitter == "full":
            delay = self.rand(0.0, ceiling)
        elif self.jitter == "up":
            delay = self.rand(ceiling, ceiling * 1.5)
        else:
            delay = self.rand(ceiling / 2, ceiling)
        if self.max_elapsed_s is not None and now + delay - self.started > self.max_elapsed_s:
            return None
        return delay

    def reset(self) -> None:
        self.attempts = 0
        self.started = None


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After value (RFC 9110 10.2.3), or None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is not one
        return None
    return max(0.0, when.timestamp() - now())

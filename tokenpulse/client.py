"""A small client for agent services: ask tokenpulse whether a tenant is throttled before a run.

    from tokenpulse.client import ThrottleGuard, TenantThrottled

    guard = ThrottleGuard("http://tokenpulse:4318")     # the OTLP/HTTP port also serves decisions
    try:
        guard.check(tenant_id)                            # raises TenantThrottled while throttled
    except TenantThrottled as e:
        return http_429(e.message, retry_after=e.retry_after_s)   # the message is for the end customer

    guard.wait(tenant_id, max_wait_s=600)               # or queue: block until released

Decisions are cached for ``cache_s`` (2 s) per tenant, so a busy service asks
at most once per tenant every two seconds. When tokenpulse cannot be reached
the guard *fails open* (the run goes ahead; a warning is logged at most once a
minute) unless ``fail_open=False``, in which case it raises TenantThrottled.
Standard library only: nothing to install beside tokenpulse itself.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)


class TenantThrottled(Exception):
    """The tenant is throttled: ``message`` is written for the end customer."""

    def __init__(self, tenant: str, message: str, retry_after_s: float, reason: str = ""):
        super().__init__(message)
        self.tenant = tenant
        self.message = message
        self.retry_after_s = retry_after_s
        self.reason = reason


@dataclass(frozen=True)
class Decision:
    tenant: str
    throttled: bool
    message: str = ""
    retry_after_s: float = 0.0
    reason: str = ""
    reachable: bool = True


class ThrottleGuard:
    def __init__(self, url: str = "http://127.0.0.1:4318", cache_s: float = 2.0, timeout_s: float = 0.5,
                 fail_open: bool = True, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.url = url.rstrip("/")
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self.fail_open = fail_open
        self.clock = clock
        self.sleep = sleep
        self._cache: dict[str, tuple[float, Decision]] = {}
        self._lock = threading.Lock()
        self._warned_at = -1e18

    def decision(self, tenant: str) -> Decision:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(tenant)
            if hit is not None and now - hit[0] < self.cache_s:
                return hit[1]
        d = self._fetch(tenant)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[tenant] = (now, d)
        return d

    def _fetch(self, tenant: str) -> Decision:
        url = f"{self.url}/v1/throttle/{urllib.parse.quote(tenant, safe='')}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                doc = json.loads(resp.read())
            return Decision(tenant, bool(doc["throttled"]), doc.get("message", ""),
                            float(doc.get("retry_after_s", 0)), doc.get("reason", ""))
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            now = self.clock()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("tokenpulse throttle API unreachable at %s (%s); failing %s", self.url, e,
                            "open" if self.fail_open else "closed")
            if self.fail_open:
                return Decision(tenant, False, reachable=False)
            return Decision(tenant, True, "The service is busy; please retry shortly.", 30.0,
                            "tokenpulse unreachable", reachable=False)

    def check(self, tenant: str) -> None:
        d = self.decision(tenant)
        if d.throttled:
            raise TenantThrottled(tenant, d.message, d.retry_after_s, d.reason)

    def wait(self, tenant: str, max_wait_s: float | None = None, poll_s: float | None = None) -> None:
        """Block until ``tenant`` is not throttled (queueing mode); TenantThrottled after ``max_wait_s``."""
        start = self.clock()
        while True:
            d = self.decision(tenant)
            if not d.throttled:
                return
            waited = self.clock() - start
            if max_wait_s is not None and waited >= max_wait_s:
                raise TenantThrottled(tenant, d.message, d.retry_after_s, d.reason)
            pause = poll_s if poll_s is not None else min(max(self.cache_s, 1.0), d.retry_after_s or 1.0)
            if max_wait_s is not None:
                pause = min(pause, max_wait_s - waited)
            self.sleep(max(0.0, pause))

"""Prices changed while the service runs: the price file re-read, validated, and swapped in.

Triggers (what operators expect of a long-running daemon): ``SIGHUP``, ``POST /api/prices/reload``
(``tokenpulse prices reload``), and a check of the file's modification time every
``price_reload_interval_s``. A file that does not validate leaves the table in force untouched; the
log says why (file:line) and ``tokenpulse_price_reloads_total{outcome="failed"}`` counts it. Spans
are priced by the table in force when they are enriched; to re-price stored spans, see
``tokenpulse prices reprice``.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

from tokenpulse.enrich.price import PriceTable, load_overrides
from tokenpulse.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reload:
    ok: bool
    message: str
    overrides: int = 0  # entries in force after the reload


class PriceReloader:
    def __init__(self, path: str, install: Callable[[PriceTable], None],
                 on_result: Callable[[Reload], None] = lambda r: None):
        self.path = path
        self._install = install
        self._on_result = on_result
        self._lock = threading.Lock()
        self._mtime = self._stat()
        self.requested = threading.Event()  # set by SIGHUP; the worker reloads at its next look
        self.last: Reload | None = None

    def _stat(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime_ns if self.path else None
        except OSError:
            return None

    def reload(self, why: str) -> Reload:
        with self._lock:
            if not self.path:
                got = Reload(True, "no price_file is set: genai-prices' bundled prices are in force")
            else:
                self._mtime = self._stat()
                try:
                    overrides = load_overrides(self.path)
                except ConfigError as e:
                    got = Reload(False, f"kept the prices in force: {e}")
                    log.error("price reload (%s) failed; %s", why, got.message)
                else:
                    self._install(PriceTable(overrides))
                    got = Reload(True, f"loaded {len(overrides)} price overrides from {self.path}", len(overrides))
                    log.warning("price reload (%s): %s", why, got.message)
            self.last = got
        self._on_result(got)
        return got

    def run(self, stop: threading.Event, interval_s: float = 10.0) -> None:
        """The worker: reload on SIGHUP at once, and when the file changed (checked every interval)."""
        waited = 0.0
        while not stop.wait(0.5):
            waited += 0.5
            if self.requested.is_set():
                self.requested.clear()
                self.reload("SIGHUP")
                waited = 0.0
            elif interval_s > 0 and waited >= interval_s:
                waited = 0.0
                if self.path and self._stat() != self._mtime:
                    self.reload("the price file changed")

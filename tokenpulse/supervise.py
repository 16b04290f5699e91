"""Worker threads that cannot die quietly.

A background loop (the writer, the spool replay, the alert evaluator, the rollups) that raises
an unexpected exception is logged with its traceback, counted
(``tokenpulse_worker_restarts_total{worker}``) and started again after a back-off, as Erlang's
supervisors and the Collector's components do; ``/healthz`` shows each worker's restarts and
last error, and reports ``degraded`` for a minute after a crash. A worker's loop takes the stop
event and returns once it is set.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from tokenpulse.retry import Backoff

log = logging.getLogger(__name__)

RECENT_CRASH_S = 60.0


@dataclass
class WorkerState:
    restarts: int = 0
    last_error: str = ""
    crashed_at: float = 0.0  # monotonic; 0: never


class Supervisor:
    def __init__(self, on_restart: Callable[[str], None] = lambda name: None):
        self._on_restart = on_restart
        self._threads: dict[str, threading.Thread] = {}
        self.workers: dict[str, WorkerState] = {}

    def start(self, name: str, loop: Callable[[threading.Event], None], stop: threading.Event) -> None:
        state = self.workers[name] = WorkerState()

        def run():
            backoff = Backoff(initial_s=0.1, max_s=5.0)
            while not stop.is_set():
                try:
                    loop(stop)
                    return
                except Exception as e:
                    state.restarts += 1
                    state.last_error = f"{type(e).__name__}: {e}"
                    state.crashed_at = time.monotonic()
                    log.exception("worker %s crashed (restart %d); restarting it", name, state.restarts)
                    self._on_restart(name)
                    stop.wait(backoff.next_delay())

        t = self._threads[name] = threading.Thread(target=run, name=f"tokenpulse-{name}", daemon=True)
        t.start()

    def join(self, name: str, timeout: float) -> bool:
        """True once the worker has returned."""
        t = self._threads.get(name)
        if t is None:
            return True
        t.join(max(timeout, 0.0))
        return not t.is_alive()

    def alive(self, name: str) -> bool:
        t = self._threads.get(name)
        return t is not None and t.is_alive()

    def health(self) -> tuple[bool, dict]:
        """(no crash in the last minute, per worker: alive, restarts, last error)."""
        now = time.monotonic()
        ok = all(not s.crashed_at or now - s.crashed_at > RECENT_CRASH_S for s in self.workers.values())
        return ok, {name: {"alive": self.alive(name), "restarts": s.restarts, "last_error": s.last_error or None}
                    for name, s in self.workers.items()}

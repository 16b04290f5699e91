"""Scheduled rollups: whole hours of settled runs into small tables the slow panels read.

Materialized views see one insert block at a time, so they cannot resolve what needs the whole
run: a call's agent role (from the agent span that contains it, which ends and arrives after its
calls) or a tool's cost (the input growth of the next LLM call). The queries in
``tokenpulse/queries/rollups/*.sql`` do that for the calls in ``[from, to)``; this job runs them
for every whole hour that ended ``settle_s`` ago or more, oldest first, and records each chunk in
``rollup_state``. The panels read a rollup up to its watermark (``max(done_to)``) and compute the
hours after it live, so their answer does not change when a rollup catches up; the equivalence is
tested (tests/integration/test_rollups.py).

Re-running a chunk (a crash between its insert and its state row) is harmless: the tables are
``ReplacingMergeTree``s keyed by what a chunk computes, read with ``FINAL``. Spans that arrive
after their hour was rolled up (later than ``settle_s``) are not in the rollup; that is the price
of the setting, documented beside it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

from tokenpulse.errors import StorageError

log = logging.getLogger(__name__)

HOUR = 3600


@dataclass(frozen=True)
class Rollup:
    name: str
    sql: str


def load_rollups() -> list[Rollup]:
    out = []
    for entry in sorted(resources.files("tokenpulse.queries.rollups").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            out.append(Rollup(entry.name[:-4], entry.read_text()))
    return out


def _ts(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class RollupJob:
    def __init__(self, backend, settle_s: float = 900.0, max_chunks: int = 24, clock=time.time):
        self.backend = backend
        self.settle_s = settle_s
        self.max_chunks = max_chunks  # per run_once and rollup: a long backfill goes in steps
        self.clock = clock
        self.rollups = load_rollups()
        self.last_error: str | None = None

    def watermark(self, name: str) -> float | None:
        raw = self.backend.query("SELECT toUnixTimestamp64Milli(max(done_to)), count() FROM rollup_state "
                                 "WHERE name = {name:String}", "TSV", readonly=True, params={"name": name})
        done_ms, n = raw.decode().split()
        return int(done_ms) / 1000 if int(n) else None

    def _first_hour(self) -> float | None:
        raw = self.backend.query("SELECT toUnixTimestamp(toStartOfHour(min(start_time))), count() FROM spans",
                                 "TSV", readonly=True).decode().split()
        return float(raw[0]) if int(raw[1]) else None

    def run_once(self) -> dict[str, int]:
        """Roll up what is due; returns {rollup: chunks done}. Raises StorageError."""
        end = (self.clock() - self.settle_s) // HOUR * HOUR  # the last whole hour that has settled
        first = None
        done: dict[str, int] = {}
        for r in self.rollups:
            start = self.watermark(r.name)
            if start is None:
                first = first if first is not None else self._first_hour()
                if first is None:
                    break  # no spans yet
                start = first
            chunks = 0
            while start < end and chunks < self.max_chunks:
                to = start + HOUR
                t0 = time.monotonic()
                self.backend.query(r.sql, "TSV", readonly=False,
                                   params={"from": _ts(start), "to": _ts(to)})
                self.backend.query(
                    "INSERT INTO rollup_state (name, done_to, seconds, at) VALUES "
                    "({name:String}, {to:DateTime64(3, 'UTC')}, {s:Float64}, now64(3))", "TSV", readonly=False,
                    params={"name": r.name, "to": _ts(to), "s": time.monotonic() - t0})
                start, chunks = to, chunks + 1
            done[r.name] = chunks
        return done

    def run(self, stop: threading.Event, every_s: float = 60.0) -> None:
        """Thread body: run now, then every ``every_s`` (sooner while a backfill has chunks left)."""
        while True:
            busy = False
            try:
                done = self.run_once()
                busy = any(n >= self.max_chunks for n in done.values())
                if self.last_error is not None:
                    log.info("rollups run again")
                self.last_error = None
            except StorageError as e:  # storage down: panels compute live meanwhile
                if self.last_error is None:
                    log.warning("rollup job failed (panels compute live until it runs): %s", e)
                self.last_error = str(e)
            except Exception:
                log.exception("rollup job failed")
            if stop.wait(1.0 if busy else every_s):
                return

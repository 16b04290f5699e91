"""Embedded ClickHouse: chDB in this process, data in a local directory.

chDB allows one process per data directory (a second one fails to lock
``status``) and, within a process, one path (docs/sources.md#platform). So the service owns
the directory; other processes read through the admin API (``tokenpulse sql``).

Connections: the writer's; the service's readers (panels, alert rules, the spool's checks: a
few, so that the alert rules due at one tick run side by side); and the users' (``/api/sql``), so
a user's minute-long query never holds the service's reads. The two readers have ``readonly=1`` set
for the whole session (ClickHouse refuses ``SET readonly=0`` in readonly mode).
Each connection is used under its own lock: chDB resolves ``Python(name)``
objects per session, and concurrent use of one session mixed up batches on
this platform. After a failed query chDB hands the *next* query on that
connection the failed one's output (seen: a query over ``max_result_rows``, then
``SELECT 1`` answered with the first one's columns and no rows), so a
connection whose query failed is closed and opened anew.
"""

from __future__ import annotations

import fcntl
import os
import threading

import pyarrow as pa

from tokenpulse.errors import ConfigError, QueryBusy
from tokenpulse.storage.backend import INSERT_SETTINGS, READ_LIMITS, classify

READERS = 3  # the service's reader connections

# Directories this process's engine has open (its own lock must not count as another's).
_OPENED_HERE: set[str] = set()
_SETTINGS_SQL = ", ".join(f"{k} = {v}" for k, v in INSERT_SETTINGS.items())


class EmbeddedBackend:
    def __init__(self, data_dir: str):
        import chdb

        self.data_dir = os.path.abspath(data_dir)
        self.description = f"embedded chDB {chdb.__version__} at {self.data_dir}"
        os.makedirs(self.data_dir, exist_ok=True)
        if self.data_dir not in _OPENED_HERE and _locked_by_another_process(self.data_dir):
            raise ConfigError(
                f"data directory {self.data_dir} is in use by another tokenpulse process "
                "(embedded ClickHouse allows one process per directory); query it through "
                "that process's admin API, e.g. `tokenpulse sql`"
            )
        self._database = ""
        try:
            self._rw = chdb.connect(self.data_dir)
            self._readers = [self._reader() for _ in range(READERS)]
            self._user = self._reader()
        except Exception as e:  # chDB raises RuntimeError subclasses
            raise ConfigError(f"cannot open embedded ClickHouse at {self.data_dir}: {e}") from None
        _OPENED_HERE.add(self.data_dir)
        self._rw_lock = threading.Lock()
        self._reader_locks = [threading.Lock() for _ in range(READERS)]
        self._user_lock = threading.Lock()
        self._closed = False

    def _reader(self):
        import chdb

        conn = chdb.connect(self.data_dir)
        for name, value in READ_LIMITS.items():
            conn.query(f"SET {name} = {value}")
        conn.query("SET readonly = 1")
        if self._database:
            conn.query(f"USE {self._database}")
        return conn

    def _renew(self, attr: str, index: int = 0) -> None:
        """Replace a reader whose query failed (its next answer would be the failed one's; module doc)."""
        try:
            (self._readers[index] if attr == "_readers" else getattr(self, attr)).close()
        except Exception:
            pass
        try:
            conn = self._reader()
        except Exception as e:
            raise classify(e, "cannot reopen the embedded reader") from None
        if attr == "_readers":
            self._readers[index] = conn
        else:
            setattr(self, attr, conn)

    def command(self, sql: str) -> None:
        with self._rw_lock:
            try:
                self._rw.query(sql)
            except Exception as e:
                raise classify(e, "ClickHouse command failed") from None

    def query(self, sql: str, fmt: str = "JSONCompact", readonly: bool = True, params: dict | None = None) -> bytes:
        if not readonly:
            with self._rw_lock:
                return self._run(self._rw, sql, fmt, params, None)
        # the first reader free, else wait for the first one
        for i, lock in enumerate(self._reader_locks):
            if lock.acquire(blocking=False):
                break
        else:
            i, lock = 0, self._reader_locks[0]
            lock.acquire()
        try:
            return self._run(self._readers[i], sql, fmt, params, "_readers", i)
        finally:
            lock.release()

    def user_query(self, sql: str, fmt: str = "JSONCompact", wait_s: float = 5.0) -> bytes:
        if not self._user_lock.acquire(timeout=wait_s):
            raise QueryBusy(f"another user query has been running for over {wait_s:g} s; retry later")
        try:
            return self._run(self._user, sql, fmt, None, "_user")
        finally:
            self._user_lock.release()

    def _run(self, conn, sql: str, fmt: str, params: dict | None, renew: str | None, index: int = 0) -> bytes:
        try:
            res = conn.query(sql, fmt, params=params) if params else conn.query(sql, fmt)
        except Exception as e:
            err = classify(e, "ClickHouse query failed")
            if renew:
                self._renew(renew, index)
            raise err from None
        return res.bytes() if hasattr(res, "bytes") else bytes(res)

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        columns = ", ".join(data.column_names)
        tp_insert_data = data  # noqa: F841 -- chDB's Python() table function finds it by name
        with self._rw_lock:
            try:
                self._rw.query(
                    f"INSERT INTO {table} ({columns}) SETTINGS {_SETTINGS_SQL} "
                    f"SELECT * FROM Python(tp_insert_data)"
                )
            except Exception as e:
                raise classify(e, f"insert into {table} failed") from None

    def _all_locks(self):
        from contextlib import ExitStack

        stack = ExitStack()
        for lock in (self._rw_lock, *self._reader_locks, self._user_lock):
            stack.enter_context(lock)
        return stack

    def use_database(self, database: str) -> None:
        with self._all_locks():
            try:
                for conn in (self._rw, *self._readers, self._user):
                    conn.query(f"USE {database}")
            except Exception as e:
                raise classify(e, f"cannot use database {database}") from None
            self._database = database

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._all_locks():
            for conn in (self._user, *self._readers, self._rw):
                try:
                    conn.close()
                except Exception:
                    pass


def _locked_by_another_process(data_dir: str) -> bool:
    """True when another process holds the engine's lock on ``status``.

    The engine takes an exclusive flock on that file; when it fails it prints
    its reason and raises a generic "Error initializing EmbeddedServer", so we
    look first. (flock locks belong to open files, so a probe would also
    collide with this process's own engine: directories in ``_OPENED_HERE``
    are not probed.)
    """
    path = os.path.join(data_dir, "status")
    if not os.path.exists(path):
        return False
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False

"""Embedded ClickHouse: chDB in this process, data in a local directory.

chDB allows one process per data directory (a second one fails to lock
``status``) and, within a process, one path (platform.md). So the service owns
the directory; other processes read through the admin API (``tokenpulse sql``).

Two connections: the writer's, and a reader's with ``readonly=1`` set for the
whole session, so ``/api/sql`` cannot write, drop or change that setting
(ClickHouse refuses ``SET readonly=0`` in readonly mode). Each connection is
used under its own lock: chDB resolves ``Python(name)`` objects per session,
and concurrent use of one session mixed up batches on this platform.
"""

from __future__ import annotations

import fcntl
import os
import threading

import pyarrow as pa

from tokenpulse.errors import ConfigError
from tokenpulse.storage.backend import INSERT_SETTINGS, READ_LIMITS, classify

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
        try:
            self._rw = chdb.connect(self.data_dir)
            self._ro = chdb.connect(self.data_dir)
            for name, value in READ_LIMITS.items():
                self._ro.query(f"SET {name} = {value}")
            self._ro.query("SET readonly = 1")
        except Exception as e:  # chDB raises RuntimeError subclasses
            raise ConfigError(f"cannot open embedded ClickHouse at {self.data_dir}: {e}") from None
        _OPENED_HERE.add(self.data_dir)
        self._rw_lock = threading.Lock()
        self._ro_lock = threading.Lock()
        self._closed = False

    def command(self, sql: str) -> None:
        with self._rw_lock:
            try:
                self._rw.query(sql)
            except Exception as e:
                raise classify(e, "ClickHouse command failed") from None

    def query(self, sql: str, fmt: str = "JSONCompact", readonly: bool = True, params: dict | None = None) -> bytes:
        conn, lock = (self._ro, self._ro_lock) if readonly else (self._rw, self._rw_lock)
        with lock:
            try:
                res = conn.query(sql, fmt, params=params) if params else conn.query(sql, fmt)
            except Exception as e:
                raise classify(e, "ClickHouse query failed") from None
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

    def use_database(self, database: str) -> None:
        with self._rw_lock, self._ro_lock:
            try:
                self._rw.query(f"USE {database}")
                self._ro.query(f"USE {database}")
            except Exception as e:
                raise classify(e, f"cannot use database {database}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._rw_lock, self._ro_lock:
            for conn in (self._ro, self._rw):
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

"""The storage boundary: a ClickHouse engine that runs SQL and takes Arrow inserts.

Two implementations run the *same SQL*: ``EmbeddedBackend`` (chDB, in process,
a data directory) and ``ServerBackend`` (a ClickHouse server via
clickhouse-connect). Failures are classified here, where they happen: a
``DataError`` means the batch itself was refused and retrying it cannot help;
everything else is a ``RetryableStorageError`` (we would rather have a client
retry than drop a span on an error we did not foresee).
"""

from __future__ import annotations

import re
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from tokenpulse.errors import DataError, RetryableStorageError, StorageError

# ClickHouse error codes (src/Common/ErrorCodes.cpp) that mean "this data is
# wrong", not "the server is in trouble".
DATA_ERROR_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    43,   # ILLEGAL_TYPE_OF_ARGUMENT
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
})

_CODE_RE = re.compile(r"Code:\s*(\d+)")


def error_code(message: str) -> int | None:
    m = _CODE_RE.search(message)
    return int(m.group(1)) if m else None


def classify(exc: BaseException, what: str) -> StorageError:
    """Map an engine/driver exception to DataError or RetryableStorageError."""
    message = f"{what}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        code = error_code(str(exc))
    if code in DATA_ERROR_CODES:
        return DataError(message, code)
    return RetryableStorageError(message, code)


def with_password(url: str, password_file: str) -> str:
    """The URL with the password read from ``password_file`` (first line), for its user."""
    from tokenpulse.errors import ConfigError

    try:
        with open(password_file, encoding="utf-8") as fh:
            password = fh.readline().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"cannot read clickhouse_password_file {password_file}: {e.strerror}") from None
    from urllib.parse import quote

    parts = urlsplit(url)
    user = quote(parts.username or "default", safe="")
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:{quote(password, safe='')}@{host}", parts.path, parts.query, ""))


def redact_url(url: str) -> str:
    """A ClickHouse URL safe to log: no user or password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Backend(Protocol):
    """A ClickHouse engine. Thread-safe: the writer inserts while the admin API reads."""

    description: str

    def command(self, sql: str) -> None:
        """Run DDL or another statement with no result. Raises StorageError."""

    def query(self, sql: str, fmt: str = "JSONCompact", readonly: bool = True, params: dict | None = None) -> bytes:
        """Run a query and return its output in a ClickHouse format. Raises StorageError.

        ``params`` bind ClickHouse query parameters (``{name:Type}`` in the SQL) server-side."""

    def user_query(self, sql: str, fmt: str = "JSONCompact", wait_s: float = 5.0) -> bytes:
        """A user's read-only query (``/api/sql``), on a connection of its own: never the one the
        service's reads or the writer use, one at a time, ``QueryBusy`` after ``wait_s`` in line.
        The caller has checked it with ``queries.user_sql.check``. Raises StorageError."""

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Insert an Arrow table (columns in table order). Raises StorageError."""

    def use_database(self, database: str) -> None:
        """Resolve unqualified table names (``FROM spans``) in this database."""

    def close(self) -> None: ...


# Settings for every span insert. A batch can span many days (late or
# backfilled spans); the default cap of 100 partitions per insert would turn
# that into a refused batch. The materialized views run side by side
# (parallel_view_processing): an insert into ``spans`` and its nine views took
# ~190 ms of wall time one after another and ~125 ms side by side for 10,000 rows
# on this 2-core machine, at the same CPU (docs/performance.md). An exporter
# waits for that insert before it sends again.
INSERT_SETTINGS = {"max_partitions_per_insert_block": 0, "optimize_on_insert": 0, "parallel_view_processing": 1}


# Limits on every read-only query (/api/sql, panels, alert rules): a user query cannot take the
# service down. Set before readonly=1 on the embedded reader, per query on a server.
READ_LIMITS = {"max_execution_time": 60, "max_result_rows": 1_000_000, "result_overflow_mode": "'throw'",
               "max_memory_usage": 4 * 1024**3}

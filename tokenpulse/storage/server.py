"""A ClickHouse server through clickhouse-connect (HTTP interface).

Same SQL as the embedded backend; inserts go as Arrow (``insert_arrow``), the
same table the embedded backend inserts. Read-only queries pass
``readonly=1`` as a query setting, which the server then refuses to change.
Users' queries (``/api/sql``) go through a client of their own, one at a time,
so they never wait for, or hold up, the service's reads and inserts.
"""

from __future__ import annotations

import threading

import pyarrow as pa

from tokenpulse.errors import ConfigError, QueryBusy, RetryableStorageError
from tokenpulse.storage.backend import INSERT_SETTINGS, READ_LIMITS, classify, redact_url
from tokenpulse.storage.cluster import INSERT_SETTINGS as CLUSTER_INSERT_SETTINGS
from tokenpulse.storage.cluster import QUERY_SETTINGS as CLUSTER_QUERY_SETTINGS


class ServerBackend:
    def __init__(self, url: str, cluster: str = ""):
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import OperationalError

        self._operational = OperationalError
        self.description = f"ClickHouse server at {redact_url(url)}"
        try:
            self._client = clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
            self._user_client = clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
            # Inserts have a client of their own: the writer never waits behind a panel or a rule's query.
            self._insert_client = clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
        except OperationalError as e:
            raise RetryableStorageError(f"cannot reach {redact_url(url)}: {type(e).__name__}") from None
        except Exception as e:
            raise ConfigError(f"cannot use ClickHouse URL {redact_url(url)}: {e}") from None
        # clickhouse-connect clients are not safe for concurrent queries: one lock per client.
        self._lock = threading.Lock()
        self._user_lock = threading.Lock()
        self._insert_lock = threading.Lock()
        self._query_settings = dict(CLUSTER_QUERY_SETTINGS) if cluster else {}
        self._insert_settings = {**INSERT_SETTINGS, **(CLUSTER_INSERT_SETTINGS if cluster else {})}

    def command(self, sql: str) -> None:
        with self._lock:
            try:
                self._client.command(sql)
            except Exception as e:
                raise classify(e, "ClickHouse command failed") from None

    def query(self, sql: str, fmt: str = "JSONCompact", readonly: bool = True, params: dict | None = None) -> bytes:
        limits = {k: v.strip("'") if isinstance(v, str) else v for k, v in READ_LIMITS.items()}
        settings = {**self._query_settings, **({**limits, "readonly": 1} if readonly else {})}
        with self._lock:
            try:
                return self._client.raw_query(sql, parameters=params or None, fmt=fmt, settings=settings)
            except Exception as e:
                raise classify(e, "ClickHouse query failed") from None

    def user_query(self, sql: str, fmt: str = "JSONCompact", wait_s: float = 5.0) -> bytes:
        limits = {k: v.strip("'") if isinstance(v, str) else v for k, v in READ_LIMITS.items()}
        if not self._user_lock.acquire(timeout=wait_s):
            raise QueryBusy(f"another user query has been running for over {wait_s:g} s; retry later")
        try:
            return self._user_client.raw_query(sql, fmt=fmt, settings={**self._query_settings, **limits,
                                                                         "readonly": 1})
        except Exception as e:
            raise classify(e, "ClickHouse query failed") from None
        finally:
            self._user_lock.release()

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        with self._insert_lock:
            try:
                self._insert_client.insert_arrow(table, data, settings=self._insert_settings)
            except Exception as e:
                raise classify(e, f"insert into {table} failed") from None

    def use_database(self, database: str) -> None:
        for client in (self._client, self._user_client, self._insert_client):
            client.database = database

    def close(self) -> None:
        with self._lock, self._user_lock, self._insert_lock:
            for client in (self._client, self._user_client, self._insert_client):
                try:
                    client.close()
                except Exception:
                    pass

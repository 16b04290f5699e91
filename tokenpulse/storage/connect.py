"""Open the configured ClickHouse: embedded chDB by default, a server when a URL is given."""

from __future__ import annotations

from tokenpulse.storage.backend import Backend


def open_backend(data_dir: str, clickhouse_url: str | None, cluster: str = "") -> Backend:
    if clickhouse_url:
        from tokenpulse.storage.server import ServerBackend

        return ServerBackend(clickhouse_url, cluster)
    from tokenpulse.storage.embedded import EmbeddedBackend

    return EmbeddedBackend(data_dir)

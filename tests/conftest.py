"""Shared fixtures.

chDB allows one data directory per process (docs/sources.md#platform), so every in-process
service in this test run shares one embedded backend at one path, and each
test gets a database of its own. Tests that need a directory of their own run
``tokenpulse serve`` as a subprocess.

With TOKENPULSE_TEST_CLICKHOUSE_URL set, the storage tests also run against
that ClickHouse server (same SQL); otherwise those variants are skipped.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests

from tokenpulse.config import load_settings
from tokenpulse.service import Service

SERVER_URL = os.environ.get("TOKENPULSE_TEST_CLICKHOUSE_URL", "")
_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def embedded_backend(tmp_path_factory):
    from tokenpulse.storage.embedded import EmbeddedBackend

    backend = EmbeddedBackend(str(tmp_path_factory.mktemp("chdb")))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def server_backend():
    if not SERVER_URL:
        pytest.skip("TOKENPULSE_TEST_CLICKHOUSE_URL not set (the URL of a ClickHouse server to run this "
                    "variant against); the embedded chDB variant ran")
    from tokenpulse.storage.server import ServerBackend

    backend = ServerBackend(SERVER_URL)
    yield backend
    backend.close()


@pytest.fixture(params=["embedded", "server"])
def backend(request):
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture
def database(backend):
    name = f"t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    yield name
    try:
        backend.command(f"DROP DATABASE IF EXISTS {name}")
    except Exception:
        pass


@pytest.fixture
def make_service(backend, database, tmp_path_factory):
    """Start in-process services on free 127.0.0.1 ports; stopped at teardown."""
    started: list[Service] = []

    def make(sink_wrapper=None, **overrides) -> Service:
        settings = load_settings({
            "listen_host": "127.0.0.1", "admin_host": "127.0.0.1",
            "grpc_port": 0, "http_port": 0, "admin_port": 0,
            "spool_dir": str(tmp_path_factory.mktemp("spool")),
            "database": database, "shutdown_timeout_s": 10, "user_id_key": "test-key-0123456789abcdef",
            **overrides,
        }, env={})
        sink = None
        if sink_wrapper is not None:
            from tokenpulse.storage.sink import SpanTable

            sink = sink_wrapper(SpanTable(backend, database))
        svc = Service(settings, backend=backend, sink=sink)
        svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.shutdown()
    backend.use_database("default")


def sql(service: Service, query: str) -> list[list]:
    """Query through the service's admin API, as a user would."""
    r = requests.post(f"http://127.0.0.1:{service.admin.port}/api/sql", data=query, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def scalar(service: Service, query: str):
    return sql(service, query)[0][0]


class ServeProcess:
    """``tokenpulse serve`` in a subprocess, on free ports, with its own data directory."""

    def __init__(self, data_dir, *extra: str, env: dict | None = None):
        self.data_dir = str(data_dir)
        self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.extra = extra
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 60) -> "ServeProcess":
        self.log = open(os.path.join(self.data_dir + ".log"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokenpulse.cli", "serve", "--listen-host", "127.0.0.1",
             "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
             "--admin-port", str(self.admin_port), "--data-dir", self.data_dir, *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tokenpulse serve exited with {self.proc.returncode}: {self.read_log()}")
            try:
                if requests.get(self.admin_url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("tokenpulse serve did not become healthy: " + self.read_log())

    def read_log(self) -> str:
        with open(self.data_dir + ".log", "rb") as fh:
            return fh.read().decode(errors="replace")[-4000:]

    def sql(self, query: str) -> list[list]:
        r = requests.post(self.admin_url + "/api/sql", data=query, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def stop(self, sig=15, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()


@pytest.fixture
def serve_process(tmp_path):
    procs: list[ServeProcess] = []

    def make(*extra: str, data_dir=None, env=None) -> ServeProcess:
        p = ServeProcess(data_dir or tmp_path / f"data{len(procs)}", *extra, env=env)
        procs.append(p)
        return p.start()

    yield make
    for p in procs:
        if p.proc and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()

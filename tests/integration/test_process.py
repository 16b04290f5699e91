"""The real `tokenpulse serve` process: graceful shutdown under load, restart,
`tokenpulse sql`, and start-up errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.otlp import n_spans


def _cli(*args: str, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokenpulse.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_sigterm_drains_everything_accepted(serve_process, tmp_path):
    proc = serve_process("--batch-max-age-s", "0.3")
    acked = {"n": 0}
    sent = {"n": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def load(worker: int):
        url = f"http://127.0.0.1:{proc.http_port}/v1/traces"
        while not stop.is_set():
            body = n_spans(200, "drain").SerializeToString()
            with lock:
                sent["n"] += 200
            try:
                r = requests.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=30)
            except requests.RequestException:
                return  # the server stopped listening
            if r.status_code == 200:
                with lock:
                    acked["n"] += 200
            elif r.status_code in (429, 503):
                time.sleep(0.05)
            else:
                raise AssertionError(r.status_code)

    workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    time.sleep(2.0)
    assert proc.stop(15, timeout=60) == 0, proc.read_log()
    stop.set()
    for w in workers:
        w.join(30)
    assert acked["n"] > 0
    assert "tokenpulse stopped: drained" in proc.read_log()

    again = serve_process(data_dir=proc.data_dir)
    count, unique = (int(x) for x in again.sql("SELECT count(), uniqExact(span_id) FROM spans WHERE service='drain'")[0])
    assert count == unique
    assert acked["n"] <= count <= sent["n"], (acked, count, sent)


def test_tokenpulse_sql_formats_and_read_only(serve_process):
    proc = serve_process()
    r = requests.post(f"http://127.0.0.1:{proc.http_port}/v1/traces",
                      data=n_spans(3, "cli", attrs={"gen_ai.request.model": "gpt-4o"}).SerializeToString(),
                      headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert r.status_code == 200
    q = "SELECT service, count() AS spans FROM spans GROUP BY service"
    out = _cli("sql", q, "--admin-url", proc.admin_url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["service", "spans"] and lines[2].split() == ["cli", "3"] and lines[-1] == "(1 row)"
    out = _cli("sql", q, "--admin-url", proc.admin_url, "--format", "json")
    assert json.loads(out.stdout) == [{"service": "cli", "spans": 3}]
    out = _cli("sql", q, "--admin-url", proc.admin_url, "--format", "csv")
    assert out.stdout.splitlines() == ["service,spans", "cli,3"]

    for write in ("DROP TABLE spans", "INSERT INTO spans (trace_id) VALUES ('x')", "SET readonly = 0"):
        out = _cli("sql", write, "--admin-url", proc.admin_url)
        assert out.returncode == 1 and "refused: only read-only statements" in out.stderr.lower(), out.stderr
    assert proc.sql("SELECT count() FROM spans")[0][0] in (3, "3")

    out = _cli("sql", "SELEC nonsense", "--admin-url", proc.admin_url)
    assert out.returncode == 1 and "error" in out.stderr.lower()

    # The statement's own FORMAT is honoured, never parsed as JSON (column names were printed as data)
    expected = {"CSVWithNames": '"service","spans"\n"cli",3', "TSV": "cli\t3", "JSONEachRow": '{"service":"cli","spans":3}'}
    for fmt, text in expected.items():
        out = _cli("sql", f"{q} FORMAT {fmt}", "--admin-url", proc.admin_url)
        assert out.returncode == 0 and out.stdout.strip() == text and "Traceback" not in out.stderr, (fmt, out)
    out = _cli("sql", f"{q} FORMAT Pretty", "--admin-url", proc.admin_url)
    assert out.returncode == 0 and "service" in out.stdout and "cli" in out.stdout
    r = requests.post(f"{proc.admin_url}/api/sql", params={"format": "csv"}, data=f"{q} FORMAT JSONEachRow", timeout=10)
    assert r.headers["Content-Type"].startswith("application/x-ndjson") and r.json() == {"service": "cli", "spans": 3}
    r = requests.post(f"{proc.admin_url}/api/sql", params={"format": "csv"}, data=q, timeout=10)
    assert r.headers["Content-Type"].startswith("text/csv") and r.text.splitlines() == ['"service","spans"', '"cli",3']


def test_sql_without_a_running_service_says_so():
    out = _cli("sql", "SELECT 1", "--admin-url", "http://127.0.0.1:9")
    assert out.returncode == 1 and "is `tokenpulse serve` running?" in out.stderr


def test_invalid_settings_fail_at_start_with_a_clear_message(tmp_path):
    out = _cli("serve", "--grpc-port", "seventeen", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and "grpc_port from flag --grpc-port" in out.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("grpc_port: 4317\nbogus_setting: 1\n")
    out = _cli("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and "unknown setting 'bogus_setting'" in out.stderr
    env = {**os.environ, "TOKENPULSE_RETENTION_DAYS": "0"}
    out = subprocess.run([sys.executable, "-m", "tokenpulse.cli", "serve", "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "TOKENPULSE_RETENTION_DAYS" in out.stderr


def test_second_process_on_same_data_dir_is_refused_clearly(serve_process):
    proc = serve_process()
    out = _cli("serve", "--data-dir", proc.data_dir, "--grpc-port", "0", "--http-port", "0", "--admin-port", "0")
    assert out.returncode == 2
    assert "in use by another tokenpulse process" in out.stderr


def test_pseudonymize_without_key_refused_for_a_server_and_generated_once_for_embedded(serve_process, tmp_path):
    out = _cli("serve", "--clickhouse-url", "http://127.0.0.1:9", "--grpc-port", "0", "--http-port", "0",
               "--admin-port", "0")
    assert out.returncode == 2 and "no user_id_key is set" in out.stderr

    proc = serve_process()
    key_file = os.path.join(proc.data_dir, "user-id.key")
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    key = open(key_file).read()
    assert len(key) == 64
    proc.stop()
    serve_process(data_dir=proc.data_dir)  # a restart keeps the key, so pseudonyms stay stable
    assert open(key_file).read() == key


def _serve_on(tmp_path, name: str, *extra: str, data_dir=None, timeout=120, **ports) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "tokenpulse.cli", "serve", "--listen-host", "127.0.0.1", "--data-dir",
            str(data_dir or tmp_path / name), *extra]
    for flag in ("grpc_port", "http_port", "admin_port"):
        args += [f"--{flag.replace('_', '-')}", str(ports.get(flag, 0))]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def _one_line_exit_2(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("tokenpulse:")]
    assert len(lines) == 1 and all(w in lines[0] for w in words), out.stderr[-2000:]


def test_a_missing_api_keys_file_ends_the_start_in_one_line(tmp_path):
    """It printed a traceback and kept running with no admin port, ignoring SIGTERM."""
    out = _serve_on(tmp_path, "keys", "--api-keys-file", str(tmp_path / "nonexistent.yaml"), timeout=60)
    _one_line_exit_2(out, "api_keys_file", "nonexistent.yaml")


def test_a_certificate_given_as_the_tls_key_ends_the_start_in_one_line(tmp_path):
    from tests.certs import self_signed

    cert, _key = self_signed(tmp_path)
    out = _serve_on(tmp_path, "tls", "--tls-cert-file", str(cert), "--tls-key-file", str(cert), timeout=60)
    _one_line_exit_2(out, "TLS")


def test_a_read_only_data_directory_ends_the_start_in_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a read-only mount needs root (CI runs as root); chmod does not stop root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        out = _serve_on(tmp_path, "ro", data_dir=ro / "data", timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    _one_line_exit_2(out, "data_dir", "Read-only")


@pytest.mark.parametrize("flag", ["http_port", "grpc_port", "admin_port"])
def test_a_port_in_use_fails_at_start_in_one_line_naming_the_flag(tmp_path, flag):
    """A busy port (here held by a plain socket) ends the start with exit 2 and one line; before, a
    busy HTTP port gave a traceback and a segmentation fault at exit, and gRPC shared the port."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = _serve_on(tmp_path, flag, **{flag: port})
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    line = [ln for ln in out.stderr.splitlines() if "configuration error" in ln]
    assert len(line) == 1 and f"--{flag.replace('_', '-')}" in line[0] and str(port) in line[0], out.stderr


def test_a_second_serve_cannot_share_the_grpc_port(serve_process, tmp_path):
    first = serve_process()
    out = _serve_on(tmp_path, "second", grpc_port=first.grpc_port)
    assert out.returncode == 2 and "--grpc-port" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_sigterm_while_storage_is_down_leaves_the_spool_for_the_next_start(serve_process, tmp_path):
    """Shutdown order: receivers stop, the writer drains to the spool (storage is down), the log's
    last line says what stays and where, exit 0; the next start replays it."""
    down = tmp_path / "storage-down"
    down.touch()
    env = {"TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE": str(down)}
    proc = serve_process("--batch-max-age-s", "0.05", "--shutdown-timeout-s", "10", data_dir=tmp_path / "d", env=env)
    for _ in range(5):
        r = requests.post(f"http://127.0.0.1:{proc.http_port}/v1/traces", data=n_spans(20, "at-stop").SerializeToString(),
                          headers={"Content-Type": "application/x-protobuf"}, timeout=10)
        assert r.status_code == 200  # spooled
    started = time.monotonic()
    assert proc.stop(15, timeout=30) == 0, proc.read_log()
    assert time.monotonic() - started < 15
    log = proc.read_log()
    assert "tokenpulse stopped: drained" in log and "stay in the spool" in log, log[-1500:]
    down.unlink()
    again = serve_process(data_dir=tmp_path / "d", env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and again.sql("SELECT count() FROM spans WHERE service = 'at-stop'") != [[100]]:
        time.sleep(0.3)
    assert again.sql("SELECT count() FROM spans WHERE service = 'at-stop'") == [[100]]


def _outside_address() -> str | None:
    """This machine's address on its default route (not loopback), if it has one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_the_otlp_ports_bind_localhost_by_default(tmp_path):
    """As the Collector's receivers since v0.104: not every interface unless asked (0.0.0.0 for containers)."""
    import socket

    from tests.conftest import free_port

    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback address to try")
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tokenpulse.cli", "serve", "--data-dir", str(tmp_path / "d"),
                             "--grpc-port", str(grpc_port), "--http-port", str(http_port),
                             "--admin-port", str(admin_port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        for port in (grpc_port, http_port):
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass  # loopback: served
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=5).close()
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.mark.parametrize("args, words", [
    (("--alert-rules-dir", "/nonexistent/rules"), ("/nonexistent/rules", "cannot read the rules directory")),
    (("--alert-rules", '{"tenant_outlier": {"factr": 5}}'), ("alert_rules.tenant_outlier", "factr")),
    (("--alert-rules", '{"tenant_outlyer": {"factor": 5}}'), ("unknown rule", "tenant_outlyer")),
])
def test_an_alert_setting_that_is_wrong_ends_the_start_in_one_line(tmp_path, args, words):
    """A missing rules directory disabled every rule, built-ins too, with /healthz ok; a typo in an
    override removed that rule and its throttle action. Both now stop the start (exit 2)."""
    out = _serve_on(tmp_path, "rules", *args, timeout=60)
    _one_line_exit_2(out, *words)

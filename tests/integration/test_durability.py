"""No accepted span lost: the spool through a storage outage, a full spool, and kill -9.

In process, storage fails through the FaultySink wrapper; in a real `tokenpulse
serve` subprocess, through its failpoint (TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE:
inserts fail while that file exists). Exporters and counts are real.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import requests

from tests.conftest import scalar, sql
from tests.integration.test_backpressure import FaultySink, post
from tests.otlp import n_spans, request, span


def _wait(predicate, timeout: float = 30.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def test_outage_is_absorbed_by_the_spool_and_replayed_exactly_once(make_service):
    holder = {}

    def wrap(inner):
        holder["sink"] = FaultySink(inner)
        return holder["sink"]

    svc = make_service(sink_wrapper=wrap, batch_max_age_s=0.05)
    sink = holder["sink"]
    sink.fail_until = time.monotonic() + 3600  # ClickHouse is down
    chat = {"gen_ai.operation.name": "chat", "gen_ai.response.model": "gpt-4o", "gen_ai.usage.input_tokens": 100,
            "gen_ai.usage.output_tokens": 10}
    bodies = [n_spans(20, "spooled", attrs=chat).SerializeToString() for _ in range(10)]
    for body in bodies:
        assert post(svc, body).status_code == 200  # acknowledged: fsync'd in the spool
    assert sink.failures >= 1
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'spooled'")) == 0
    health = requests.get(f"http://127.0.0.1:{svc.admin.port}/healthz", timeout=5)
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    assert health.json()["spool"]["batches"] >= 1
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert "tokenpulse_spans_spooled_total 200.0" in metrics
    assert post(svc, bodies[0]).status_code == 200  # an exporter retry of an acknowledged request

    sink.fail_until = 0  # ClickHouse is back: the replay drains the spool in order
    assert _wait(lambda: int(scalar(svc, "SELECT count() FROM spans WHERE service = 'spooled'")) == 200)
    assert _wait(lambda: requests.get(f"http://127.0.0.1:{svc.admin.port}/healthz", timeout=5).status_code == 200)
    assert sql(svc, "SELECT count(), uniqExact(span_id) FROM spans WHERE service = 'spooled'") == [[200, 200]]
    # exactly once in the sums too: the retried request was not counted again
    assert sql(svc, "SELECT sum(calls), sum(input_tokens) FROM usage_minute WHERE service = 'spooled'") == \
        [[200, 20000]]
    assert svc.spool.empty()
    assert post(svc, n_spans(5, "after").SerializeToString()).status_code == 200  # straight to storage again
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'after'")) == 5


def test_full_spool_answers_retry_and_keeps_what_it_has(make_service):
    holder = {}

    def wrap(inner):
        holder["sink"] = FaultySink(inner)
        return holder["sink"]

    svc = make_service(sink_wrapper=wrap, spool_max_bytes=40_000, batch_max_age_s=0.0, retry_after_s=1)
    holder["sink"].fail_until = time.monotonic() + 3600
    answers = [post(svc, n_spans(20, "capped").SerializeToString()).status_code for _ in range(12)]
    assert answers[0] == 200 and 503 in answers  # some fit, then retry answers, never a loss
    accepted = answers.count(200)
    holder["sink"].fail_until = 0
    assert _wait(lambda: int(scalar(svc, "SELECT count() FROM spans WHERE service = 'capped'")) == 20 * accepted)
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert "tokenpulse_spool_refused_spans_total" in metrics


def _load(proc, stop: threading.Event, acked: set, prefix: str, refused: list | None = None):
    """Send requests of unique spans until stopped; remember the span ids acknowledged with 200
    (and, given ``refused``, the retry answers, after which it backs off briefly)."""
    session = requests.Session()
    n = 0
    while not stop.is_set():
        spans = [span(name=f"{prefix}-{n}-{i}", trace_id=os.urandom(16)) for i in range(50)]
        n += 1
        try:
            r = session.post(f"http://127.0.0.1:{proc.http_port}/v1/traces",
                             data=request(spans, service=prefix).SerializeToString(),
                             headers={"Content-Type": "application/x-protobuf"}, timeout=10)
        except requests.RequestException:
            return  # the server is gone
        if r.status_code == 200:
            acked.update(s.span_id.hex() for s in spans)
        elif refused is not None:
            assert r.status_code in (429, 503), r.text
            refused.append(r.status_code)
            time.sleep(0.05)


def _kill_mid_load(proc, prefix: str, seconds: float) -> set:
    acked: set = set()
    stop = threading.Event()
    threads = [threading.Thread(target=_load, args=(proc, stop, acked, prefix)) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    proc.proc.send_signal(signal.SIGKILL)  # mid-load, no warning
    proc.proc.wait(30)
    stop.set()
    for t in threads:
        t.join(30)
    return acked


def _stored_ids(proc, prefix: str) -> list[str]:
    return [r[0] for r in proc.sql(f"SELECT span_id FROM spans FINAL WHERE service = '{prefix}'")]


def test_kill_9_while_storage_is_down_loses_no_acknowledged_span(serve_process, tmp_path):
    down = tmp_path / "storage-down"
    down.touch()
    env = {"TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE": str(down)}
    data = tmp_path / "data-kill"
    first = serve_process("--batch-max-age-s", "0.05", data_dir=data, env=env)
    acked = _kill_mid_load(first, "killed-down", 3.0)
    assert len(acked) >= 500, "too little load to prove anything"
    down.unlink()  # storage is back; the restarted service replays its spool
    second = serve_process(data_dir=data, env=env)
    assert _wait(lambda: len(set(_stored_ids(second, "killed-down")) & acked) == len(acked), timeout=60), \
        f"{len(acked - set(_stored_ids(second, 'killed-down')))} acknowledged spans missing"
    # The spool's tail also holds requests written but never acknowledged (in flight at the kill):
    # they are replayed after the acknowledged ones, so count only once the spool is empty.
    assert _wait(lambda: _spool_batches(second) == 0, timeout=60)
    # exactly once, before merges too: raw rows = distinct spans (one query, one snapshot)
    [[raw, distinct]] = second.sql("SELECT count(), uniqExact(trace_id, span_id) FROM spans "
                                   "WHERE service = 'killed-down'")
    assert int(raw) == int(distinct) >= len(acked)


def _spool_batches(proc) -> int:
    return requests.get(f"{proc.admin_url}/healthz", timeout=5).json()["spool"]["batches"]


def test_kill_9_with_storage_up_loses_no_acknowledged_span(serve_process, tmp_path):
    data = tmp_path / "data-kill-up"
    first = serve_process(data_dir=data)
    acked = _kill_mid_load(first, "killed-up", 3.0)
    assert len(acked) >= 500
    second = serve_process(data_dir=data)
    stored = set(_stored_ids(second, "killed-up"))
    assert acked <= stored, f"{len(acked - stored)} acknowledged spans missing"


# ---------------------------------------------------------------- a full disk under the spool
import contextlib  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402


@contextlib.contextmanager
def small_tmpfs(path, size: str):
    """A real filesystem that fills up: tmpfs of ``size`` (needs root, as in CI); unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill_the_disk(proc, prefix: str, min_refused: int = 20) -> set:
    acked: set = set()
    refused: list = []
    stop = threading.Event()
    threads = [threading.Thread(target=_load, args=(proc, stop, acked, prefix, refused)) for _ in range(3)]
    for t in threads:
        t.start()
    assert _wait(lambda: len(refused) >= min_refused, timeout=90), "the disk never filled"
    time.sleep(1.0)  # keep pushing against the full disk: every append now fails midway or at once
    stop.set()
    for t in threads:
        t.join(30)
    return acked


def test_a_full_disk_under_the_spool_loses_no_acknowledged_span(serve_process, tmp_path):
    """The spool on a 1 MiB tmpfs, storage down: appends fail with ENOSPC, partly written. Every
    acknowledged span is stored once storage is back (while running, and after a kill -9)."""
    down = tmp_path / "storage-down"
    down.touch()
    env = {"TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE": str(down)}
    with small_tmpfs(tmp_path / "spoolfs", "1m") as spool_dir:
        data = tmp_path / "data-full"
        proc = serve_process("--batch-max-age-s", "0.05", "--spool-dir", str(spool_dir), data_dir=data, env=env)
        acked = _fill_the_disk(proc, "full-disk")
        assert len(acked) >= 1000, "too little acknowledged to prove anything"
        metrics = requests.get(f"{proc.admin_url}/metrics", timeout=5).text
        assert "tokenpulse_spool_append_errors_total" in metrics
        down.unlink()  # storage is back while the process runs: the replay gets past the full point
        assert _wait(lambda: set(_stored_ids(proc, "full-disk")) >= acked, timeout=90), \
            f"{len(acked - set(_stored_ids(proc, 'full-disk')))} acknowledged spans missing"
        assert _wait(lambda: _spool_batches(proc) == 0, timeout=60)
        after = post_ok(proc, "after-full")  # new acknowledged spans are stored again
        assert _wait(lambda: len(_stored_ids(proc, "after-full")) == after, timeout=30)

        down.touch()  # and again, ending with kill -9 while the disk is full
        acked2 = _fill_the_disk(proc, "full-killed")
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(30)
        down.unlink()
        second = serve_process("--spool-dir", str(spool_dir), data_dir=data, env=env)
        assert _wait(lambda: set(_stored_ids(second, "full-killed")) >= acked2, timeout=90), \
            f"{len(acked2 - set(_stored_ids(second, 'full-killed')))} acknowledged spans missing after kill -9"
        assert _wait(lambda: _spool_batches(second) == 0, timeout=60)
        assert not [f for f in os.listdir(spool_dir) if f.startswith("corrupt-")]
        [[raw, distinct]] = second.sql("SELECT count(), uniqExact(trace_id, span_id) FROM spans "
                                       "WHERE service IN ('full-disk', 'full-killed')")
        assert int(raw) == int(distinct)  # exactly once
        second.stop()


def post_ok(proc, prefix: str) -> int:
    spans = [span(name=f"{prefix}-{i}", trace_id=os.urandom(16)) for i in range(10)]
    r = requests.post(f"http://127.0.0.1:{proc.http_port}/v1/traces", data=request(spans, service=prefix)
                      .SerializeToString(), headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert r.status_code == 200, r.text
    return len(spans)


# ---------------------------------------------------------------- the replay, supervised and bounded
class ReplaySink:
    """The real spans table; fails while ``down``, and can fail on replay in chosen ways."""

    def __init__(self, inner):
        self.inner = inner
        self.down = False
        self.crash_next = 0  # unexpected errors (a bug) on the next writes
        self.refuse_rows = None  # a row count whose inserts fail retryably while storage answers pings
        self.lookups: list[int] = []  # trace ids per existing() query

    def encode(self, batch):
        return self.inner.encode(batch)

    def write(self, table):
        from tokenpulse.errors import RetryableStorageError

        if self.down:
            raise RetryableStorageError("injected: ClickHouse unreachable", 210)
        if self.crash_next:
            self.crash_next -= 1
            raise RuntimeError("injected bug in the replay path")
        if self.refuse_rows is not None and table.num_rows == self.refuse_rows:
            raise RetryableStorageError("injected: Code: 62. Max query size exceeded", 62)
        self.inner.write(table)

    def ping(self):
        if self.down:
            from tokenpulse.errors import RetryableStorageError

            raise RetryableStorageError("injected: ClickHouse unreachable", 210)
        self.inner.ping()

    def existing(self, table):
        if self.down:
            from tokenpulse.errors import RetryableStorageError

            raise RetryableStorageError("injected: ClickHouse unreachable", 210)
        return self.inner.existing(table)


def _replay_service(make_service, **kw):
    holder = {}

    def wrap(inner):
        holder["sink"] = ReplaySink(inner)
        return holder["sink"]

    svc = make_service(sink_wrapper=wrap, batch_max_age_s=0.05, **kw)
    return svc, holder["sink"]


def _health(svc) -> dict:
    return requests.get(f"http://127.0.0.1:{svc.admin.port}/healthz", timeout=5).json()


def test_a_replay_worker_that_raises_is_restarted_and_says_so(make_service):
    svc, sink = _replay_service(make_service)
    sink.down = True
    for _ in range(3):
        assert post(svc, n_spans(20, "crashy").SerializeToString()).status_code == 200  # spooled
    sink.crash_next = 1  # the first replay attempt hits a bug of ours
    sink.down = False
    assert _wait(lambda: int(scalar(svc, "SELECT count() FROM spans WHERE service = 'crashy'")) == 60)
    health = _health(svc)
    assert health["workers"]["spool-replay"]["restarts"] == 1
    assert "injected bug" in health["workers"]["spool-replay"]["last_error"]
    assert health["status"] == "degraded"  # for a minute after a crash
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert 'tokenpulse_worker_restarts_total{worker="spool-replay"} 1.0' in metrics
    assert post(svc, n_spans(5, "after-crash").SerializeToString()).status_code == 200  # direct again
    assert _wait(lambda: int(scalar(svc, "SELECT count() FROM spans WHERE service = 'after-crash'")) == 5)


def test_a_spooled_batch_of_10k_traces_replays(make_service):
    """One IN list of 10k trace ids exceeds ClickHouse's default max_query_size: lookups are chunked."""
    svc, sink = _replay_service(make_service, batch_eager_spans=50_000)
    sink.down = True
    spans = [span(name=f"wide-{i}", trace_id=os.urandom(16)) for i in range(10_000)]
    assert post(svc, request(spans, service="wide").SerializeToString()).status_code == 200
    assert svc.spool.records == 1
    sink.down = False
    assert _wait(lambda: int(scalar(svc, "SELECT count() FROM spans WHERE service = 'wide'")) == 10_000, timeout=60)
    assert _wait(lambda: svc.spool.empty())


def test_a_record_that_keeps_failing_while_storage_answers_is_dead_lettered(make_service):
    svc, sink = _replay_service(make_service, spool_replay_max_attempts=2)
    sink.down = True
    assert post(svc, n_spans(7, "poison").SerializeToString()).status_code == 200
    assert post(svc, n_spans(5, "healthy").SerializeToString()).status_code == 200
    sink.refuse_rows = 7  # storage is up, but this record always fails
    sink.down = False
    assert _wait(lambda: int(scalar(svc, "SELECT count() FROM spans WHERE service = 'healthy'")) == 5, timeout=60)
    refused = [f for f in os.listdir(svc.spool.dir) if f.startswith("refused-")]
    assert len(refused) == 1  # kept on disk, not dropped
    import pyarrow as pa

    with pa.OSFile(os.path.join(svc.spool.dir, refused[0])) as fh:
        assert pa.ipc.open_file(fh).read_all().num_rows == 7
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert 'tokenpulse_spans_dead_lettered_total{reason="retries_exhausted"} 7.0' in metrics


def test_an_outage_is_waited_out_without_dead_lettering(make_service):
    svc, sink = _replay_service(make_service, spool_replay_max_attempts=1)
    sink.down = True  # pings fail too: the record is not the problem
    assert post(svc, n_spans(4, "patient").SerializeToString()).status_code == 200
    time.sleep(2.0)  # several replay attempts
    assert not [f for f in os.listdir(svc.spool.dir) if f.startswith("refused-")]
    sink.down = False
    assert _wait(lambda: int(scalar(svc, "SELECT count() FROM spans WHERE service = 'patient'")) == 4)

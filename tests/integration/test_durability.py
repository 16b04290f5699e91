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


def _load(proc, stop: threading.Event, acked: set, prefix: str):
    """Send requests of unique spans until stopped; remember the span ids acknowledged with 200."""
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

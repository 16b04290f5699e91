"""Overload and storage failure answer retryable codes; exporters retry; once storage
recovers every span is stored exactly once.

The fault injector wraps the real ClickHouse sink (chDB): it only raises the
retryable error a dead server would cause, or sleeps, for as long as a test says.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import requests
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.conftest import scalar, sql
from tests.integration.test_bad_input import grpc_export, post
from tests.otlp import n_spans
from tokenpulse.errors import RetryableStorageError


class FaultySink:
    def __init__(self, inner):
        self.inner = inner
        self.fail_until = 0.0
        self.delay_s = 0.0
        self.failures = 0

    def encode(self, batch):
        return self.inner.encode(batch)

    def write(self, batch):
        if self.delay_s:
            time.sleep(self.delay_s)
        if time.monotonic() < self.fail_until:
            self.failures += 1
            raise RetryableStorageError("injected: ClickHouse unreachable (Connection refused)", 210)
        self.inner.write(batch)


@pytest.fixture
def faulty(make_service):
    holder = {}

    def wrap(inner):
        holder["sink"] = FaultySink(inner)
        return holder["sink"]

    def make(**kw):
        # Without a spool unless asked (as when the spool is full): storage failures reach the clients.
        kw.setdefault("spool_max_bytes", 0)
        svc = make_service(sink_wrapper=wrap, **kw)
        return svc, holder["sink"]

    return make


def test_storage_down_gives_retryable_codes_with_delay(faulty):
    svc, sink = faulty(retry_after_s=2)
    sink.fail_until = time.monotonic() + 3600
    body = n_spans(4, "down").SerializeToString()
    with pytest.raises(grpc.RpcError) as e:
        grpc_export(svc, body)
    err = e.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    trailers = dict(err.trailing_metadata())
    info = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    assert info.retry_delay.seconds >= 1
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == 14 and status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)

    r = post(svc, body)  # storage backing off now: refused before queueing
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    health = requests.get(f"http://127.0.0.1:{svc.admin.port}/healthz", timeout=5)
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert "tokenpulse_storage_up 0.0" in metrics
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'down'")) == 0


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_exporter_retries_through_outage_exactly_once(faulty, transport):
    svc, sink = faulty(retry_after_s=0.5)
    service = f"outage-{transport}"
    if transport == "grpc":
        exporter = GrpcExporter(endpoint=f"http://127.0.0.1:{svc.grpc.port}", insecure=True, timeout=30)
    else:
        exporter = HttpExporter(endpoint=f"http://127.0.0.1:{svc.http.port}/v1/traces", timeout=30)
    tp = TracerProvider(resource=Resource.create({"service.name": service}))
    tp.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=50, schedule_delay_millis=100))
    tracer = tp.get_tracer("t")
    sink.fail_until = time.monotonic() + 2.5  # storage down for 2.5 s while spans flow
    for i in range(300):
        with tracer.start_as_current_span(f"op{i}"):
            pass
        if i % 50 == 0:
            time.sleep(0.1)
    assert tp.force_flush(60_000)
    tp.shutdown()
    assert sink.failures >= 1, "the outage was not exercised"
    rows = sql(svc, f"SELECT count(), uniqExact(span_id) FROM spans WHERE service = '{service}'")
    assert [int(x) for x in rows[0]] == [300, 300]


def test_queue_full_answers_429_and_unavailable(faulty):
    svc, sink = faulty(queue_max_spans=100, batch_max_age_s=0.0, ack_timeout_s=10)
    sink.delay_s = 1.5  # slow storage: the first request occupies the writer
    first = threading.Thread(target=lambda: post(svc, n_spans(90, "qf").SerializeToString()))
    first.start()
    time.sleep(0.2)
    second = threading.Thread(target=lambda: post(svc, n_spans(90, "qf").SerializeToString()))
    second.start()
    time.sleep(0.2)  # 90 in the insert, 90 queued: the queue holds 90 of 100
    r = post(svc, n_spans(50, "qf").SerializeToString())
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    with pytest.raises(grpc.RpcError) as e:
        grpc_export(svc, n_spans(50, "qf").SerializeToString())
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    first.join()
    second.join()
    sink.delay_s = 0
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'qf'")) == 180


def test_slow_storage_ack_timeout_then_retry_is_not_double_counted(faulty):
    svc, sink = faulty(ack_timeout_s=0.5, batch_max_age_s=0.0)
    sink.delay_s = 1.5
    chat = {"gen_ai.operation.name": "chat", "gen_ai.response.model": "gpt-4o-timeout", "gen_ai.usage.input_tokens": 100,
            "gen_ai.usage.output_tokens": 10}
    body = n_spans(20, "slow", attrs=chat).SerializeToString()
    r = post(svc, body)  # the write is under way but not done in time
    assert r.status_code == 503
    time.sleep(1.5)  # ...it finishes anyway
    sink.delay_s = 0
    r = post(svc, body)  # the exporter's retry of the same spans
    assert r.status_code == 200
    assert [int(x) for x in sql(svc, "SELECT count(), uniqExact(span_id) FROM spans WHERE service = 'slow'")[0]] \
        == [20, 20]
    # the token counters count the stored spans once: when the late write landed (the retry was a repeat)
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert 'tokenpulse_tokens_total{model="gpt-4o-timeout",type="input"} 2000.0' in metrics, \
        [ln for ln in metrics.splitlines() if "gpt-4o-timeout" in ln]


def test_retried_request_is_stored_once_even_after_restart(make_service, backend, database):
    req = n_spans(25, "dup").SerializeToString()
    svc = make_service()
    assert post(svc, req).status_code == 200
    assert post(svc, req).status_code == 200  # exporter retry after a lost response
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'dup'")) == 25
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert "tokenpulse_spans_duplicate_total 25.0" in metrics
    svc.shutdown()
    # A new service on the same storage remembers the recent span ids.
    svc2 = make_service()
    assert svc2.writer.dedup and len(svc2.writer.dedup) >= 25
    assert post(svc2, req).status_code == 200
    assert int(scalar(svc2, "SELECT count() FROM spans WHERE service = 'dup'")) == 25


def test_duplicate_spans_inside_one_request_are_stored_once(make_service):
    from tests.otlp import request, span

    one = span()
    svc = make_service()
    r = post(svc, request([one, one, span()], service="dup-in").SerializeToString())
    assert r.status_code == 200
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'dup-in'")) == 2


class PoisonSink:
    """Fails like a bug of ours would, on one tenant's spans only."""

    def __init__(self, inner):
        self.inner = inner

    def encode(self, batch):
        return self.inner.encode(batch)

    def write(self, table):
        if "poison" in table.column("service").to_pylist():
            raise KeyError("simulated bug in a conversion")
        self.inner.write(table)


def test_a_bug_while_writing_fails_one_request_and_the_writer_lives_on(make_service):
    svc = make_service(sink_wrapper=PoisonSink, batch_max_age_s=0.3)
    results = {}

    def send(name):
        results[name] = post(svc, n_spans(5, name).SerializeToString())

    threads = [threading.Thread(target=send, args=(n,)) for n in ("poison", "fine-a", "fine-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["poison"].status_code == 500  # non-retryable: retrying a bug cannot help
    assert results["fine-a"].status_code == 200 and results["fine-b"].status_code == 200
    with pytest.raises(grpc.RpcError) as e:
        grpc_export(svc, n_spans(2, "poison").SerializeToString())
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert post(svc, n_spans(3, "fine-c").SerializeToString()).status_code == 200
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service LIKE 'fine-%'")) == 13


def test_a_bug_in_enrichment_fails_that_request_only(make_service):
    svc = make_service()
    real = svc.enrich

    def flaky(batch, ctx):
        if "poison" in batch.service:
            raise ValueError("simulated enrichment bug")
        return real(batch, ctx)

    svc.grpc.ingest.enrich = flaky  # the receivers' ingest step; the same object serves HTTP
    assert post(svc, n_spans(2, "poison").SerializeToString()).status_code == 500
    with pytest.raises(grpc.RpcError) as e:
        grpc_export(svc, n_spans(2, "poison").SerializeToString())
    assert e.value.code() == grpc.StatusCode.INTERNAL and "enrichment" in e.value.details()
    assert post(svc, n_spans(3, "healthy").SerializeToString()).status_code == 200
    assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'healthy'")) == 3


def test_overload_is_shed_before_decoding(faulty):
    """Requests beyond max_inflight_bytes are answered retry at once instead of waiting in line."""
    svc, sink = faulty(max_inflight_bytes=4096, batch_max_age_s=0.0, ack_timeout_s=10)
    sink.delay_s = 1.5  # the first request holds its bytes while its write is slow
    big = n_spans(40, "shed").SerializeToString()
    assert len(big) > 2048
    first = threading.Thread(target=lambda: post(svc, big))
    first.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    r = post(svc, big)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "overloaded" in r.text
    with pytest.raises(grpc.RpcError) as e:
        grpc_export(svc, big)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "google.rpc.retryinfo-bin" in dict(e.value.trailing_metadata())
    assert time.monotonic() - t0 < 1.0  # answered at once, not after the slow write
    first.join()
    sink.delay_s = 0
    assert post(svc, big).status_code == 200  # capacity is back once the first finished
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert 'tokenpulse_requests_shed_total{transport="http"} 1.0' in metrics

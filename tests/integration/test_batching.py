"""Requests are merged into large inserts when others are on their way, and a lone request is not held.

An insert's cost is mostly fixed (writer.py's module doc), so under load the writer waits for the
requests being decoded; a request no other follows is written at once. The sink is the real
``spans`` table (chDB) behind a wrapper that records each insert's size.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.conftest import scalar
from tests.integration.test_bad_input import grpc_export
from tests.otlp import n_spans, request, span
from tokenpulse.otlp.decode import decode_protobuf
from tokenpulse.storage.sink import SpanTable
from tokenpulse.storage.writer import Writer, WriterSettings


class RecordingSink:
    """The real sink; remembers the rows of every insert, and can hold the first one."""

    def __init__(self, inner):
        self.inner = inner
        self.inserts: list[int] = []
        self.first_delay_s = 0.0
        self.writing = threading.Event()

    def encode(self, batch):
        return self.inner.encode(batch)

    def write(self, table):
        self.writing.set()
        if not self.inserts and self.first_delay_s:
            time.sleep(self.first_delay_s)
        self.inner.write(table)
        self.inserts.append(table.num_rows)


def _batch(n: int):
    return decode_protobuf(request([span() for _ in range(n)]).SerializeToString()).batch


def _writer(backend, database, **settings) -> tuple[Writer, RecordingSink]:
    sink = RecordingSink(SpanTable(backend, database))
    w = Writer(sink, WriterSettings(**settings))
    w.start()
    return w, sink


def test_requests_being_decoded_join_the_insert(make_service, backend, database):
    svc = make_service()  # creates the database and its tables
    w, sink = _writer(backend, database, eager_rows=1_000, max_age_s=30)
    try:
        arrivals = [w.arriving() for _ in range(3)]
        futures = [w.submit(_batch(10))]
        arrivals[0].close()
        time.sleep(0.3)
        assert sink.inserts == [], "written while two announced requests were still being decoded"
        for a in arrivals[1:]:
            futures.append(w.submit(_batch(10)))
            a.close()
        for f in futures:
            f.result(timeout=30)
        assert sink.inserts == [30]
    finally:
        w.shutdown()
    assert scalar(svc, "SELECT count() FROM spans") == 30


def test_a_lone_request_is_written_at_once(make_service, backend, database):
    make_service()
    w, sink = _writer(backend, database, eager_rows=1_000, max_age_s=60)
    try:
        with w.arriving():
            fut = w.submit(_batch(5))
        fut.result(timeout=20)  # far below max_age_s: nothing else was announced, so nothing was awaited
        assert sink.inserts == [5]
    finally:
        w.shutdown()


def test_eager_rows_insert_without_waiting_for_announced_requests(make_service, backend, database):
    make_service()
    w, sink = _writer(backend, database, eager_rows=8, max_age_s=60)
    try:
        pending = w.arriving()  # announced, never submitted during the test
        with w.arriving():
            fut = w.submit(_batch(10))
        fut.result(timeout=20)
        assert sink.inserts == [10]
        pending.close()
    finally:
        w.shutdown()


def test_concurrent_exports_over_grpc_share_inserts(make_service):
    """Six exporters at once over real gRPC while the first insert is slow: the five requests that
    arrive during it are written together, not one insert each."""
    holder = {}

    def wrap(inner):
        holder["sink"] = RecordingSink(inner)
        holder["sink"].first_delay_s = 2.0
        return holder["sink"]

    svc = make_service(sink_wrapper=wrap, batch_eager_spans=100_000, batch_max_age_s=10)
    sink = holder["sink"]
    first = threading.Thread(target=grpc_export, args=(svc, n_spans(50, "first").SerializeToString()))
    first.start()
    assert sink.writing.wait(10)  # the first request is in its (slow) insert
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda i: grpc_export(svc, n_spans(50, f"s{i}").SerializeToString()), range(5)))
    first.join()
    for raw in answers:
        assert not ExportTraceServiceResponse.FromString(raw).HasField("partial_success")
    assert sum(sink.inserts) == 300
    assert len(sink.inserts) <= 3, sink.inserts
    assert scalar(svc, "SELECT count() FROM spans") == 300

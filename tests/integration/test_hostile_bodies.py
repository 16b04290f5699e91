"""Hostile clients cannot hurt ingest: admission counts what a request holds (chunked bodies as they
arrive, gzip bodies inflated), stalled bodies time out, and a gzip bomb of empty spans is cut on
the wire before anything is built per span. Real sockets against the running service."""

from __future__ import annotations

import gzip
import socket
import threading
import time

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.conftest import scalar
from tests.otlp import empty_spans_request, n_spans


class ChunkedUpload:
    """A raw HTTP/1.1 client sending a chunked protobuf body bit by bit, as a slow or hostile one does."""

    def __init__(self, port: int, extra_headers: str = ""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(("POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
                           f"Transfer-Encoding: chunked\r\n{extra_headers}\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")

    def status(self) -> int:
        """The status line's code (waits for the answer)."""
        head = b""
        while b"\r\n" not in head:
            got = self.sock.recv(4096)
            if not got:
                return 0
            head += got
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


def test_a_chunked_body_counts_as_it_arrives_and_a_stalled_one_times_out(make_service):
    svc = make_service(max_inflight_bytes="1MiB", body_timeout_s=1.0)
    port = svc.http.port
    stalled = ChunkedUpload(port)
    stalled.send(b"\x00" * 700_000)  # then nothing more: it holds 700 kB
    time.sleep(0.2)
    second = ChunkedUpload(port)
    second.send(b"\x00" * 700_000)  # over the 1 MiB budget while the first holds its share
    try:
        assert second.status() == 429  # refused mid-body, before the rest arrives
        assert stalled.status() == 408  # the stalled body ran out of time
    finally:
        stalled.close()
        second.close()
    # Nothing is held afterwards: an honest request goes through.
    r = requests.post(f"http://127.0.0.1:{port}/v1/traces", data=n_spans(3, "after-stall").SerializeToString(),
                      headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert r.status_code == 200
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert 'tokenpulse_export_requests_total{outcome="timeout",transport="http"} 1.0' in metrics


def test_a_gzip_body_counts_at_its_inflated_size(make_service):
    svc = make_service(max_inflight_bytes="1MiB", body_timeout_s=5.0)
    holder = ChunkedUpload(svc.http.port)
    holder.send(b"\x00" * 600_000)
    time.sleep(0.2)
    body = n_spans(2, "inflated", attrs={"pad": "x" * 900_000}).SerializeToString()
    small = gzip.compress(body)
    assert len(small) < 20_000
    try:
        r = requests.post(f"http://127.0.0.1:{svc.http.port}/v1/traces", data=small,
                          headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, timeout=10)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    finally:
        holder.close()


def test_a_gzip_bomb_of_empty_spans_is_cut_on_the_wire_and_the_loop_keeps_answering(make_service):
    svc = make_service()
    bomb = gzip.compress(empty_spans_request(4_000_000))  # 8 MB of spans from ~8 kB
    assert len(bomb) < 20_000
    answers, health = [], []

    def send():
        answers.append(requests.post(f"http://127.0.0.1:{svc.http.port}/v1/traces", data=bomb, timeout=120,
                                     headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}))

    senders = [threading.Thread(target=send) for _ in range(3)]
    for t in senders:
        t.start()
    while any(t.is_alive() for t in senders):  # /healthz is answered while the bombs are handled
        health.append(requests.get(f"http://127.0.0.1:{svc.admin.port}/healthz", timeout=10).status_code)
    for t in senders:
        t.join()
    assert health and set(health) == {200}
    for r in answers:
        assert r.status_code == 200, r.text
        partial = ExportTraceServiceResponse.FromString(r.content).partial_success
        assert partial.rejected_spans == 4_000_000
        assert "3900000 spans: more than 100000 spans in one request" in partial.error_message
    # An honest exporter is served afterwards, and the bombs stored nothing.
    r = requests.post(f"http://127.0.0.1:{svc.http.port}/v1/traces", data=n_spans(3, "honest").SerializeToString(),
                      headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert r.status_code == 200
    assert int(scalar(svc, "SELECT count() FROM spans")) == 3


def test_grpc_overload_is_answered_quickly_with_a_retry_delay_never_a_deadline(make_service):
    """Twenty concurrent gRPC calls, each 4M empty spans (8 MB): every one is answered, OK with
    partial success or UNAVAILABLE with RetryInfo, before a 5 s deadline; none queues until
    DEADLINE_EXCEEDED behind the decoding of the others. (When decoding ran on the event loop,
    each admitted bomb held it ~2 s, and the calls behind six of them missed the deadline.)"""
    import grpc

    svc = make_service(max_inflight_bytes="48MiB")
    body = empty_spans_request(4_000_000)
    codes = []

    def call():
        with grpc.insecure_channel(f"127.0.0.1:{svc.grpc.port}",
                                   options=[("grpc.max_send_message_length", 32 << 20)]) as ch:
            export = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                    request_serializer=None, response_deserializer=None)
            try:
                export(body, timeout=5)
                codes.append("OK")
            except grpc.RpcError as e:
                retry = dict(e.trailing_metadata() or ()).get("google.rpc.retryinfo-bin")
                codes.append(f"{e.code().name}{'+retry' if retry else ''}")

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(codes) == 20 and set(codes) <= {"OK", "UNAVAILABLE+retry"}, codes
    assert "OK" in codes and "UNAVAILABLE+retry" in codes

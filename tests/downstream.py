"""Real OTLP receivers that stand for a downstream tracing backend (Tempo, Jaeger, a Collector).

``GrpcDownstream`` is a gRPC server with the real TraceService (and MetricsService, for
tokenpulse's own telemetry); ``HttpDownstream`` a real HTTP server taking OTLP/HTTP protobuf.
Both keep what they received and can be told to answer with an error for a while.
"""

from __future__ import annotations

import gzip
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class _Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.attempts = 0
        self.headers: list[dict] = []
        self.errors: list = []  # answers to give, one per attempt, before succeeding
        self.reject_spans = 0  # partial success: spans to refuse in the next successful answer

    def spans(self) -> list:
        with self.lock:
            return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def wait_spans(self, n: int, timeout: float = 15.0) -> list:
        assert _wait(lambda: len(self.spans()) >= n, timeout), f"{len(self.spans())} of {n} spans arrived"
        return self.spans()


class GrpcDownstream(_Store):
    """errors: (grpc code name, retry delay s or None) per attempt to fail."""

    def __init__(self):
        super().__init__()
        self.server = None
        self.port = 0

    def start(self, port: int = 0, tls: tuple[str, str] | None = None, client_ca: str = "") -> "GrpcDownstream":
        """``tls``: (cert, key) PEM paths to serve TLS; ``client_ca``: also require client certificates
        signed by it (mTLS)."""
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        store = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                with store.lock:
                    store.attempts += 1
                    store.headers.append(dict(context.invocation_metadata()))
                    error = store.errors.pop(0) if store.errors else None
                    if error is None:
                        store.requests.append(request)
                        rejected, store.reject_spans = store.reject_spans, 0
                if error is not None:
                    code, delay = error
                    details = []
                    if delay is not None:
                        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
                            seconds=int(delay), nanos=int((delay % 1) * 1e9)))
                        detail = details_any(info)
                        details.append(detail)
                    context.abort_with_status(rpc_status.to_status(status_pb2.Status(
                        code=getattr(code_pb2, code), message=f"downstream says {code}", details=details)))
                resp = trace_service_pb2.ExportTraceServiceResponse()
                if rejected:
                    resp.partial_success.rejected_spans = rejected
                    resp.partial_success.error_message = "refused by the test downstream"
                return resp

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):
                with store.lock:
                    store.metric_requests.append(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        if tls:
            read = lambda path: open(path, "rb").read()  # noqa: E731
            creds = grpc.ssl_server_credentials([(read(tls[1]), read(tls[0]))],
                                                root_certificates=read(client_ca) if client_ca else None,
                                                require_client_auth=bool(client_ca))
            self.port = self.server.add_secure_port(f"127.0.0.1:{port}", creds)
        else:
            self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()
        return self

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None

    def metric_names(self) -> set[str]:
        with self.lock:
            return {m.name for r in self.metric_requests for rm in r.resource_metrics
                    for sm in rm.scope_metrics for m in sm.metrics}


def details_any(message):
    from google.protobuf import any_pb2

    a = any_pb2.Any()
    a.Pack(message)
    return a


class HttpDownstream(_Store):
    """errors: (HTTP status, Retry-After header value or None) per attempt to fail."""

    def start(self, tls: tuple[str, str] | None = None, client_ca: str = "") -> "HttpDownstream":
        store = self
        self.scheme = "https" if tls else "http"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with store.lock:
                    store.attempts += 1
                    store.headers.append({k.lower(): v for k, v in self.headers.items()})
                    error = store.errors.pop(0) if store.errors else None
                    if error is None and self.path == "/v1/traces":
                        req = trace_service_pb2.ExportTraceServiceRequest()
                        req.ParseFromString(body)
                        store.requests.append(req)
                if self.path != "/v1/traces":
                    error = (404, None)
                if error is not None:
                    status, retry_after = error
                    self.send_response(status)
                    if retry_after is not None:
                        self.send_header("Retry-After", str(retry_after))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            import ssl

            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*tls)
            if client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(client_ca)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

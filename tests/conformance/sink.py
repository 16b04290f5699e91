"""A local OTLP sink that keeps each export request's exact bytes.

gRPC: a generic handler for ``opentelemetry.proto.collector.trace.v1.TraceService/Export``
that does not deserialize, so what is saved is what the exporter put on the wire. OTLP/HTTP
bodies (Langfuse's own exporter posts to ``.../v1/traces``) reach it through the fake
provider's server, gunzipped if the exporter compressed them.
"""

from __future__ import annotations

import gzip
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@dataclass
class Captured:
    transport: str  # "grpc" | "http"
    body: bytes  # ExportTraceServiceRequest, protobuf
    received_ns: int


class Sink:
    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService", {
            "Export": grpc.unary_unary_rpc_method_handler(
                self._export, request_deserializer=lambda b: b, response_serializer=lambda b: b)})
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def start(self) -> "Sink":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=1).wait()

    def _save(self, transport: str, body: bytes) -> None:
        with self._lock:
            self.requests.append(Captured(transport, body, time.time_ns()))

    def _export(self, body: bytes, context) -> bytes:
        self._save("grpc", body)
        return b""  # an empty ExportTraceServiceResponse: full success

    def save_http(self, body: bytes, content_type: str, encoding: str) -> None:
        if encoding == "gzip":
            body = gzip.decompress(body)
        if "json" in content_type:
            raise ValueError("the recorder expects OTLP/HTTP protobuf; got JSON")
        self._save("http", body)

    def take(self) -> list[Captured]:
        with self._lock:
            out, self.requests = self.requests, []
        return out

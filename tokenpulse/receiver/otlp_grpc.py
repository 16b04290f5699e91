"""OTLP/gRPC: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

Registered as a generic handler on raw bytes so that *we* decode: an
undecodable body then answers INVALID_ARGUMENT (gRPC's own deserializer would
answer INTERNAL, which the spec marks non-retryable but wrong in meaning).
gzip is handled by gRPC itself; the request size limit is gRPC's
``max_receive_message_length``, which answers RESOURCE_EXHAUSTED without
RetryInfo, i.e. non-retryable (otlp.md).

Retryable refusals answer UNAVAILABLE with a RetryInfo carried twice: in the
standard ``grpc-status-details-bin`` (google.rpc.Status, read by Go/Collector
exporters) and in ``google.rpc.retryinfo-bin`` (read by the Python SDK
exporter, opentelemetry-exporter-otlp-proto-grpc ``exporter.py``).
"""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tokenpulse.errors import InvalidRequest
from tokenpulse.otlp.decode import decode_protobuf
from tokenpulse.receiver.ingest import Ingest

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def _retry_trailers(message: str, retry_after_s: float) -> tuple[tuple[str, bytes], ...]:
    secs = int(retry_after_s)
    info = error_details_pb2.RetryInfo(
        retry_delay=Duration(seconds=secs, nanos=int((retry_after_s - secs) * 1e9)))
    detail = AnyPb()
    detail.Pack(info)
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", info.SerializeToString()),
    )


class OtlpGrpcReceiver:
    def __init__(self, ingest: Ingest, host: str, port: int, max_request_bytes: int, auth=None, tls=None):
        self.auth = auth  # receiver/auth.py Authenticator, or None
        self.tls = tls  # (cert PEM bytes, key PEM bytes) or None
        self.ingest = ingest
        self.host = host
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.server: grpc.aio.Server | None = None

    async def start(self) -> int:
        self.server = grpc.aio.server(options=[
            # gRPC sets SO_REUSEPORT by default: a second tokenpulse on the same port would silently
            # share it (spans landing in either process). Off: binding a port in use fails.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", self.max_request_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ])
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Export": grpc.unary_unary_rpc_method_handler(self._export),
        })
        self.server.add_generic_rpc_handlers((handler,))
        if self.tls is not None:
            creds = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
            self.port = self.server.add_secure_port(f"{self.host}:{self.port}", creds)
        else:
            self.port = self.server.add_insecure_port(f"{self.host}:{self.port}")
        if not self.port:  # older grpcio returns 0 instead of raising
            raise OSError(98, "address already in use")
        await self.server.start()
        return self.port

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let calls in flight finish (their writes included)."""
        if self.server is not None:
            await self.server.stop(grace_s)

    async def _export(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        t0 = time.monotonic()
        metrics = self.ingest.metrics
        shed = self.ingest.admit(len(body), "grpc")
        if shed is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, shed.message,
                                trailing_metadata=_retry_trailers(shed.message, shed.retry_after_s))
        try:
            with self.ingest.writer.arriving() as arrival:
                # Yield once before decoding: every request already received announces itself too,
                # so the writer knows they are coming and waits to insert them together.
                await asyncio.sleep(0)
                return await self._handle(body, context, arrival)
        finally:
            self.ingest.release(len(body))
            metrics.export_latency.labels("grpc").observe(time.monotonic() - t0)

    async def _handle(self, body: bytes, context: grpc.aio.ServicerContext, arrival) -> bytes:
        metrics = self.ingest.metrics
        tenant = ""
        if self.auth is not None and self.auth.enabled:
            key = self.auth.check(dict(context.invocation_metadata()).get("authorization"))
            if key is None:
                metrics.requests.labels("grpc", "unauthenticated").inc()
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "missing or unknown API key (send metadata authorization: Bearer <key>)")
            tenant = key.tenant
        try:
            decoded = await self.ingest.on_cpu(decode_protobuf, body, True, self.ingest.limits.max_spans)
        except InvalidRequest as e:
            metrics.requests.labels("grpc", "invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        decoded.tenant = tenant
        answer = await self.ingest.export(decoded, len(body), "grpc", arrival)
        if answer.kind == "retry":
            await context.abort(grpc.StatusCode.UNAVAILABLE, answer.message,
                                trailing_metadata=_retry_trailers(answer.message, answer.retry_after_s))
        if answer.kind == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, answer.message)
        if answer.kind == "internal":
            await context.abort(grpc.StatusCode.INTERNAL, answer.message)
        resp = ExportTraceServiceResponse()
        if answer.rejected or answer.message:
            resp.partial_success.rejected_spans = answer.rejected
            resp.partial_success.error_message = answer.message
        return resp.SerializeToString()

"""Send ExportTraceServiceRequest bytes to one OTLP destination; classify the answer.

Retryability is the OTLP specification's (docs/sources.md#otlp):

* gRPC: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE,
  DATA_LOSS are retried, and RESOURCE_EXHAUSTED only when it carries a
  RetryInfo; any other code drops the batch.
* HTTP: 429, 502, 503, 504 are retried (after ``Retry-After`` when given);
  any other 4xx/5xx drops the batch.
* A success may carry ``partial_success``: its rejected spans are dropped by
  the downstream, counted, and never retried (the spec says MUST NOT).

The bytes go as they are: the gRPC call is made with identity serializers, so
nothing is parsed or re-serialized here.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

from tokenpulse.forward.config import Destination
from tokenpulse.otlp.reencode import parse_response, retry_delay
from tokenpulse.retry import parse_retry_after

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
HTTP_RETRYABLE = (429, 502, 503, 504)


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ok" | "retry" | "drop"
    rejected: int = 0  # ok: spans the downstream refused (partial success)
    message: str = ""
    retry_after_s: float | None = None  # retry: the downstream's own delay, if it gave one


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as fh:
        return fh.read()


class GrpcSender:
    def __init__(self, d: Destination):
        import grpc

        self._grpc = grpc
        self.d = d
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if d.insecure:
            self._channel = grpc.insecure_channel(d.target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=_read(d.ca_file), private_key=_read(d.key_file),
                                                 certificate_chain=_read(d.cert_file))
            self._channel = grpc.secure_channel(d.target, creds, options=options)
        self._call = self._channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
        self._compression = grpc.Compression.Gzip if d.compression == "gzip" else grpc.Compression.NoCompression
        self._retryable = {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                           grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}

    def send(self, body: bytes) -> Outcome:
        grpc = self._grpc
        try:
            resp = self._call(body, timeout=self.d.timeout_s, metadata=self.d.headers or None,
                              compression=self._compression)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
            details = e.details() if hasattr(e, "details") else str(e)
            delay = None
            for key, value in (e.trailing_metadata() or ()) if hasattr(e, "trailing_metadata") else ():
                if key == "grpc-status-details-bin":
                    delay = retry_delay(value)
            message = f"gRPC {code.name}: {details}"
            if code in self._retryable or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None):
                return Outcome("retry", message=message, retry_after_s=delay)
            return Outcome("drop", message=message)
        rejected, msg = parse_response(resp)
        return Outcome("ok", rejected, msg)

    def close(self) -> None:
        self._channel.close()


class HttpSender:
    def __init__(self, d: Destination):
        import urllib3

        self.d = d
        self._url = d.target
        kw = {"timeout": urllib3.Timeout(total=d.timeout_s), "retries": False, "maxsize": 2}
        if self._url.startswith("https://"):
            kw.update(cert_reqs="CERT_REQUIRED" if not d.insecure else "CERT_NONE",
                      ca_certs=d.ca_file or None, cert_file=d.cert_file or None, key_file=d.key_file or None)
        self._pool = urllib3.PoolManager(**kw)
        self._headers = {"Content-Type": "application/x-protobuf", **dict(d.headers)}
        if d.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"

    def send(self, body: bytes) -> Outcome:
        import urllib3

        data = gzip.compress(body, compresslevel=1) if self.d.compression == "gzip" else body
        try:
            r = self._pool.request("POST", self._url, body=data, headers=self._headers)
        except urllib3.exceptions.HTTPError as e:  # connection refused, reset, timeout: retryable
            return Outcome("retry", message=f"HTTP request failed: {type(e).__name__}")
        if r.status == 200:
            rejected, msg = parse_response(r.data)
            return Outcome("ok", rejected, msg)
        message = f"HTTP {r.status}"
        if r.status in HTTP_RETRYABLE:
            return Outcome("retry", message=message,
                           retry_after_s=parse_retry_after(r.headers.get("Retry-After")) or retry_delay(r.data))
        return Outcome("drop", message=message)

    def close(self) -> None:
        self._pool.clear()


def make_sender(d: Destination):
    return GrpcSender(d) if d.protocol == "grpc" else HttpSender(d)

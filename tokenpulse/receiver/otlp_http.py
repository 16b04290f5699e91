"""OTLP/HTTP: ``POST /v1/traces`` with protobuf or JSON bodies (otlp.md).

* Content-Type ``application/x-protobuf`` or ``application/json``; the answer
  uses the request's type. Anything else: 415.
* ``Content-Encoding: gzip`` (or deflate). We inflate ourselves, with the same
  limit as the raw body, so a gzip bomb stops at the limit: 413.
* Admission (``max_inflight_bytes``) counts what a request holds, not what it
  declares: the body as it arrives (a chunked body declares nothing) and then
  its inflated size. Over the budget, with other requests in progress: 429 with
  ``Retry-After``, even mid-body. A body not received within ``body_timeout_s``:
  408.
* Success and partial success are 200 with ExportTraceServiceResponse; bad data
  is 400, too large 413, both with a google.rpc.Status body.
* Retryable refusals: 429 when our queue is full, 503 when storage is failing
  or we are shutting down, both with ``Retry-After`` (whole seconds).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import zlib

from aiohttp import web
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tokenpulse.errors import InvalidRequest, RequestTooLarge
from tokenpulse.otlp.decode import decode_json, decode_protobuf
from tokenpulse.receiver.ingest import Answer, Ingest

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class _TooLarge(Exception):
    pass


class _Shed(Exception):
    def __init__(self, answer: Answer):
        self.answer = answer


def inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a request body, refusing to produce more than ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity", "none"):
        return data
    if encoding in ("gzip", "x-gzip"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        d = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, auto-detected
    else:
        raise InvalidRequest(f"unsupported Content-Encoding {encoding!r} (use gzip or none)")
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise InvalidRequest(f"cannot decompress {encoding} body: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise RequestTooLarge(f"decompressed body exceeds the {limit}-byte limit")
    if not d.eof:
        raise InvalidRequest(f"truncated {encoding} body")
    return out


def _status_body(ctype: str, code: int, message: str) -> bytes:
    if ctype == PROTOBUF:
        return status_pb2.Status(code=code, message=message).SerializeToString()
    return json.dumps({"code": code, "message": message}).encode()


def _error(ctype: str, http_status: int, code: int, message: str, headers: dict | None = None) -> web.Response:
    ctype = ctype if ctype in (PROTOBUF, JSON) else JSON
    return web.Response(status=http_status, body=_status_body(ctype, code, message),
                        content_type=ctype, headers=headers)


def _success(ctype: str, answer: Answer) -> web.Response:
    if ctype == PROTOBUF:
        resp = ExportTraceServiceResponse()
        if answer.rejected or answer.message:
            resp.partial_success.rejected_spans = answer.rejected
            resp.partial_success.error_message = answer.message
        body = resp.SerializeToString()
    else:
        doc = {}
        if answer.rejected or answer.message:
            # int64 as a decimal string, as OTLP/JSON writes it
            doc["partialSuccess"] = {"rejectedSpans": str(answer.rejected), "errorMessage": answer.message}
        body = json.dumps(doc).encode()
    return web.Response(status=200, body=body, content_type=ctype)


class OtlpHttpReceiver:
    def __init__(self, ingest: Ingest, host: str, port: int, max_request_bytes: int, shutdown_timeout_s: float,
                 extra_routes=None, auth=None, ssl_context=None, body_timeout_s: float = 30.0):
        self.body_timeout_s = body_timeout_s
        self.auth = auth  # receiver/auth.py Authenticator, or None
        self.ssl_context = ssl_context
        self.extra_routes = extra_routes  # callable(router): the throttle decision API shares this port
        self.ingest = ingest
        self.host = host
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.shutdown_timeout_s = shutdown_timeout_s
        self.runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_request_bytes)
        app.router.add_post("/v1/traces", self._traces)
        if self.extra_routes is not None:
            self.extra_routes(app.router)
        return app

    async def start(self) -> int:
        # auto_decompress off: we inflate with a limit (gzip bombs).
        self.runner = web.AppRunner(self.app(), auto_decompress=False, access_log=None,
                                    shutdown_timeout=self.shutdown_timeout_s)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context)
        await site.start()
        self.port = self.runner.addresses[0][1]  # the bound port when 0 was asked
        return self.port

    async def stop(self) -> None:
        """Stop listening and wait for requests in flight (and their writes)."""
        if self.runner is not None:
            await self.runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        t0 = time.monotonic()
        try:
            return await self._handle(request)
        finally:
            self.ingest.metrics.export_latency.labels("http").observe(time.monotonic() - t0)

    async def _handle(self, request: web.Request) -> web.Response:
        requests = self.ingest.metrics.requests
        tenant = ""
        if self.auth is not None and self.auth.enabled:
            key = self.auth.check(request.headers.get("Authorization"))
            if key is None:
                requests.labels("http", "unauthenticated").inc()
                return _error(request.content_type.lower() if request.content_type.lower() in (PROTOBUF, JSON)
                              else JSON, 401, code_pb2.UNAUTHENTICATED,
                              "missing or unknown API key (send Authorization: Bearer <key>)",
                              headers={"WWW-Authenticate": "Bearer"})
            tenant = key.tenant
        ctype = request.content_type.lower()
        if ctype not in (PROTOBUF, JSON):
            requests.labels("http", "unsupported").inc()
            return _error(JSON, 415, code_pb2.INVALID_ARGUMENT,
                          f"unsupported Content-Type {ctype!r}; use {PROTOBUF} or {JSON}")
        declared = request.content_length or 0  # known before the body is read (0 if chunked)
        if declared > self.max_request_bytes:
            requests.labels("http", "too_large").inc()
            return _error(ctype, 413, code_pb2.RESOURCE_EXHAUSTED,
                          f"request body exceeds the {self.max_request_bytes}-byte limit")
        shed = self.ingest.admit(declared, "http")
        if shed is not None:
            return self._shed(ctype, shed)
        held = [declared]  # bytes this request holds against max_inflight_bytes, as they grow
        try:
            try:
                raw = await asyncio.wait_for(self._read_body(request, held), self.body_timeout_s)
            except _TooLarge:
                requests.labels("http", "too_large").inc()
                return _error(ctype, 413, code_pb2.RESOURCE_EXHAUSTED,
                              f"request body exceeds the {self.max_request_bytes}-byte limit")
            except _Shed as e:
                return self._shed(ctype, e.answer)
            except asyncio.TimeoutError:
                requests.labels("http", "timeout").inc()
                return _error(ctype, 408, code_pb2.DEADLINE_EXCEEDED,
                              f"request body not received within {self.body_timeout_s:g} s")
            with self.ingest.writer.arriving() as arrival:
                # Yield once before decoding: every request already received announces itself too,
                # so the writer knows they are coming and waits to insert them together.
                await asyncio.sleep(0)
                return await self._export(ctype, raw, request.headers.get("Content-Encoding", ""), arrival, tenant,
                                          held)
        finally:
            self.ingest.release(held[0])

    def _shed(self, ctype: str, answer: Answer) -> web.Response:
        return _error(ctype, 429, code_pb2.UNAVAILABLE, answer.message,
                      headers={"Retry-After": str(max(1, math.ceil(answer.retry_after_s)))})

    async def _read_body(self, request: web.Request, held: list[int]) -> bytes:
        """The body as it arrives, counted against ``max_inflight_bytes`` chunk by chunk: a chunked
        body declares no length, and a client may stall mid-body (``body_timeout_s`` bounds that)."""
        buf = bytearray()
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > self.max_request_bytes:
                raise _TooLarge()
            if len(buf) > held[0]:
                shed = self.ingest.grow(held[0], len(buf) - held[0], "http")
                if shed is not None:
                    raise _Shed(shed)
                held[0] = len(buf)

    async def _export(self, ctype: str, raw: bytes, encoding: str, arrival, tenant: str = "",
                      held: list[int] | None = None) -> web.Response:
        requests = self.ingest.metrics.requests
        try:
            body = await self.ingest.on_cpu(inflate, raw, encoding, self.max_request_bytes)
            if held is not None and body is not raw:  # the inflated body is held too
                shed = self.ingest.grow(held[0], len(body), "http")
                if shed is not None:
                    return self._shed(ctype, shed)
                held[0] += len(body)
            max_spans = self.ingest.limits.max_spans
            decoded = await self.ingest.on_cpu(decode_protobuf, body, True, max_spans) if ctype == PROTOBUF \
                else await self.ingest.on_cpu(decode_json, body, max_spans)
        except RequestTooLarge as e:
            requests.labels("http", "too_large").inc()
            return _error(ctype, 413, code_pb2.RESOURCE_EXHAUSTED, str(e))
        except InvalidRequest as e:
            requests.labels("http", "invalid").inc()
            return _error(ctype, 400, code_pb2.INVALID_ARGUMENT, str(e))
        decoded.tenant = tenant
        answer = await self.ingest.export(decoded, len(body), "http", arrival)
        if answer.kind == "retry":
            status = 429 if answer.reason == "queue_full" else 503
            return _error(ctype, status, code_pb2.UNAVAILABLE, answer.message,
                          headers={"Retry-After": str(max(1, math.ceil(answer.retry_after_s)))})
        if answer.kind == "invalid":
            return _error(ctype, 400, code_pb2.INVALID_ARGUMENT, answer.message)
        if answer.kind == "internal":
            return _error(ctype, 500, code_pb2.INTERNAL, answer.message)
        return _success(ctype, answer)

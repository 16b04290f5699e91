"""Replay a recording into a running tokenpulse and read back, per served call, what it stored.

gRPC recordings go to the gRPC receiver as the exact recorded bytes (a raw unary call, nothing
re-encoded); OTLP/HTTP recordings (Langfuse's own exporter) are posted to ``/v1/traces``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.conformance.corpus import Recording, Tokens, expected, expected_cost
from tests.conformance.fake_provider import RESPONSE_MODELS
from tokenpulse.enrich.normalize import INFERENCE_OPERATIONS

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def replay(rec: Recording, grpc_port: int, http_port: int) -> int:
    """Send every recorded request; returns the number of spans the receiver rejected."""
    rejected = 0
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
        export = ch.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        for transport, body in rec.requests:
            if transport == "grpc":
                raw = export(body, timeout=30)
            else:
                r = requests.post(f"http://127.0.0.1:{http_port}/v1/traces", data=body,
                                  headers={"content-type": "application/x-protobuf"}, timeout=30)
                r.raise_for_status()
                raw = r.content
            rejected += ExportTraceServiceResponse.FromString(raw).partial_success.rejected_spans
    return rejected


STORED_COLUMNS = ("span_id", "name", "scope_name", "toUnixTimestamp64Nano(start_time)", "toUnixTimestamp64Nano(end_time)",
                  "counted", "operation", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                  "reasoning_tokens", "cost_usd", "price_status", "excluded_reason", "usage_status", "model")


@dataclass
class Stored:
    span_id: str
    name: str
    scope: str
    start: int
    end: int
    counted: int
    operation: str
    tokens: Tokens
    cost: float | None
    price_status: str
    excluded_reason: str
    usage_status: str
    model: str


def stored_spans(rows: list[list]) -> list[Stored]:
    out = []
    for r in rows:
        out.append(Stored(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), r[6],
                          Tokens(*(int(x) for x in r[7:12])), None if r[12] is None else float(r[12]), *r[13:17]))
    return out


@dataclass
class CallResult:
    call: dict
    expected: Tokens | None
    gap: object
    counted: list[Stored] = field(default_factory=list)  # counted inference spans covering the call
    expected_cost: float = 0.0

    @property
    def stored(self) -> Tokens:
        total = Tokens()
        for s in self.counted:
            total = total + s.tokens
        return total

    @property
    def stored_cost(self) -> float:
        return sum(s.cost or 0.0 for s in self.counted)


def covers(s, call: dict) -> bool:
    """The span was open when the provider received the call (the scenario never overlaps calls;
    a client may end its span before the provider's handler returns)."""
    return s.start <= call["received_ns"] <= s.end


def per_call(rec: Recording, spans: list[Stored]) -> list[CallResult]:
    """Each served call with the counted inference spans open when the provider received it."""
    counted = [s for s in spans if s.counted and s.operation in INFERENCE_OPERATIONS]
    out = []
    for c in rec.calls:
        exp, gap = expected(rec.library, c)
        res = CallResult(c, exp, gap, [s for s in counted if covers(s, c)])
        if exp is not None and c["api"] != "unknown":
            res.expected_cost = expected_cost(c, exp, RESPONSE_MODELS.get(c["model"], c["model"]))
        out.append(res)
    return out


def stray(spans: list[Stored], results: list[CallResult]) -> list[Stored]:
    """Counted spans carrying tokens that belong to no served call (an aggregate counted as a call)."""
    claimed = {id(s) for r in results for s in r.counted}
    return [s for s in spans if s.counted and id(s) not in claimed and (s.tokens.input or s.tokens.output)]

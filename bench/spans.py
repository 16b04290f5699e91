"""Synthetic GenAI spans as raw OTLP protobuf, shared by the benchmarks.

Each span looks like what an instrumented agent emits: a chat span with
gen_ai.* usage attributes, tenant/feature attribution and ~15 attributes
(~500 bytes serialized, the size docs/sources.md#platform measured for GenAI spans).
"""

from __future__ import annotations

import os
import random
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-pro"]
TENANTS = [f"tenant-{i}" for i in range(20)]
FEATURES = ["search", "chat", "summarize", "code-review", "triage"]
ROLES = ["planner", "worker", "critic"]


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_request(n_spans: int, service: str = "bench-agent", seed: int | None = None) -> ExportTraceServiceRequest:
    rnd = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([
        _kv("service.name", service), _kv("deployment.environment.name", "bench"),
        _kv("telemetry.sdk.name", "opentelemetry"), _kv("telemetry.sdk.language", "python"),
    ])
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.openai_v2"
    ss.scope.version = "2.1b0"
    now = time.time_ns()
    trace_id = os.urandom(16)
    for i in range(n_spans):
        if i % 8 == 0:
            trace_id = os.urandom(16)
        model = rnd.choice(MODELS)
        inp = rnd.randint(200, 20000)
        s = Span(
            trace_id=trace_id, span_id=os.urandom(8), parent_span_id=os.urandom(8),
            name=f"chat {model}", kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=now - 2_000_000_000 + i, end_time_unix_nano=now - 1_000_000_000 + i,
        )
        s.attributes.extend([
            _kv("gen_ai.operation.name", "chat"), _kv("gen_ai.provider.name", "openai"),
            _kv("gen_ai.request.model", model), _kv("gen_ai.response.model", model),
            _kv("gen_ai.usage.input_tokens", inp), _kv("gen_ai.usage.output_tokens", rnd.randint(10, 2000)),
            _kv("gen_ai.usage.cache_read.input_tokens", inp // 2),
            _kv("gen_ai.response.id", f"chatcmpl-{rnd.getrandbits(64):x}"),
            _kv("gen_ai.agent.name", rnd.choice(ROLES)), _kv("tenant.id", rnd.choice(TENANTS)),
            _kv("app.feature", rnd.choice(FEATURES)), _kv("user.id", f"user-{rnd.randint(1, 500)}"),
            _kv("gen_ai.conversation.id", f"conv-{rnd.randint(1, 2000)}"),
            _kv("server.address", "api.openai.com"), _kv("server.port", 443),
            _kv("gen_ai.request.temperature", 0.2),
        ])
        s.status.code = 1
        ss.spans.append(s)
    return req

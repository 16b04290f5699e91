"""The fast enrichment steps (enrich/fast/) against their reference (enrich/normalize.py, calls.py,
price.py, attribute.py): the same rows, column by column.

Two pipelines, one built with ``reference=True``, enrich the same decoded requests in the same
order (their memories see the same history) and every column of every row must agree, with the
refusals, the late traces and the tenant overrides. The inputs:

* generated spans of every dialect: attribute keys drawn from the key tables themselves (every
  usage, model, provider, operation and span-kind spelling, Langfuse and LangSmith structures, the
  Vercel split input, aggregated usage, attribution keys, response ids, content), with values
  that include the malformed ones (empty, negative, fractional, NaN, absurd, not a number), and
  trace, span and parent ids from small pools so that repeats, parents, siblings and duplicate
  reports across requests happen;
* the whole recorded conformance corpus (tests/conformance/recordings), request by request.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conformance.corpus import libraries, load
from tests.otlp import request, span
from tokenpulse.enrich import Pipeline, RequestContext
from tokenpulse.enrich import normalize as N
from tokenpulse.enrich.attribute import DEFAULT_KEYS, Attributor
from tokenpulse.enrich.calls import DuplicateCalls
from tokenpulse.enrich.content import Content
from tokenpulse.enrich.fast.attribute import ColumnarAttributor
from tokenpulse.enrich.fast.calls import TraceCalls
from tokenpulse.enrich.fast.normalize import MIN_GROUP, Normalizer
from tokenpulse.enrich.price import PriceTable
from tokenpulse.enrich.quirks import QUIRKS
from tokenpulse.otlp.decode import decode_protobuf
from tokenpulse.record import FIELD_NAMES

COUNTS = ["0", "12", "50", "250", "300", "-3", "1.5", "7.0", "nan", "inf", "abc", "", "20000000"]
TOKEN_KEYS = [k for keys in (N.INPUT_KEYS, N.OUTPUT_KEYS, N.CACHE_READ_KEYS, N.CACHE_WRITE_KEYS, N.REASONING_KEYS,
                             N.TOTAL_KEYS) for k in keys]
AGGREGATED_KEYS = [N.AGGREGATED_PREFIX + k[len("gen_ai.usage."):] for k in TOKEN_KEYS if k.startswith("gen_ai.usage.")]
VALUES: dict[str, list] = {
    **{k: COUNTS for k in TOKEN_KEYS + AGGREGATED_KEYS + [N.VERCEL_NOCACHE]},
    **{k: ["openai", "anthropic", "OpenAI", "Azure", "aws", "google.vertex.chat", "anthropic.messages", "", "mistral",
           "az.ai.openai"] for k in N.PROVIDER_KEYS},
    **{k: ["gpt-4o", "gpt-4o-2024-08-06", "claude-sonnet-4-5", "claude-3-5-haiku-20241022", "gemini-2.5-pro", "",
           "unknown-x", "text-embedding-3-small"] for k in N.MODEL_KEYS + N.REQUEST_MODEL_KEYS},
    **{k: ["0.0012", "abc", "-1", "", "0"] for k in N.REPORTED_COST_KEYS},
    **{k: ["planner", "worker", ""] for k in N.AGENT_NAME_KEYS + N.AGENT_ID_KEYS},
    **{k: ["search", "calc", ""] for k in N.TOOL_NAME_KEYS + N.TOOL_CALL_ID_KEYS},
    "gen_ai.operation.name": ["chat", "text_completion", "embeddings", "invoke_agent", "execute_tool", "completion",
                              "embedding", "Chat", "", "workflow", "create_agent", "generate_content"],
    "openinference.span.kind": ["LLM", "llm", "TOOL", "AGENT", "CHAIN", "EMBEDDING", "RETRIEVER", "weird"],
    "llm.request.type": ["chat", "completion", "embedding", "rerank", "other"],
    "traceloop.span.kind": ["workflow", "task", "agent", "tool", "other"],
    "traceloop.entity.name": ["planner", "search"],
    "langsmith.span.kind": ["llm", "tool", "chain", "retriever", "embedding", "other"],
    "langfuse.observation.type": ["generation", "embedding", "agent", "tool", "span", "event", "chain"],
    N.LANGFUSE_USAGE: ['{"input": 10, "output": 5, "cache_read_input_tokens": 3}', '{"input": 7, "total": 9}',
                       '{"prompt_tokens": 12, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2}}',
                       '{"input_tokens": 9, "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 1}}',
                       "not json", "", "[1, 2]"],
    N.LANGFUSE_COST: ['{"total": 0.0012}', '{"input": 1}', "nope", ""],
    N.LANGSMITH_INPUT_DETAILS: ["{'cache_read': 5, 'cache_creation': 2}", '{"cache_read": 1}', "{}", "x"],
    N.LANGSMITH_OUTPUT_DETAILS: ["{'reasoning': 3}", "{'reasoning': -1}", ""],
    "error.type": ["timeout", ""],
    "gen_ai.response.id": ["r1", "r2", "r3", ""],
    "ai.response.id": ["r1", "r4", ""],
    "gen_ai.prompt.0.content": ["hello", "hello again"],
    "gen_ai.completion.0.content": ["hi"],
    "input.value": ['{"q": 1}'],
    "user.email": ["a@example.com"],
    "app.outcome": ["success", "timeout", ""],
    "http.method": ["GET"],
    # Billing context (price.py): the tier billed, the 1-hour cache writes, the host.
    "gen_ai.openai.response.service_tier": ["default", "flex", "priority", "batch", ""],
    "anthropic.usage.cache_creation.ephemeral_1h_input_tokens": ["0", "20", "500"],
    "output.value": ['{"usage": {"cache_creation": {"ephemeral_1h_input_tokens": 30}}}', "{}"],
    "server.address": ["api.openai.com", "", "proxy.internal"],
}
ATTRIBUTION_VALUES = ["acme", "globex", "", '"quoted"', "planner", "u-1", "s-9"]
for _keys in DEFAULT_KEYS.values():
    for _k in _keys:
        VALUES.setdefault(_k, ATTRIBUTION_VALUES)
KEYS = sorted(VALUES)
NAMES = ["chat gpt-4o", "ai.generateText", "ai.generateText.doGenerate", "ai.streamText.doStream", "ai.embed.doEmbed",
         "ai.toolCall", "agent run", "invoke_agent planner", "OpenAI-generation", "openai.chat", "task", "root"]
SCOPES = sorted(QUIRKS) + ["test.scope", "openinference.instrumentation.openai"]
TRACES = [bytes([i + 1]) * 16 for i in range(3)]
SPAN_IDS = [bytes([i + 1]) * 8 for i in range(10)]
T0 = 1_767_225_600_000_000_000  # 2026-01-01


CLEAN_COUNTS = ["0", "12", "50", "250", "300"]


def _value(draw, key: str, clean: bool) -> str:
    pool = VALUES[key]
    if clean:  # what the columnar path takes: no empty value, plain counts
        pool = CLEAN_COUNTS if pool is COUNTS else [v for v in pool if v] or pool
    return draw(st.sampled_from(pool))


# A dialect's shape: for each group, one of its spellings or none.
GROUPS = [N.INPUT_KEYS, N.OUTPUT_KEYS, N.CACHE_READ_KEYS, N.CACHE_WRITE_KEYS, N.REASONING_KEYS, N.TOTAL_KEYS,
          N.PROVIDER_KEYS, N.MODEL_KEYS, N.REQUEST_MODEL_KEYS, N.REPORTED_COST_KEYS, N.AGENT_NAME_KEYS,
          N.AGENT_ID_KEYS, N.TOOL_NAME_KEYS, N.TOOL_CALL_ID_KEYS, ("error.type",), ("traceloop.entity.name",),
          ("gen_ai.operation.name", "openinference.span.kind", "llm.request.type", "traceloop.span.kind",
           "langsmith.span.kind", "langfuse.observation.type"), ("gen_ai.response.id", "ai.response.id"),
          ("gen_ai.prompt.0.content", "input.value"), ("user.email",), ("app.outcome",),
          ("gen_ai.openai.response.service_tier", "anthropic.usage.cache_creation.ephemeral_1h_input_tokens",
           "output.value"), ("server.address",),
          *DEFAULT_KEYS.values()]


@st.composite
def a_shape(draw) -> list[str]:
    keys = []
    for group in GROUPS:
        if draw(st.booleans()):
            keys.append(draw(st.sampled_from(group)))
    return list(dict.fromkeys(keys))


@st.composite
def a_span(draw, keys: list[str] | None = None, clean: bool = False):
    if keys is None:
        keys = draw(st.lists(st.sampled_from(KEYS), max_size=14, unique=True))
    attrs = {k: _value(draw, k, clean) for k in keys}
    parent = draw(st.sampled_from([b""] + SPAN_IDS[:5]))
    start = T0 + draw(st.integers(0, 4)) * 1_000_000
    return span(name=draw(st.sampled_from(NAMES)), trace_id=draw(st.sampled_from(TRACES)),
                span_id=draw(st.sampled_from(SPAN_IDS)), parent=parent, start=start,
                duration_ns=draw(st.sampled_from([1_000_000, 3_000_000, 10_000_000])),
                kind=draw(st.sampled_from([Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL, Span.SPAN_KIND_SERVER])),
                attrs=attrs, status=draw(st.sampled_from([0, 1, 2])))


@st.composite
def a_twin(draw, of: Span):
    """Another instrumentation's report of the same call: same trace and times, the parent or a
    sibling of it, the same output, the input with or without the cache counts, maybe no usage."""
    attrs = {kv.key: kv.value for kv in of.attributes}
    twin = Span()
    twin.CopyFrom(of)
    twin.span_id = draw(st.sampled_from(SPAN_IDS))
    twin.parent_span_id = draw(st.sampled_from([of.span_id, of.parent_span_id]))
    del twin.attributes[:]
    keep = draw(st.lists(st.sampled_from(sorted(attrs)), unique=True)) if attrs else []
    twin.attributes.extend(kv for kv in of.attributes if kv.key in keep)
    if "gen_ai.usage.input_tokens" in attrs and draw(st.booleans()):
        cache = draw(st.sampled_from(["50", "0"]))
        twin.attributes.add(key="gen_ai.usage.cache_read.input_tokens").value.string_value = cache
    return twin


@st.composite
def a_request(draw):
    resource_keys = draw(st.lists(st.sampled_from(["tenant.id", "app.feature", "deployment.environment.name",
                                                   "user.id", "langfuse.trace.metadata.tenant_id"]), unique=True))
    resource = {k: draw(st.sampled_from(ATTRIBUTION_VALUES)) for k in resource_keys}
    if draw(st.booleans()):  # one instrumentation's spans: one shape, often clean (fast/normalize.py's path)
        keys = draw(a_shape())
        spans = draw(st.lists(a_span(keys, clean=draw(st.booleans())), min_size=1, max_size=12))
    else:
        spans = draw(st.lists(a_span(), min_size=1, max_size=12))
    req = request(spans, resource=resource, scope=draw(st.sampled_from(SCOPES)))
    # A second instrumentation in the same request, reporting some of the same calls again.
    twins = [draw(a_twin(s)) for s in spans if draw(st.integers(0, 2)) == 0]
    if twins:
        second = req.resource_spans[0].scope_spans.add()
        second.scope.name = draw(st.sampled_from(SCOPES))
        second.spans.extend(twins)
    return req.SerializeToString(), draw(st.sampled_from(["", "", "acme"]))


CONFIGS = [
    dict(user_id_mode="pseudonymize", user_id_key=b"k" * 32),
    dict(user_id_mode="raw", outcome_attribute="app.outcome", outcome_success_values=("success",)),
    dict(user_id_mode="drop", require=("tenant",)),
]
PRICES = PriceTable()


def _pipelines(config: dict, min_group: int = 1) -> tuple[Pipeline, Pipeline]:
    """(fast, reference). ``min_group`` 1: every shape group the test draws goes columnar (the
    service sends groups under ``MIN_GROUP`` rows to the reference)."""
    def one(reference: bool) -> Pipeline:
        attributor = (Attributor if reference else ColumnarAttributor)(**config)
        return Pipeline(PRICES, attributor, content=Content(capture=config["user_id_mode"] == "raw"),
                        calls=DuplicateCalls() if reference else TraceCalls(), reference=reference)
    fast = one(False)
    fast._normalize = Normalizer(min_group)
    return fast, one(True)


def _same(fast: Pipeline, reference: Pipeline, body: bytes, tenant: str) -> None:
    decoded = decode_protobuf(body).batch
    ctx = RequestContext(tenant=tenant)
    got, want = fast(copy.deepcopy(decoded), ctx), reference(copy.deepcopy(decoded), ctx)
    assert len(got.batch) == len(want.batch), (got.rejects, want.rejects)
    for name in FIELD_NAMES:
        g, w = getattr(got.batch, name), getattr(want.batch, name)
        for i, (a, b) in enumerate(zip(g, w)):
            assert a == b, f"{name} of span {i} ({got.batch.name[i]!r}): fast {a!r}, reference {b!r}"
    assert (got.rejects, got.tenant_overridden, got.late_traces) == \
        (want.rejects, want.tenant_overridden, want.late_traces)


@pytest.mark.parametrize("config", CONFIGS, ids=["pseudonymize", "raw-outcome", "drop-require"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(requests=st.lists(a_request(), min_size=1, max_size=4))
def test_generated_spans_of_every_dialect(config, requests):
    fast, reference = _pipelines(config)
    for body, tenant in requests:
        _same(fast, reference, body, tenant)


@pytest.mark.parametrize("library", libraries())
@pytest.mark.parametrize("min_group", [1, MIN_GROUP], ids=["every-group-columnar", "as-served"])
def test_the_recorded_corpus(library, min_group):
    fast, reference = _pipelines(CONFIGS[0], min_group)
    for _, body in load(library).requests:
        _same(fast, reference, body, "")


def test_a_lazily_remembered_trace_is_indexed_in_the_keep_order():
    """A trace whose calls repeated nothing is remembered lazily (fast/calls.py) and indexed when it
    is reported again. Its siblings must then be found in the keep order (more input first), as
    the reference finds them: a later call without usage, overlapping both, repeats the first."""
    tid, parent, first, second, third = b"\x01" * 16, b"\x02" * 8, b"\x03" * 8, b"\x04" * 8, b"\x06" * 8

    def chat(sid, attrs):
        return span(name="chat", trace_id=tid, span_id=sid, parent=parent, start=T0, duration_ns=10_000_000,
                    attrs={"gen_ai.operation.name": "chat", "gen_ai.response.model": "gpt-4o", **attrs})

    # In the request, the call with the most input (the first in the keep order) is neither first nor last.
    earlier = request([chat(second, {"gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 8,
                                     "gen_ai.response.id": "r2"}),
                       chat(first, {"gen_ai.usage.input_tokens": 200, "gen_ai.usage.output_tokens": 7,
                                    "gen_ai.response.id": "r1"}),
                       chat(third, {"gen_ai.usage.input_tokens": 50, "gen_ai.usage.output_tokens": 9})],
                      scope=SCOPES[0]).SerializeToString()
    later = request([chat(b"\x05" * 8, {})], scope=SCOPES[1]).SerializeToString()
    fast, reference = _pipelines(CONFIGS[0])
    _same(fast, reference, earlier, "")
    assert type(fast.calls._traces[next(iter(fast.calls._traces))]).__name__ == "_Lazy"
    _same(fast, reference, later, "")
    again = fast(decode_protobuf(later).batch).batch
    assert again.excluded_reason == [f"duplicate_of:{first.hex()}"]


def test_trace_calls_forget_the_oldest_trace_first():
    from tests.enrich_helpers import batch_of
    from tests.unit.test_attribute import _chat

    calls = TraceCalls(max_entries=3)
    traces = [bytes([k + 1]) * 16 for k in range(5)]
    for k, tid in enumerate(traces):  # one call in each of five traces: the last three are remembered
        calls(N.normalize(batch_of(_chat({"gen_ai.response.id": f"r{k}"}, trace_id=tid))))
    assert len(calls) == 3 and len(calls._traces) == 3
    again = calls(N.normalize(batch_of(_chat({"gen_ai.response.id": "r4"}, trace_id=traces[4]))))
    assert again.counted == [0]  # still known
    forgotten = calls(N.normalize(batch_of(_chat({"gen_ai.response.id": "r0"}, trace_id=traces[0]))))
    assert forgotten.counted == [1]  # the oldest trace was forgotten
    assert len(calls) == 3


def test_trace_memory_forgets_the_oldest_trace_first():
    from tests.enrich_helpers import CLIENT, INTERNAL, batch_of
    from tokenpulse.enrich.fast.attribute import TraceMemory

    attributor = ColumnarAttributor(user_id_mode="raw", memory=TraceMemory(max_traces=2, max_spans=100))
    traces = [bytes([k + 1]) * 16 for k in range(3)]
    for t in traces:  # tagged roots of three traces: the last two are remembered
        attributor(batch_of(("root", INTERNAL, {"tenant.id": "t-" + t.hex()[:4]}, {"trace_id": t})))
    assert len(attributor.memory.records) == 2
    children, _ = attributor(batch_of(*[("child", CLIENT, {}, {"trace_id": t, "parent": b"\x07" * 8})
                                        for t in traces]))
    assert children.tenant == ["unattributed", "t-" + traces[1].hex()[:4], "t-" + traces[2].hex()[:4]]
    few_spans = ColumnarAttributor(user_id_mode="raw", memory=TraceMemory(max_traces=100, max_spans=3))
    for t in traces:  # two spans per trace: past 3 spans, whole traces go, oldest first
        few_spans(batch_of(("a", INTERNAL, {}, {"trace_id": t}), ("b", INTERNAL, {}, {"trace_id": t})))
    assert list(few_spans.memory.records) == [traces[2].hex()] and few_spans.memory.spans == 2

"""Normalize, one table row per dialect (spans built as each library emits them,
per docs/sources.md#genai-semconv and the recordings in tests/conformance/)."""

from __future__ import annotations

import pytest

from tests.enrich_helpers import CLIENT, INTERNAL, batch_of
from tokenpulse.enrich.normalize import normalize, normalize_provider, parse_count

F = ("operation", "provider", "model", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
     "reasoning_tokens", "total_tokens", "usage_status", "counted", "excluded_reason")

CASES = [
    # name, span name, kind, attributes, expected (by F)
    ("semconv current (openai-v2 latest)", "chat gpt-4o", CLIENT, {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300, "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.reasoning.output_tokens": 100},
     ("chat", "openai", "gpt-4o-2024-08-06", 1200, 300, 1000, 0, 100, 1500, "ok", 1, "")),
    ("semconv SCG cache_write name", "chat claude", CLIENT, {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.usage.input_tokens": 1500, "gen_ai.usage.output_tokens": 10,
        "gen_ai.usage.cache_read.input_tokens": 1000, "gen_ai.usage.cache_write.input_tokens": 300},
     ("chat", "anthropic", "claude-sonnet-4-5", 1500, 10, 1000, 300, 0, 1510, "ok", 1, "")),
    ("semconv deprecated names, legacy system", "chat gpt-4o", CLIENT, {
        "gen_ai.operation.name": "chat", "gen_ai.system": "az.ai.openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.prompt_tokens": 50, "gen_ai.usage.completion_tokens": 7},
     ("chat", "azure.ai.openai", "gpt-4o", 50, 7, 0, 0, 0, 57, "ok", 1, "")),
    ("OpenLLMetry <=0.47", "openai.chat", CLIENT, {
        "gen_ai.system": "OpenAI", "llm.request.type": "chat", "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.prompt_tokens": 900, "gen_ai.usage.completion_tokens": 100,
        "gen_ai.usage.cache_read_input_tokens": 512, "llm.usage.total_tokens": 1000},
     ("chat", "openai", "gpt-4o", 900, 100, 512, 0, 0, 1000, "ok", 1, "")),
    ("OpenLLMetry 0.48-0.54", "openai.chat", CLIENT, {
        "gen_ai.system": "openai", "llm.request.type": "chat", "gen_ai.response.model": "o3",
        "gen_ai.usage.input_tokens": 400, "gen_ai.usage.output_tokens": 900,
        "gen_ai.usage.cache_read_input_tokens": 0, "llm.usage.total_tokens": 1300, "llm.usage.reasoning_tokens": 700},
     ("chat", "openai", "o3", 400, 900, 0, 0, 700, 1300, "ok", 1, "")),
    ("OpenLLMetry >=0.55 anthropic (sums cache into input)", "anthropic.chat", CLIENT, {
        "gen_ai.provider.name": "anthropic", "llm.request.type": "chat", "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.usage.input_tokens": 1500, "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 1000, "gen_ai.usage.cache_creation.input_tokens": 300,
        "gen_ai.usage.total_tokens": 1520},
     ("chat", "anthropic", "claude-sonnet-4-5", 1500, 20, 1000, 300, 0, 1520, "ok", 1, "")),
    ("OpenInference", "ChatCompletion", INTERNAL, {
        "openinference.span.kind": "LLM", "llm.provider": "openai", "llm.system": "openai", "llm.model_name": "gpt-4o",
        "llm.token_count.prompt": 1200, "llm.token_count.completion": 80, "llm.token_count.total": 1280,
        "llm.token_count.prompt_details.cache_read": 1024, "llm.token_count.completion_details.reasoning": 30,
        "llm.cost.total": 0.0123},
     ("chat", "openai", "gpt-4o", 1200, 80, 1024, 0, 30, 1280, "ok", 1, "")),
    ("OpenLIT", "chat gpt-4o-mini", CLIENT, {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 60, "gen_ai.usage.reasoning_tokens": 20,
        "gen_ai.usage.cost": 0.0004, "gen_ai.client.token.usage": 160, "service.name": "chat-svc"},
     ("chat", "openai", "gpt-4o-mini", 100, 60, 0, 0, 20, 160, "ok", 1, "")),
    ("Vercel v4-v6 doGenerate", "ai.generateText.doGenerate", CLIENT, {
        "gen_ai.system": "openai.chat", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 300,
        "gen_ai.usage.output_tokens": 40, "ai.usage.promptTokens": 300, "ai.usage.completionTokens": 40,
        "ai.model.id": "gpt-4o", "ai.model.provider": "openai.chat"},
     ("chat", "openai", "gpt-4o", 300, 40, 0, 0, 0, 340, "ok", 1, "")),
    ("Vercel outer ai.generateText (aggregate)", "ai.generateText", INTERNAL, {
        "ai.usage.promptTokens": 600, "ai.usage.completionTokens": 80, "ai.model.id": "gpt-4o",
        "ai.model.provider": "openai.chat"},
     ("chain", "openai", "gpt-4o", 0, 0, 0, 0, 0, 0, "ok", 0, "aggregate:vercel_outer")),
    ("Vercel anthropic (raw, cache-exclusive input)", "ai.generateText.doGenerate", CLIENT, {
        "gen_ai.system": "anthropic.messages", "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.usage.input_tokens": 200, "gen_ai.usage.output_tokens": 30, "ai.usage.promptTokens": 200,
        "ai.usage.cachedInputTokens": 100, "ai.model.provider": "anthropic.messages"},
     ("chat", "anthropic", "claude-sonnet-4-5", 300, 30, 100, 0, 0, 330, "ok", 1, "")),
    ("Vercel legacy inputTokenDetails", "ai.streamText.doStream", CLIENT, {
        "ai.model.provider": "amazon-bedrock", "ai.model.id": "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "ai.usage.inputTokens": 200, "ai.usage.outputTokens": 5,
        "ai.usage.inputTokenDetails.noCacheTokens": 200, "ai.usage.inputTokenDetails.cacheReadTokens": 1000,
        "ai.usage.inputTokenDetails.cacheWriteTokens": 50},
     ("chat", "aws.bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", 1250, 5, 1000, 50, 0, 1255, "ok", 1, "")),
    ("Vercel v7 root invoke_agent (aggregate)", "invoke_agent gpt-4o", INTERNAL, {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support-bot", "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 5000, "gen_ai.usage.output_tokens": 400},
     ("invoke_agent", "openai", "", 0, 0, 0, 0, 0, 0, "ok", 0, "aggregate:invoke_agent")),
    ("Pydantic AI chat", "chat claude-sonnet-4-5", CLIENT, {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.usage.input_tokens": 2000,
        "gen_ai.usage.output_tokens": 500, "gen_ai.usage.cache_read.input_tokens": 1500,
        "gen_ai.usage.details.reasoning_tokens": 200, "operation.cost": 0.01},
     ("chat", "anthropic", "claude-sonnet-4-5", 2000, 500, 1500, 0, 200, 2500, "ok", 1, "")),
    ("Pydantic AI agent run (aggregated_usage)", "agent run", INTERNAL, {
        "gen_ai.agent.name": "agent", "gen_ai.aggregated_usage.input_tokens": 9000,
        "gen_ai.aggregated_usage.output_tokens": 900},
     ("invoke_agent", "", "", 0, 0, 0, 0, 0, 0, "ok", 0, "aggregate:aggregated_usage")),
    ("Langfuse usage_details (cache-exclusive)", "generation", INTERNAL, {
        "langfuse.observation.type": "generation", "gen_ai.operation.name": "chat",
        "langfuse.observation.model.name": "claude-3-5-haiku-20241022",
        "langfuse.observation.usage_details": '{"input": 200, "output": 50, "cache_read_input_tokens": 1000, '
                                              '"output_reasoning_tokens": 10}',
        "langfuse.observation.cost_details": '{"total": 0.0021}'},
     ("chat", "", "claude-3-5-haiku-20241022", 1200, 60, 1000, 0, 10, 1260, "ok", 1, "")),
    ("LangSmith (stringified dict details)", "ChatAnthropic", CLIENT, {
        "gen_ai.operation.name": "chat", "gen_ai.system": "anthropic", "langsmith.span.kind": "llm",
        "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300, "gen_ai.usage.total_tokens": 1500,
        "gen_ai.usage.input_token_details": "{'cache_read': 1000, 'cache_creation': 0}",
        "gen_ai.usage.output_token_details": "{'reasoning': 100}"},
     ("chat", "anthropic", "claude-sonnet-4-5", 1200, 300, 1000, 0, 100, 1500, "ok", 1, "")),
    ("anthropic parts exceed input: raw count corrected", "chat", CLIENT, {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-opus-4-1",
        "gen_ai.usage.input_tokens": 20, "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read.input_tokens": 3000},
     ("chat", "anthropic", "claude-opus-4-1", 3020, 5, 3000, 0, 0, 3025, "ok", 1, "")),
    ("embeddings", "embeddings text-embedding-3-small", CLIENT, {
        "gen_ai.operation.name": "embeddings", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "text-embedding-3-small", "gen_ai.usage.input_tokens": 64},
     ("embeddings", "openai", "text-embedding-3-small", 64, 0, 0, 0, 0, 64, "ok", 1, "")),
    ("CLIENT span with usage, no operation", "llm call", CLIENT, {"gen_ai.usage.input_tokens": 10},
     ("chat", "", "", 10, 0, 0, 0, 0, 10, "ok", 1, "")),
    ("INTERNAL span with a model and usage, no operation (hand-written)", "my llm call", INTERNAL, {
        "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 2},
     ("chat", "", "gpt-4o", 10, 2, 0, 0, 0, 12, "ok", 1, "")),
    ("INTERNAL span with usage but no model, no operation", "step", INTERNAL, {"gen_ai.usage.input_tokens": 10},
     ("", "", "", 0, 0, 0, 0, 0, 0, "ok", 0, "not_inference:unknown")),
    ("Langfuse generation without operation, raw OpenAI usage (recorded, langfuse 5.0.4)", "OpenAI-generation",
     INTERNAL, {"langfuse.observation.type": "generation", "langfuse.observation.model.name": "gpt-4o-2024-08-06",
                "langfuse.observation.usage_details": '{"completion_tokens": 317, "prompt_tokens": 355, '
                '"total_tokens": 672, "completion_tokens_details": {"reasoning_tokens": 17}, '
                '"prompt_tokens_details": {"cached_tokens": 128, "audio_tokens": 0}}'},
     ("chat", "", "gpt-4o-2024-08-06", 355, 317, 128, 0, 17, 672, "ok", 1, "")),
    ("Langfuse Responses-API usage (recorded)", "OpenAI-generation", INTERNAL, {
        "langfuse.observation.type": "generation", "langfuse.observation.model.name": "o4-mini-2025-04-16",
        "langfuse.observation.usage_details": '{"input_tokens": 1861, "input_tokens_details": {"cached_tokens": 896}, '
                                              '"output_tokens": 533, "output_tokens_details": {"reasoning_tokens": 126}, '
                                              '"total_tokens": 2394}'},
     ("chat", "", "o4-mini-2025-04-16", 1861, 533, 896, 0, 126, 2394, "ok", 1, "")),
    ("Langfuse embedding (recorded)", "OpenAI-embedding", INTERNAL, {
        "langfuse.observation.type": "embedding", "langfuse.observation.model.name": "text-embedding-3-small",
        "langfuse.observation.usage_details": '{"input": 198}'},
     ("embeddings", "", "text-embedding-3-small", 198, 0, 0, 0, 0, 198, "ok", 1, "")),
    ("Langfuse span observation: no operation", "step", INTERNAL, {"langfuse.observation.type": "span"},
     ("", "", "", 0, 0, 0, 0, 0, 0, "none", 1, "")),
    ("OpenInference embedding model key", "CreateEmbeddings", INTERNAL, {
        "openinference.span.kind": "EMBEDDING", "embedding.model_name": "text-embedding-3-small",
        "llm.token_count.prompt": 106, "llm.token_count.total": 106},
     ("embeddings", "", "text-embedding-3-small", 106, 0, 0, 0, 0, 106, "ok", 1, "")),
    ("tool span with tokens: not inference", "execute_tool search", INTERNAL, {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search", "gen_ai.usage.input_tokens": 10},
     ("execute_tool", "", "", 0, 0, 0, 0, 0, 0, "ok", 0, "not_inference:execute_tool")),
    ("inference span without usage", "chat gpt-4o", CLIENT, {"gen_ai.operation.name": "chat"},
     ("chat", "", "", 0, 0, 0, 0, 0, 0, "missing", 1, "")),
    ("plain HTTP span", "GET /users", 2, {"http.route": "/users"},
     ("", "", "", 0, 0, 0, 0, 0, 0, "none", 1, "")),
    ("negative count", "chat", CLIENT, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": -5,
                                        "gen_ai.usage.output_tokens": 3},
     ("chat", "", "", 0, 3, 0, 0, 0, 3, "negative", 1, "")),
    ("non-integer count", "chat", CLIENT, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 12.5},
     ("chat", "", "", 0, 0, 0, 0, 0, 0, "non_integer", 1, "")),
    ("NaN count", "chat", CLIENT, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": float("nan")},
     ("chat", "", "", 0, 0, 0, 0, 0, 0, "nan", 1, "")),
    ("absurd count", "chat", CLIENT, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 20_000_000,
                                      "gen_ai.usage.output_tokens": 9},
     ("chat", "", "", 0, 9, 0, 0, 0, 9, "absurd", 1, "")),
    ("text count", "chat", CLIENT, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "lots"},
     ("chat", "", "", 0, 0, 0, 0, 0, 0, "non_integer", 1, "")),
]


@pytest.mark.parametrize("name, span_name, kind, attrs, expected", CASES, ids=[c[0] for c in CASES])
def test_dialect(name, span_name, kind, attrs, expected):
    b = normalize(batch_of((span_name, kind, attrs)))
    got = tuple(getattr(b, f)[0] for f in F)
    assert dict(zip(F, got)) == dict(zip(F, expected))


def test_reported_cost_agent_tool_error():
    b = normalize(batch_of(
        ("ChatCompletion", INTERNAL, {"openinference.span.kind": "LLM", "llm.cost.total": 0.0123}),
        ("chat", CLIENT, {"gen_ai.usage.cost": "bogus"}),
        ("generation", INTERNAL, {"langfuse.observation.cost_details": '{"total": 0.5}'}),
        ("invoke_agent planner", INTERNAL, {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner",
                                           "gen_ai.agent.id": "asst_1"}),
        ("ai.toolCall", INTERNAL, {"ai.toolCall.name": "search", "ai.toolCall.id": "call_9"}),
        ("chat", CLIENT, {"error.type": "RateLimitError"}, {"status": 2}),
        ("chat", CLIENT, {}, {"status": 2}),
    ))
    assert b.reported_cost_usd[:3] == [0.0123, None, 0.5]
    assert (b.agent_name[3], b.agent_id[3], b.operation[3]) == ("planner", "asst_1", "invoke_agent")
    assert (b.tool_name[4], b.tool_call_id[4], b.operation[4]) == ("search", "call_9", "execute_tool")
    assert b.error_type[5:] == ["RateLimitError", "_OTHER"]


@pytest.mark.parametrize("raw, expected", [
    ("openai", "openai"), ("OpenAI", "openai"), ("az.ai.openai", "azure.ai.openai"), ("az.ai.inference",
     "azure.ai.inference"), ("vertex_ai", "gcp.vertex_ai"), ("gemini", "gcp.gemini"), ("xai", "x_ai"),
    ("Azure", "azure.ai.openai"), ("AWS", "aws.bedrock"), ("aws.bedrock", "aws.bedrock"),
    ("amazon-bedrock", "aws.bedrock"), ("openai.chat", "openai"), ("anthropic.messages", "anthropic"),
    ("google.vertex.chat", "gcp.vertex_ai"), ("google.generative-ai", "gcp.gemini"), ("mistral.chat", "mistral_ai"),
    ("some-new-provider", "some-new-provider"),
])
def test_provider_names(raw, expected):
    assert normalize_provider(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("12", (12, "")), ("0", (0, "")), ("12.0", (12, "")), ("1e3", (1000, "")), ("-1", (0, "negative")),
    ("12.5", (0, "non_integer")), ("nan", (0, "nan")), ("inf", (0, "absurd")), ("10000001", (0, "absurd")),
    ("10000000", (10_000_000, "")), ("", (0, "non_integer")), ("true", (0, "non_integer")),
])
def test_parse_count(raw, expected):
    assert parse_count(raw) == expected


def test_quirks_keyed_by_instrumentation_scope():
    """OpenLIT's Anthropic spans carry Anthropic's cache-exclusive input even when the cache is smaller
    than the input; Langfuse's OpenAI-* observations name their provider. Another scope: neither."""
    from tests.otlp import request, span
    from tokenpulse.otlp.decode import decode_protobuf

    def one(scope, name, attrs):
        body = request([span(name=name, kind=INTERNAL, attrs=attrs)], scope=scope).SerializeToString()
        b = normalize(decode_protobuf(body).batch)
        return b.provider[0], b.input_tokens[0], b.cache_read_tokens[0]

    anthropic = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                 "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.usage.input_tokens": 869,
                 "gen_ai.usage.output_tokens": 410, "gen_ai.usage.cache_read_input_tokens": 461}
    assert one("openlit.instrumentation.anthropic", "chat claude-sonnet-4-5", anthropic) == ("anthropic", 1330, 461)
    assert one("opentelemetry.instrumentation.anthropic", "anthropic.chat", anthropic) == ("anthropic", 869, 461)
    lf = {"langfuse.observation.type": "generation", "langfuse.observation.model.name": "gpt-4o",
          "langfuse.observation.usage_details": '{"prompt_tokens": 10, "completion_tokens": 2}'}
    assert one("langfuse-sdk", "OpenAI-generation", lf) == ("openai", 10, 0)
    assert one("langfuse-sdk", "my-generation", lf) == ("", 10, 0)
    assert one("other", "OpenAI-generation", lf) == ("", 10, 0)


def test_storage_sums_the_same_calls_normalize_counts():
    """usage_minute's view (migration 0003) and late attribution's move name the inference
    operations in SQL; they must be normalize's."""
    import re
    from pathlib import Path

    from tokenpulse.enrich.normalize import INFERENCE_OPERATIONS
    from tokenpulse.storage import late_attribution

    assert set(re.findall(r"'(\w+)'", late_attribution.INFERENCE)) == INFERENCE_OPERATIONS
    view = (Path(late_attribution.__file__).parent / "migrations" / "0003_rollups.sql").read_text()
    assert "s.operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')" in view

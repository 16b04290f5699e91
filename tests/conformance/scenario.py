"""One library's scenario: the official SDKs, one real instrumentation, real OTel exporters.

Run by ``record.py`` inside that library's own virtual environment (their pins conflict), so
this file imports nothing from tokenpulse. Environment:

    CONFORMANCE_LIBRARY   which setup below (e.g. ``openllmetry``)
    CONFORMANCE_PROVIDER  the fake provider's base URL
    CONFORMANCE_OTLP      the sink's gRPC endpoint (``127.0.0.1:PORT``)

Every call names itself to the fake provider (``x-conformance-call``), which logs the usage it
served under that name. The instrumentation is set up exactly as its docs say, unmodified.
"""

from __future__ import annotations

import json
import os
import sys
import time

LIBRARY = os.environ["CONFORMANCE_LIBRARY"]
PROVIDER = os.environ["CONFORMANCE_PROVIDER"]
OTLP = os.environ["CONFORMANCE_OTLP"]
HEADERS = {"x-conformance-library": LIBRARY}
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello to Ada."}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather in a city",
                  "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
LONG_SYSTEM = [{"type": "text", "text": "You are a careful assistant. " * 200, "cache_control": {"type": "ephemeral"}}]
LONG_SYSTEM_1H = [{"type": "text", "text": "You are a careful assistant. " * 200,
                   "cache_control": {"type": "ephemeral", "ttl": "1h"}}]


def tracer_provider():
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tp = TracerProvider(resource=Resource.create({"service.name": f"conformance-{LIBRARY}"}))
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=OTLP, insecure=True),
                                             schedule_delay_millis=200))
    trace.set_tracer_provider(tp)
    return tp


def h(call: str) -> dict:
    return {"x-conformance-call": call}


def step(call: str, fn) -> None:
    """One call; a provider error (the 429 scenarios) is what the scenario wants, not a failure."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the 429 raises the SDK's RateLimitError
        if not call.startswith("rate_limited"):
            raise
        print(f"{call}: {type(e).__name__}", file=sys.stderr)
    time.sleep(0.02)  # calls never overlap in time: the recorder maps spans to calls by interval


# ---------------------------------------------------------------------------- OpenAI SDK
def openai_calls(client_factory=None) -> None:
    import openai

    client = (client_factory or openai.OpenAI)(base_url=PROVIDER + "/v1", api_key="sk-fake",
                                               default_headers=HEADERS)
    no_retry = client.with_options(max_retries=0)

    def consume(stream):
        for _ in stream:
            pass

    step("chat", lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                        extra_headers=h("chat")))
    step("chat_stream_usage", lambda: consume(client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_headers=h("chat_stream_usage"))))
    step("chat_stream_no_usage", lambda: consume(client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=h("chat_stream_no_usage"))))
    step("chat_tools", lambda: client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=[WEATHER_TOOL], extra_headers=h("chat_tools")))
    step("chat_cached", lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                               extra_headers=h("chat_cached")))
    step("chat_reasoning", lambda: client.chat.completions.create(model="o4-mini", messages=MESSAGES,
                                                                  extra_headers=h("chat_reasoning")))
    step("embeddings", lambda: client.embeddings.create(model="text-embedding-3-small", input=["Ada", "Grace"],
                                                        extra_headers=h("embeddings")))
    step("responses", lambda: client.responses.create(model="gpt-4o-mini", input="Say hello.",
                                                      extra_headers=h("responses")))
    step("responses_stream", lambda: consume(client.responses.create(
        model="gpt-4o-mini", input="Say hello.", stream=True, extra_headers=h("responses_stream"))))
    step("responses_reasoning_cached", lambda: client.responses.create(
        model="o4-mini", input="Think, then say hello.", extra_headers=h("responses_reasoning_cached")))
    step("rate_limited_chat", lambda: no_retry.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers=h("rate_limited_chat")))


# ---------------------------------------------------------------------------- Anthropic SDK
def anthropic_calls() -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=PROVIDER, api_key="sk-ant-fake", default_headers=HEADERS)
    no_retry = client.with_options(max_retries=0)
    user = [{"role": "user", "content": "Say hello to Ada."}]
    common = {"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": user}

    def stream_true(call, **kw):
        for _ in client.messages.create(**{**common, **kw}, stream=True, extra_headers=h(call)):
            pass

    def stream_helper(call, **kw):
        with client.messages.stream(**{**common, **kw}, extra_headers=h(call)) as s:
            for _ in s.text_stream:
                pass
            s.get_final_message()

    step("messages", lambda: client.messages.create(**common, extra_headers=h("messages")))
    step("messages_stream_true", lambda: stream_true("messages_stream_true"))
    step("messages_stream_helper", lambda: stream_helper("messages_stream_helper"))
    step("messages_tools", lambda: client.messages.create(**common, tools=[ANTHROPIC_TOOL],
                                                          extra_headers=h("messages_tools")))
    step("messages_cache_read", lambda: client.messages.create(**common, system=LONG_SYSTEM,
                                                               extra_headers=h("messages_cache_read")))
    step("messages_cache_write", lambda: client.messages.create(**common, system=LONG_SYSTEM,
                                                                extra_headers=h("messages_cache_write")))
    step("messages_cache_read_write_1h", lambda: client.messages.create(
        **common, system=LONG_SYSTEM_1H, extra_headers=h("messages_cache_read_write_1h")))
    step("messages_stream_cache_read_write", lambda: stream_true("messages_stream_cache_read_write",
                                                                 system=LONG_SYSTEM))
    step("messages_haiku", lambda: client.messages.create(**{**common, "model": "claude-3-5-haiku-latest"},
                                                          extra_headers=h("messages_haiku")))
    step("rate_limited_messages", lambda: no_retry.messages.create(**common,
                                                                   extra_headers=h("rate_limited_messages")))


# ---------------------------------------------------------------------------- setups
def setup_otel_openai_v2(tp) -> list:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=tp)
    return [openai_calls]


def setup_openllmetry(tp) -> list:
    from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=tp)
    AnthropicInstrumentor().instrument(tracer_provider=tp)
    return [openai_calls, anthropic_calls]


def setup_openinference(tp) -> list:
    from openinference.instrumentation.anthropic import AnthropicInstrumentor
    from openinference.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=tp)
    AnthropicInstrumentor().instrument(tracer_provider=tp)
    return [openai_calls, anthropic_calls]


def setup_two_instrumentations(tp) -> list:
    """Two instrumentations on one client: each call is reported by both."""
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor as OpenLLMetry
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as OTelV2

    OTelV2().instrument(tracer_provider=tp)
    OpenLLMetry().instrument(tracer_provider=tp)
    return [openai_calls]


SETUPS = {
    "otel-openai-v2": setup_otel_openai_v2,
    "otel-openai-v2-latest": setup_otel_openai_v2,  # the same, with OTEL_SEMCONV_STABILITY_OPT_IN set
    "openllmetry": setup_openllmetry,
    "openinference": setup_openinference,
    "two-instrumentations": setup_two_instrumentations,
}


def main() -> None:
    root_attrs = {"tenant.id": "tenant-acme", "app.feature": "conformance", "user.id": "ada@example.com"}
    if LIBRARY in SETUPS:
        tp = tracer_provider()
        runs = SETUPS[LIBRARY](tp)
        tracer = tp.get_tracer("tokenpulse.conformance")
        for run in runs:
            with tracer.start_as_current_span(f"conformance {run.__name__}", attributes=root_attrs):
                run()
        tp.force_flush()
        tp.shutdown()
    else:
        OWN_SETUPS[LIBRARY](root_attrs)
    print(json.dumps({"library": LIBRARY, "ok": True}))


# ---------------------------------------------------------------------------- libraries that set up OTel themselves
def grpc_exporter():
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=OTLP, insecure=True)


def run_traceloop_sdk(root_attrs: dict) -> None:
    """OpenLLMetry's SDK: Traceloop.init with our exporter, a workflow, association properties."""
    from traceloop.sdk import Traceloop
    from traceloop.sdk.decorators import workflow

    Traceloop.init(app_name=f"conformance-{LIBRARY}", exporter=grpc_exporter(), telemetry_enabled=False)
    Traceloop.set_association_properties({"tenant_id": root_attrs["tenant.id"], "feature": "conformance",
                                          "user_id": root_attrs["user.id"]})

    @workflow(name="conformance_openai")
    def openai_workflow():
        openai_calls()

    @workflow(name="conformance_anthropic")
    def anthropic_workflow():
        anthropic_calls()

    openai_workflow()
    anthropic_workflow()
    from opentelemetry import trace

    trace.get_tracer_provider().force_flush()


def run_openlit(root_attrs: dict) -> None:
    """OpenLIT on a provider the application configured (openlit.init reuses it)."""
    import openlit

    tp = tracer_provider()
    openlit.init(application_name=f"conformance-{LIBRARY}", environment="conformance", disable_metrics=True,
                 disable_events=True)
    tracer = tp.get_tracer("tokenpulse.conformance")
    for run in (openai_calls, anthropic_calls):
        with tracer.start_as_current_span(f"conformance {run.__name__}", attributes=root_attrs):
            run()
    tp.force_flush()
    tp.shutdown()


def run_langfuse(root_attrs: dict) -> None:
    """The Langfuse SDK: its OpenAI drop-in, @observe, trace attributes propagated. ``langfuse``
    exports with its own OTLP/HTTP exporter (to the fake provider's /api/public/otel/v1/traces);
    ``langfuse-grpc`` gives it an OTLP gRPC exporter instead."""
    from langfuse import Langfuse, observe, propagate_attributes
    from langfuse.openai import OpenAI

    kw = {"span_exporter": grpc_exporter()} if LIBRARY == "langfuse-grpc" else {}
    client = Langfuse(public_key="pk-lf-fake", secret_key="sk-lf-fake", base_url=PROVIDER, **kw)

    @observe(name="conformance langfuse")
    def agent():
        with propagate_attributes(user_id=root_attrs["user.id"], session_id="session-1",
                                  metadata={"tenant_id": root_attrs["tenant.id"], "feature": "conformance"}):
            openai_calls(client_factory=OpenAI)

    agent()
    client.flush()
    client.shutdown()


def run_pydantic_ai(root_attrs: dict) -> None:
    """A Pydantic AI agent with a tool (two model calls), then a plain one (one call)."""
    import openai
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    tp = tracer_provider()
    client = openai.AsyncOpenAI(base_url=PROVIDER + "/v1", api_key="sk-fake",
                                default_headers={**HEADERS, "x-conformance-call": "agent_run"})
    model = OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(openai_client=client))
    Agent.instrument_all(True)  # pydantic-ai 2.x: the documented switch, spans on the global provider
    agent = Agent(model, name="weather_agent")

    @agent.tool_plain
    def get_weather(city: str) -> str:
        return f"Sunny in {city}"

    tracer = tp.get_tracer("tokenpulse.conformance")
    with tracer.start_as_current_span("conformance pydantic_ai", attributes=root_attrs):
        agent.run_sync("What is the weather in Paris?")
        time.sleep(0.02)
        client2 = openai.AsyncOpenAI(base_url=PROVIDER + "/v1", api_key="sk-fake",
                                     default_headers={**HEADERS, "x-conformance-call": "agent_run_cached"})
        model2 = OpenAIChatModel("gpt-4o", provider=OpenAIProvider(openai_client=client2))
        Agent(model2, name="plain_agent").run_sync("Say hello.")
    tp.force_flush()
    tp.shutdown()


def run_langchain(root_attrs: dict) -> None:
    """LangChain's ChatOpenAI under OpenInference's LangChain and OpenAI instrumentations (both, as
    their docs show them together): each call is reported by a LangChain span and an OpenAI span."""
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings
    from openinference.instrumentation.langchain import LangChainInstrumentor
    from openinference.instrumentation.openai import OpenAIInstrumentor

    tp = tracer_provider()
    LangChainInstrumentor().instrument(tracer_provider=tp)
    OpenAIInstrumentor().instrument(tracer_provider=tp)

    def llm(call: str, **kw):
        return ChatOpenAI(model="gpt-4o-mini", base_url=PROVIDER + "/v1", api_key="sk-fake",
                          default_headers={**HEADERS, "x-conformance-call": call}, **kw)

    @tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        return f"Sunny in {city}"

    tracer = tp.get_tracer("tokenpulse.conformance")
    with tracer.start_as_current_span("conformance langchain", attributes=root_attrs):
        step("lc_invoke", lambda: llm("lc_invoke").invoke("Say hello to Ada."))
        step("lc_stream", lambda: [c for c in llm("lc_stream", stream_usage=True).stream("Say hello.")])
        step("lc_tools", lambda: llm("lc_tools").bind_tools([get_weather]).invoke("Weather in Paris?"))
        step("lc_cached", lambda: ChatOpenAI(model="gpt-4o", base_url=PROVIDER + "/v1", api_key="sk-fake",
                                             default_headers={**HEADERS, "x-conformance-call": "lc_cached"})
             .invoke("Say hello."))
        step("lc_embeddings", lambda: OpenAIEmbeddings(
            model="text-embedding-3-small", base_url=PROVIDER + "/v1", api_key="sk-fake",
            default_headers={**HEADERS, "x-conformance-call": "lc_embeddings"}, check_embedding_ctx_length=False)
             .embed_documents(["Ada", "Grace"]))
    tp.force_flush()
    tp.shutdown()


OWN_SETUPS = {
    "traceloop-sdk": run_traceloop_sdk,
    "openlit": run_openlit,
    "langfuse": run_langfuse,
    "langfuse-grpc": run_langfuse,
    "pydantic-ai": run_pydantic_ai,
    "langchain": run_langchain,
}


if __name__ == "__main__":
    main()

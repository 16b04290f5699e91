"""A 20-line agent call tokenpulse counts, prices and attributes: run it beside `tokenpulse serve`.

It records one LLM call as the OpenTelemetry GenAI conventions describe it (an instrumentation
library such as opentelemetry-instrumentation-openai-v2 writes the same span for a real call)."""
import os

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")
provider = TracerProvider(resource=Resource.create({"service.name": "example-agent", "tenant.id": "acme"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
with provider.get_tracer("example").start_as_current_span("chat gpt-4o", kind=trace.SpanKind.CLIENT) as span:
    span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                         "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                         "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 150,
                         "app.feature": "support-triage"})
provider.shutdown()  # flushes the span to tokenpulse
print("sent one LLM call: try  tokenpulse sql \"SELECT tenant, feature, model, cost_usd FROM spans\"")

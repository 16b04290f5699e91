"""Content: prompt and completion text is not stored unless asked for.

Instrumentations may put whole conversations on spans (the OTel GenAI instrumentations only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is set; OpenLLMetry, OpenInference, OpenLIT
and Langfuse by default). tokenpulse counts tokens and money: it needs none of it, and content is
the user's data. With ``capture_content`` off (the default) the attributes below are dropped before
storage; on, each value is cut to ``content_max_chars`` characters. Forwarded spans are not
changed: a forward destination gets what the client sent.

Which keys hold content (recorded from the libraries, tests/conformance/; names from the GenAI
semantic conventions, OpenLLMetry's and OpenInference's conventions, the Vercel AI SDK's telemetry
docs, Langfuse's and Pydantic AI's own attributes):
"""

from __future__ import annotations

from tokenpulse.record import SpanBatch

CONTENT_KEYS = frozenset({
    # GenAI semantic conventions (current and older)
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result", "gen_ai.prompt", "gen_ai.completion",
    # OpenInference
    "input.value", "output.value",
    # OpenLLMetry
    "traceloop.entity.input", "traceloop.entity.output",
    # Langfuse
    "langfuse.observation.input", "langfuse.observation.output",
    # Pydantic AI
    "pydantic_ai.all_messages", "final_result", "gen_ai.tool.args", "tool_arguments", "tool_response",
    # Vercel AI SDK
    "ai.prompt", "ai.prompt.messages", "ai.response.text", "ai.response.object", "ai.response.toolCalls",
    "ai.toolCall.args", "ai.toolCall.result",
})
CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.",
                    "llm.prompts.", "embedding.embeddings.")
__doc__ += "\n".join(f"    {k}" for k in sorted(CONTENT_KEYS)) + "\n    " + ", ".join(p + "*" for p in CONTENT_PREFIXES)

MAX_SHAPES = 4096


def is_content(key: str) -> bool:
    return key in CONTENT_KEYS or key.startswith(CONTENT_PREFIXES)


class Content:
    def __init__(self, capture: bool = False, max_chars: int = 4096):
        self.capture = capture
        self.max_chars = max_chars
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}  # attribute keys -> the content keys among them

    def __call__(self, batch: SpanBatch) -> SpanBatch:
        shapes, attrs_col, limit = self._shapes, batch.attributes, self.max_chars
        for i, attrs in enumerate(attrs_col):
            shape = tuple(attrs)
            found = shapes.get(shape)
            if found is None:
                if len(shapes) >= MAX_SHAPES:
                    shapes.clear()
                found = shapes[shape] = tuple(k for k in shape if is_content(k))
            if not found:
                continue
            out = dict(attrs)
            for k in found:
                if not self.capture:
                    del out[k]
                elif len(out[k]) > limit:
                    out[k] = out[k][:limit]
            attrs_col[i] = out
        return batch

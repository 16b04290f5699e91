"""Content: prompt and completion text is not stored unless asked for.

Instrumentations may put whole conversations on spans (the OTel GenAI instrumentations only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is set; OpenLLMetry, OpenInference, OpenLIT
and Langfuse by default). tokenpulse counts tokens and money: it needs none of it, and content is
the user's data. With ``capture_content`` off (the default) the attributes below are dropped before
storage; on, each value is cut to ``content_max_chars`` characters. Forwarded spans are not
changed: a forward destination gets what the client sent.

Either way a fingerprint stays: ``tokenpulse.input_hash`` (16 hex characters of BLAKE2b) of a tool
span's arguments (``gen_ai.tool.call.arguments``, ``input.value``, ``traceloop.entity.input``,
``ai.toolCall.args``) or of an LLM call's input (``gen_ai.input.messages``, ``input.value``,
``gen_ai.prompt*``, ``llm.input_messages*``, ``ai.prompt*``), computed before anything is cut. The
``agent_loop`` rule finds the same call repeated with it, without storing what was said.

Which keys hold content (recorded from the libraries, tests/conformance/; names from the GenAI
semantic conventions, OpenLLMetry's and OpenInference's conventions, the Vercel AI SDK's telemetry
docs, Langfuse's and Pydantic AI's own attributes):
"""

from __future__ import annotations

import hashlib

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
HASH_KEY = "tokenpulse.input_hash"
TOOL_ARG_KEYS = ("gen_ai.tool.call.arguments", "input.value", "traceloop.entity.input", "ai.toolCall.args")
LLM_INPUT_PREFIXES = ("gen_ai.prompt", "llm.input_messages", "ai.prompt")


def is_content(key: str) -> bool:
    return key in CONTENT_KEYS or key.startswith(CONTENT_PREFIXES)


def is_llm_input(key: str) -> bool:
    return key == "gen_ai.input.messages" or key == "input.value" or key.startswith(LLM_INPUT_PREFIXES)


def input_hash(attrs: dict, operation: str) -> str:
    """The fingerprint of a tool span's arguments or an LLM call's input; "" when it records neither."""
    if operation == "execute_tool":
        parts = [attrs.get(k, "") for k in TOOL_ARG_KEYS]
        if not any(parts):
            return ""
        text = "\x1f".join(parts)
    else:
        keys = sorted(k for k in attrs if is_llm_input(k))
        if not keys:
            return ""
        text = "\x1e".join(f"{k}\x1f{attrs[k]}" for k in keys)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class Content:
    def __init__(self, capture: bool = False, max_chars: int = 4096):
        self.capture = capture
        self.max_chars = max_chars
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}  # attribute keys -> the content keys among them

    def __call__(self, batch: SpanBatch) -> SpanBatch:
        shapes, attrs_col, limit, ops = self._shapes, batch.attributes, self.max_chars, batch.operation
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
            if ops[i] == "execute_tool" or ops[i] in ("chat", "text_completion", "generate_content"):
                h = input_hash(attrs, ops[i])
                if h:
                    out[HASH_KEY] = h
            for k in found:
                if not self.capture:
                    del out[k]
                elif len(out[k]) > limit:
                    out[k] = out[k][:limit]
            attrs_col[i] = out
        return batch

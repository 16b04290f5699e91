"""Instrumentation quirks, keyed by instrumentation scope name: one table, each row citing its source.

A quirk is what one library does differently from the GenAI semantic conventions and that a
receiver must undo to count money right. Rows were found by recording the library itself
(``tests/conformance/``: the library, unmodified, against a fake provider) and are checked there.

* ``cache_exclusive_input``: the span's ``gen_ai.usage.input_tokens`` is Anthropic's raw
  ``input_tokens``, which excludes cache reads and writes; semconv's input includes them, so the
  cache counts are added back, always (not only when they exceed the input).
* ``provider_by_name``: span-name prefixes that name the provider when no attribute does.
* ``rank``: when two spans report the same LLM call, the higher rank is kept (``calls.py``). A
  provider SDK's own span is nearest the wire: it carries what the provider sent (the 1-hour cache
  split) and none of the wrappers' stream-accounting errors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quirk:
    cache_exclusive_input: bool = False
    provider_by_name: tuple[tuple[str, str], ...] = ()
    rank: int = 0
    source: str = ""


QUIRKS: dict[str, Quirk] = {
    # OpenLIT 1.45.0, openlit/instrumentation/anthropic/utils.py: "Anthropic's API reports input_tokens
    # exclusive of cache read / creation" and it sets gen_ai.usage.input_tokens to that number, with the
    # cache counts beside it (recording: tests/conformance/recordings/openlit).
    "openlit.instrumentation.anthropic": Quirk(cache_exclusive_input=True,
                                               source="openlit instrumentation/anthropic/utils.py"),
    # The Anthropic Python SDK (>= 2.x) emits its own CLIENT span per request (scope com.anthropic.sdk.python),
    # beside whatever instrumentation wraps it; its counts are the provider's (recordings: openllmetry,
    # traceloop-sdk, openinference).
    "com.anthropic.sdk.python": Quirk(rank=2, source="anthropic SDK's own OpenTelemetry spans"),
    # Langfuse's OpenAI integration (langfuse/openai.py, _get_langfuse_data_from_kwargs) names its
    # observations "OpenAI-generation" / "OpenAI-embedding" unless the caller passes a name, and sets no
    # provider attribute: the OpenAI SDK made the call (an OpenAI-compatible endpoint may still be behind it).
    "langfuse-sdk": Quirk(provider_by_name=(("OpenAI-", "openai"),), source="langfuse openai.py"),
}
NO_QUIRK = Quirk()


def quirk(scope: str) -> Quirk:
    return QUIRKS.get(scope, NO_QUIRK)


def provider_from_name(scope: str, name: str) -> str:
    for prefix, provider in quirk(scope).provider_by_name:
        if name.startswith(prefix):
            return provider
    return ""

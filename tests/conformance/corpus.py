"""The recorded corpus and what a receiver should make of it.

``load(library)`` reads one library's recording (``record.py`` wrote it). ``served(call)`` turns the
usage the fake provider served into semconv meaning (input *includes* cache read and write; output
*includes* reasoning). ``expected(library, call)`` is what tokenpulse must store for that call:
the served usage, unless the library itself lost or invented numbers: then ``LIBRARY_GAPS`` names
the library's bug and gives the most a receiver can know. ``expected_cost`` prices that with
genai-prices directly, independently of tokenpulse's price step.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

RECORDINGS = Path(__file__).resolve().parent / "recordings"


@dataclass(frozen=True)
class Tokens:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0
    cache_write_1h: int = 0  # the part of cache_write written with the 1-hour TTL (Anthropic)

    def __add__(self, o: "Tokens") -> "Tokens":
        return Tokens(*(a + b for a, b in zip(self.astuple(), o.astuple())))

    def astuple(self) -> tuple[int, ...]:
        return (self.input, self.output, self.cache_read, self.cache_write, self.reasoning, self.cache_write_1h)


@dataclass(frozen=True)
class Gap:
    """A library's own bug: what it loses or invents, and what a receiver can still know."""
    libraries: tuple[str, ...]
    calls: str  # regex over the call name
    bug: str
    knows: object  # (served Tokens, reported attributes of the library's span) -> Tokens | None (nothing reported)


def _reported_int(reported: dict, *keys: str) -> int:
    for k in keys:
        if reported.get(k) not in (None, ""):
            return int(reported[k])
    return 0


def _as_reported(t: Tokens, r: dict) -> Tokens:
    return Tokens(input=_reported_int(r, "gen_ai.usage.input_tokens"), output=_reported_int(r, "gen_ai.usage.output_tokens"))


OTEL_V2 = ("otel-openai-v2", "otel-openai-v2-latest")
LIBRARY_GAPS: tuple[Gap, ...] = (
    Gap(("*",), r"^chat_stream_no_usage$",
        "a chat stream without stream_options.include_usage: the provider never sends usage, so no client "
        "library can know the tokens", lambda t, r: None),
    Gap(OTEL_V2, r"^responses", "opentelemetry-instrumentation-openai-v2 2.4b0 does not instrument the Responses API: "
        "no span at all", lambda t, r: None),
    Gap(OTEL_V2, r"^chat_(cached|reasoning)$", "opentelemetry-instrumentation-openai-v2 2.4b0 does not record "
        "cached prompt tokens nor reasoning tokens (only input and output)",
        lambda t, r: replace(t, cache_read=0, reasoning=0)),
    Gap(("openllmetry", "traceloop-sdk"), r"^messages_stream",
        "OpenLLMetry 0.62.4's anthropic.chat span on a stream reports one output token too many (it adds "
        "message_start's output_tokens to message_delta's cumulative count); the Anthropic SDK's own span beside "
        "it has the served number and is the one counted", lambda t, r: t),
    Gap(("openlit",), r"^chat_stream_no_usage$", "OpenLIT 1.45.0 estimates a stream's usage itself when the provider "
        "sent none (its own token counting): invented numbers, stored as reported", _as_reported),
    Gap(("openlit",), r"^chat_reasoning$", "OpenLIT 1.45.0 does not record reasoning tokens for Chat Completions "
        "(it does for the Responses API)", lambda t, r: replace(t, reasoning=0)),
    Gap(("openlit",), r"^messages_stream_cache", "OpenLIT 1.45.0 drops the cache counts of an Anthropic stream and "
        "reports Anthropic's cache-exclusive input_tokens alone",
        lambda t, r: Tokens(input=t.input - t.cache_read - t.cache_write, output=t.output)),
    Gap(("openlit",), r"^messages_cache_read_write_1h", "OpenLIT 1.45.0 reports Anthropic's cache writes without their "
        "1-hour part (cache_creation.ephemeral_1h_input_tokens), so they can only be priced as 5-minute writes",
        lambda t, r: replace(t, cache_write_1h=0)),
)
# tokenpulse's own known gaps, each tracked by an issue; the table prints them, the test allows them.
TOKENPULSE_GAPS: dict[str, str] = {}


def gap_for(library: str, call: str) -> Gap | None:
    base = call.split("#")[0]
    for g in LIBRARY_GAPS:
        if ("*" in g.libraries or library in g.libraries) and re.search(g.calls, base):
            # the most specific entry wins: a library-specific one before "*"
            specific = [h for h in LIBRARY_GAPS if library in h.libraries and re.search(h.calls, base)]
            return specific[0] if specific else g
    return None


@dataclass
class Recording:
    library: str
    manifest: dict
    requests: list[tuple[str, bytes]]  # (transport, ExportTraceServiceRequest bytes)

    @property
    def calls(self) -> list[dict]:
        return self.manifest["calls"]


def libraries() -> list[str]:
    return sorted(p.name for p in RECORDINGS.iterdir() if (p / "manifest.json").exists())


def load(library: str) -> Recording:
    d = RECORDINGS / library
    manifest = json.loads((d / "manifest.json").read_text())
    return Recording(library, manifest, [(r["transport"], (d / r["file"]).read_bytes()) for r in manifest["requests"]])


def served(call: dict) -> Tokens | None:
    """The usage the provider served, in semconv meaning (None: an error, nothing billed)."""
    u = call["usage"]
    if call["status"] != 200 or not u:
        return None
    if call["api"] == "anthropic.messages":
        read, write = u["cache_read_input_tokens"], u["cache_creation_input_tokens"]
        return Tokens(input=u["input_tokens"] + read + write, output=u["output_tokens"], cache_read=read,
                      cache_write=write, cache_write_1h=u["cache_creation"]["ephemeral_1h_input_tokens"])
    if call["api"] == "openai.responses":
        return Tokens(input=u["input_tokens"], output=u["output_tokens"],
                      cache_read=u["input_tokens_details"]["cached_tokens"],
                      reasoning=u["output_tokens_details"]["reasoning_tokens"])
    if call["api"] == "openai.embeddings":
        return Tokens(input=u["prompt_tokens"])
    return Tokens(input=u["prompt_tokens"], output=u["completion_tokens"],
                  cache_read=u["prompt_tokens_details"]["cached_tokens"],
                  reasoning=u["completion_tokens_details"]["reasoning_tokens"])


def reported_attributes(call: dict) -> dict:
    """The token attributes of the first span that reported the call (for gaps that keep them)."""
    return call["reported_by"][0]["tokens"] if call["reported_by"] else {}


def expected(library: str, call: dict) -> tuple[Tokens | None, Gap | None]:
    truth = served(call)
    gap = gap_for(library, call["call"])
    if gap is None:
        return truth, None
    if truth is None and call["status"] != 200:
        return None, None
    billed = truth or Tokens()
    return gap.knows(billed, reported_attributes(call)), gap


PROVIDER_OF_API = {"anthropic.messages": "anthropic"}


def expected_cost(call: dict, t: Tokens, model: str, one_hour_at_5m: bool = False) -> float:
    """genai-prices' price for these tokens, computed here without tokenpulse. With
    ``one_hour_at_5m`` the 1-hour writes are priced as 5-minute ones (what is knowable when the
    library does not report the split)."""
    from genai_prices import Usage, calc_price

    kw = dict(input_tokens=t.input, output_tokens=t.output, cache_read_tokens=t.cache_read,
              cache_write_tokens=t.cache_write)
    if t.cache_write_1h and not one_hour_at_5m:
        kw.update(cache_write_1h_tokens=t.cache_write_1h, cache_write_5m_tokens=t.cache_write - t.cache_write_1h)
    provider = PROVIDER_OF_API.get(call["api"], "openai")
    at = datetime.fromtimestamp(call["received_ns"] / 1e9, tz=timezone.utc)
    return float(calc_price(Usage(**kw), model, provider_id=provider, genai_request_timestamp=at).total_price)

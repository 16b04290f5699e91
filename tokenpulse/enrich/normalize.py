"""Normalize: every instrumentation dialect -> the record's typed GenAI fields.

Sources: the OpenTelemetry GenAI semantic conventions (gen-ai-spans.md and the
registry), each library's own attribute names (OpenLLMetry's semconv-ai,
OpenInference's semantic conventions, the Vercel AI SDK's telemetry docs, the
Langfuse SDK's OTel attributes), and the conformance corpus recorded from the
libraries themselves (tests/conformance/, docs/enrichment.md). The key tables
are data, ordered by priority: the first key present wins. Per-library quirks
keyed by instrumentation scope live in ``quirks.py``.

Token semantics (semconv, SCG client-inference.md note [28]):
``input_tokens`` *includes* cache read and cache write tokens and
``output_tokens`` *includes* reasoning tokens. Dialects that report otherwise
are converted here:

* Anthropic's own ``input_tokens`` excludes cached tokens. The Anthropic SDK's
  own spans, OpenLLMetry, OpenInference and Pydantic AI add the cache counts
  back (recorded); OpenLIT passes the raw number (``quirks.py``), as does the
  Vercel AI SDK (<= v6). Langfuse's own usage keys are cache-exclusive by
  design, but its OpenAI integration passes OpenAI's raw usage object (cache
  *included*, under ``prompt_tokens_details``). We correct each, and any
  Anthropic span whose cache counts exceed its input (which only a
  cache-exclusive count can do).
* LangSmith writes cache/reasoning details as a stringified Python dict.

Counting (``counted``, ``excluded_reason``): tokens count only on inference spans
(chat, text_completion, generate_content, embeddings; Langfuse generations and
embeddings; or a span with usage and no operation that is a CLIENT span or names
a model: what a hand-written instrumentation sends first. ``calls.py`` turns such
a span into an aggregate when its children report other LLM calls). Aggregates are stored and flagged, never summed:
``invoke_agent``/``create_agent``/workflow/chain spans that carry usage, the
Vercel AI SDK's outer ``ai.generateText``-style spans, and
``gen_ai.aggregated_usage.*`` (Pydantic AI agent runs).

Bad usage never poisons sums: a missing, negative, non-integer, NaN or absurd
(> 10M) count is stored as 0 and ``usage_status`` says what was wrong.
"""

from __future__ import annotations

import ast
import json
import math

from tokenpulse.enrich.keys import KeyIndex
from tokenpulse.enrich.quirks import provider_from_name, quirk
from tokenpulse.record import SpanBatch

MAX_TOKENS = 10_000_000
INFERENCE_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
AGGREGATE_OPERATIONS = frozenset({"invoke_agent", "create_agent", "invoke_workflow", "chain", "workflow", "task"})

# ---------------------------------------------------------------- key tables (§2.1)
PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system", "ai.model.provider")
MODEL_KEYS = ("gen_ai.response.model", "ai.response.model", "gen_ai.request.model", "llm.response.model_name",
              "llm.model_name", "ai.model.id", "langfuse.observation.model.name", "embedding.model_name")
REQUEST_MODEL_KEYS = ("gen_ai.request.model", "llm.request.model_name", "llm.model_name", "ai.model.id")
INPUT_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
              "ai.usage.promptTokens", "ai.usage.inputTokens", "ai.usage.tokens")
OUTPUT_KEYS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion",
               "ai.usage.completionTokens", "ai.usage.outputTokens")
CACHE_READ_KEYS = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
                   "llm.token_count.prompt_details.cache_read", "gen_ai.usage.details.cache_read_tokens",
                   "ai.usage.cachedInputTokens", "ai.usage.inputTokenDetails.cacheReadTokens")
CACHE_WRITE_KEYS = ("gen_ai.usage.cache_write.input_tokens", "gen_ai.usage.cache_creation.input_tokens",
                    "gen_ai.usage.cache_creation_input_tokens", "llm.token_count.prompt_details.cache_write",
                    "gen_ai.usage.details.cache_write_tokens", "ai.usage.inputTokenDetails.cacheWriteTokens")
REASONING_KEYS = ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
                  "llm.usage.reasoning_tokens", "llm.token_count.completion_details.reasoning",
                  "ai.usage.reasoningTokens", "gen_ai.usage.details.reasoning_tokens")
TOTAL_KEYS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total", "ai.usage.totalTokens",
              "gen_ai.client.token.usage")
REPORTED_COST_KEYS = ("gen_ai.usage.cost", "llm.cost.total", "operation.cost")
AGENT_NAME_KEYS = ("gen_ai.agent.name", "ai.telemetry.functionId")
AGENT_ID_KEYS = ("gen_ai.agent.id",)
TOOL_NAME_KEYS = ("gen_ai.tool.name", "tool.name", "ai.toolCall.name")
TOOL_CALL_ID_KEYS = ("gen_ai.tool.call.id", "tool_call.id", "ai.toolCall.id")
VERCEL_NOCACHE = "ai.usage.inputTokenDetails.noCacheTokens"
AGGREGATED_PREFIX = "gen_ai.aggregated_usage."
LANGFUSE_USAGE = "langfuse.observation.usage_details"
LANGFUSE_COST = "langfuse.observation.cost_details"
LANGSMITH_INPUT_DETAILS = "gen_ai.usage.input_token_details"
LANGSMITH_OUTPUT_DETAILS = "gen_ai.usage.output_token_details"

# Current gen_ai.provider.name values (SCG, reference §1.6).
KNOWN_PROVIDERS = frozenset({
    "anthropic", "aws.bedrock", "azure.ai.inference", "azure.ai.openai", "cohere", "deepseek", "gcp.gemini",
    "gcp.gen_ai", "gcp.vertex_ai", "groq", "ibm.watsonx.ai", "mistral_ai", "moonshot_ai", "openai", "perplexity",
    "x_ai",
})
# Legacy gen_ai.system values (reference §1.4) and library-specific spellings:
# OpenLLMetry's "OpenAI"/"Azure"/"AWS"/"Google" (§2), OpenInference llm.provider
# ("azure", "aws", "google"), Vercel provider ids ("amazon-bedrock", "google.vertex", ...).
PROVIDER_ALIASES = {
    "az.ai.openai": "azure.ai.openai", "az.ai.inference": "azure.ai.inference", "vertex_ai": "gcp.vertex_ai",
    "gemini": "gcp.gemini", "xai": "x_ai", "x-ai": "x_ai", "azure": "azure.ai.openai", "azure-openai": "azure.ai.openai",
    "aws": "aws.bedrock", "bedrock": "aws.bedrock", "amazon-bedrock": "aws.bedrock", "google": "gcp.gen_ai",
    "google.vertex": "gcp.vertex_ai", "vertex": "gcp.vertex_ai", "google.generative-ai": "gcp.gemini",
    "mistral": "mistral_ai", "mistralai": "mistral_ai", "moonshot": "moonshot_ai", "moonshotai": "moonshot_ai",
    "watsonx": "ibm.watsonx.ai", "ibm": "ibm.watsonx.ai",
}
# openinference.span.kind, traceloop.span.kind, llm.request.type (OpenLLMetry),
# langsmith.span.kind -> operation.
OPENINFERENCE_KINDS = {"LLM": "chat", "EMBEDDING": "embeddings", "TOOL": "execute_tool", "AGENT": "invoke_agent",
                       "CHAIN": "chain", "RETRIEVER": "retrieval", "RERANKER": "rerank", "GUARDRAIL": "guardrail"}
TRACELOOP_KINDS = {"workflow": "invoke_workflow", "task": "task", "agent": "invoke_agent", "tool": "execute_tool"}
LLM_REQUEST_TYPES = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings", "rerank": "rerank"}
LANGSMITH_KINDS = {"llm": "chat", "tool": "execute_tool", "chain": "chain", "retriever": "retrieval",
                   "embedding": "embeddings"}
# langfuse.observation.type (Langfuse SDK v3+, langfuse/_client/constants.py ObservationTypeLiteral).
LANGFUSE_TYPES = {"generation": "chat", "embedding": "embeddings", "agent": "invoke_agent", "tool": "execute_tool",
                  "chain": "chain", "retriever": "retrieval", "evaluator": "evaluation", "guardrail": "guardrail"}
OPERATION_ALIASES = {"completion": "text_completion", "embedding": "embeddings"}
# Vercel AI SDK <= v6 span names (vercel/ai generate-text.ts et al.): the outer
# call aggregates its doGenerate/doStream steps.
VERCEL_OUTER = frozenset({"ai.generateText", "ai.streamText", "ai.generateObject", "ai.streamObject"})
VERCEL_EMBED = frozenset({"ai.embed.doEmbed", "ai.embedMany.doEmbed"})

# Problems, most severe first; usage_status reports the first one found.
_PROBLEMS = ("nan", "negative", "non_integer", "absurd")


def normalize_provider(raw: str) -> str:
    p = raw.strip().lower()
    if p in KNOWN_PROVIDERS:
        return p
    if p in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[p]
    # Vercel ids carry an API suffix: "openai.chat", "anthropic.messages", "google.vertex.chat".
    parts = p.split(".")
    for n in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:n])
        if head in KNOWN_PROVIDERS:
            return head
        if head in PROVIDER_ALIASES:
            return PROVIDER_ALIASES[head]
    return p


def parse_count(raw) -> tuple[int, str]:
    """A token count from an attribute string: (value, problem or "")."""
    if isinstance(raw, bool):
        return 0, "non_integer"
    if isinstance(raw, int):
        v = raw
    else:
        try:
            v = int(raw)
        except (TypeError, ValueError):
            try:
                f = float(raw)
            except (TypeError, ValueError):
                return 0, "non_integer"
            if math.isnan(f):
                return 0, "nan"
            if math.isinf(f):
                return 0, "absurd"
            if not f.is_integer():
                return 0, "non_integer"
            v = int(f)
    if v < 0:
        return 0, "negative"
    if v > MAX_TOKENS:
        return 0, "absurd"
    return v, ""


def parse_cost(raw) -> float | None:
    try:
        f = float(raw)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


def _structured(raw: str) -> dict:
    """A JSON object (Langfuse) or a Python dict literal (LangSmith), else {}."""
    for parse in (json.loads, ast.literal_eval):
        try:
            v = parse(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return v if isinstance(v, dict) else {}
    return {}


# Library span-kind attributes, in priority order (INDEX field, value -> operation).
_KIND_TABLES = (("oi_kind", OPENINFERENCE_KINDS), ("llm_type", LLM_REQUEST_TYPES), ("tl_kind", TRACELOOP_KINDS),
                ("ls_kind", LANGSMITH_KINDS), ("lf_type", LANGFUSE_TYPES))


def operation_of(f: dict, name: str, kind: int, has_usage: bool) -> str:
    """The operation, from ``f`` = INDEX.pick(attrs), the span name and kind ("" when none is named;
    ``normalize`` then infers ``chat`` from usage)."""
    op = f.get("op")
    if op:
        op = op.strip().lower()
        return OPERATION_ALIASES.get(op, op)
    for field, table in _KIND_TABLES:
        v = f.get(field)
        if v:
            if table is LANGFUSE_TYPES:  # "span"/"event" name no operation: inferred from usage, if any
                op = table.get(v.lower(), "")
                if op:
                    return op
                continue
            return table.get(v.upper() if table is OPENINFERENCE_KINDS else v.lower(), v.lower())
    if name.startswith("ai."):
        if name in VERCEL_OUTER:
            return "chain"
        if name in VERCEL_EMBED:
            return "embeddings"
        if name.endswith(".doGenerate") or name.endswith(".doStream"):
            return "chat"
        if name == "ai.toolCall":
            return "execute_tool"
    if name == "agent run" or name.startswith("invoke_agent"):  # Pydantic AI, Vercel v7 root
        return "invoke_agent"
    return ""


class Usage:
    """Token counts of one span, semconv semantics. Built by ``read_usage``."""

    __slots__ = ("input", "output", "cache_read", "cache_write", "reasoning", "total", "present", "problem",
                 "aggregated")

    def __init__(self) -> None:
        self.input = self.output = self.cache_read = self.cache_write = self.reasoning = self.total = 0
        self.present = False
        self.problem = ""
        self.aggregated = False

    def _set(self, field: str, raw) -> None:
        value, problem = parse_count(raw)
        self.present = True
        if problem and (not self.problem or _PROBLEMS.index(problem) < _PROBLEMS.index(self.problem)):
            self.problem = problem
        setattr(self, field, value)


_FIELD_KEYS = (("input", INPUT_KEYS), ("output", OUTPUT_KEYS), ("cache_read", CACHE_READ_KEYS),
               ("cache_write", CACHE_WRITE_KEYS), ("reasoning", REASONING_KEYS), ("total", TOTAL_KEYS))
_AGGREGATED_KEYS = tuple(
    ("agg_" + field, tuple(AGGREGATED_PREFIX + k[len("gen_ai.usage."):] for k in keys if k.startswith("gen_ai.usage.")))
    for field, keys in _FIELD_KEYS)
TOKEN_FIELDS = tuple(f for f, _ in _FIELD_KEYS)
# One index for every field normalize reads (see keys.py).
INDEX = KeyIndex({
    **dict(_FIELD_KEYS), **dict(_AGGREGATED_KEYS),
    "provider": PROVIDER_KEYS, "model": MODEL_KEYS, "request_model": REQUEST_MODEL_KEYS,
    "reported_cost": REPORTED_COST_KEYS, "agent_name": AGENT_NAME_KEYS, "agent_id": AGENT_ID_KEYS,
    "tool_name": TOOL_NAME_KEYS, "tool_call_id": TOOL_CALL_ID_KEYS,
    "op": ("gen_ai.operation.name",), "oi_kind": ("openinference.span.kind",), "llm_type": ("llm.request.type",),
    "tl_kind": ("traceloop.span.kind",), "ls_kind": ("langsmith.span.kind",),
    "langfuse_usage": (LANGFUSE_USAGE,), "langfuse_cost": (LANGFUSE_COST,),
    "ls_in": (LANGSMITH_INPUT_DETAILS,), "ls_out": (LANGSMITH_OUTPUT_DETAILS,), "vercel_nocache": (VERCEL_NOCACHE,),
    "vercel_provider": ("ai.model.provider",), "error": ("error.type",), "tl_entity": ("traceloop.entity.name",),
    "lf_type": ("langfuse.observation.type",),
})


def read_usage(attrs: dict, provider: str, model: str, found: dict | None = None, scope: str = "") -> Usage:
    """Token counts from a span's attributes (``found``: INDEX.pick(attrs), if already computed;
    ``scope``: the instrumentation scope name, for ``quirks.py``)."""
    f = INDEX.pick(attrs) if found is None else found
    u = Usage()
    for field in TOKEN_FIELDS:
        if field in f:
            u._set(field, f[field])
    if not u.present:
        for field in TOKEN_FIELDS:
            if "agg_" + field in f:
                u._set(field, f["agg_" + field])
                u.aggregated = True
    if "ls_in" in f or "ls_out" in f:
        # LangChain UsageMetadata: input_tokens already includes cache tokens.
        details = _structured(f.get("ls_in", ""))
        if not u.cache_read and "cache_read" in details:
            u._set("cache_read", details["cache_read"])
        if not u.cache_write and "cache_creation" in details:
            u._set("cache_write", details["cache_creation"])
        out_details = _structured(f.get("ls_out", ""))
        if not u.reasoning and "reasoning" in out_details:
            u._set("reasoning", out_details["reasoning"])
    if not u.present and "langfuse_usage" in f:
        _read_langfuse(u, _structured(f["langfuse_usage"]))
    if "vercel_nocache" in f:
        # Vercel's legacy exporter splits input; the parts add up to the semconv total.
        nocache, problem = parse_count(f["vercel_nocache"])
        if not problem:
            u.input = nocache + u.cache_read + u.cache_write
            u.present = True
    elif (u.cache_read or u.cache_write) and (quirk(scope).cache_exclusive_input or (
            _anthropic_family(provider, model)
            and ("vercel_provider" in f or u.cache_read + u.cache_write > u.input))):
        # Anthropic's cache-exclusive input_tokens passed through (see module doc).
        u.input += u.cache_read + u.cache_write
    if u.present and not u.total:
        u.total = u.input + u.output
    return u


def _read_langfuse(u: Usage, d: dict) -> None:
    """Langfuse's own usage keys (``input``, ``output``, ``cache_read_input_tokens``, ...) are cache-
    and reasoning-exclusive (Langfuse docs, "Token and cost tracking"). Its OpenAI integration
    stores OpenAI's usage object as it came (recorded: langfuse 5.0.4): ``prompt_tokens`` or
    ``input_tokens`` *with* cache, cached under ``prompt_tokens_details``/``input_tokens_details``,
    reasoning under ``completion_tokens_details``/``output_tokens_details``; read in that meaning."""
    openai_shape = ("prompt_tokens" in d or "completion_tokens" in d or "input_tokens_details" in d
                    or "output_tokens_details" in d)
    if openai_shape:
        in_details = d.get("prompt_tokens_details") or d.get("input_tokens_details") or {}
        out_details = d.get("completion_tokens_details") or d.get("output_tokens_details") or {}
        for field, raw in (("input", d.get("prompt_tokens", d.get("input_tokens"))),
                           ("output", d.get("completion_tokens", d.get("output_tokens"))),
                           ("cache_read", in_details.get("cached_tokens") if isinstance(in_details, dict) else None),
                           ("reasoning", out_details.get("reasoning_tokens") if isinstance(out_details, dict) else None),
                           ("total", d.get("total_tokens"))):
            if raw is not None:
                u._set(field, raw)
        return

    def pick(*names):
        for n in names:
            if n in d:
                return d[n]
        return None

    values = {
        "input": pick("input", "input_tokens", "prompt_tokens"),
        "output": pick("output", "output_tokens", "completion_tokens"),
        "cache_read": pick("cache_read_input_tokens", "input_cached_tokens", "input_cache_read", "cached_tokens"),
        "cache_write": pick("cache_creation_input_tokens", "input_cache_creation", "input_cache_write"),
        "reasoning": pick("output_reasoning_tokens", "output_reasoning", "reasoning_tokens"),
        "total": pick("total", "total_tokens"),
    }
    for field, raw in values.items():
        if raw is not None:
            u._set(field, raw)
    u.input += u.cache_read + u.cache_write
    u.output += u.reasoning


def _anthropic_family(provider: str, model: str) -> bool:
    return provider == "anthropic" or "claude" in model.lower()


def exclusion_reason(name: str, op: str, aggregated: bool = False) -> str:
    """Why a span that reports usage is not counted ("": it is)."""
    if aggregated:
        return "aggregate:aggregated_usage"
    if name in VERCEL_OUTER:
        return "aggregate:vercel_outer"
    if op in AGGREGATE_OPERATIONS:
        return f"aggregate:{op}"
    return "" if op in INFERENCE_OPERATIONS else f"not_inference:{op or 'unknown'}"


def exclude(batch: SpanBatch, i: int, reason: str) -> None:
    """Flag span i as not counted. Its typed token columns are zeroed, so a plain
    ``sum(input_tokens)`` never counts it; the reported numbers stay in ``attributes``."""
    batch.counted[i] = 0
    batch.excluded_reason[i] = reason
    batch.input_tokens[i] = batch.output_tokens[i] = batch.total_tokens[i] = 0
    batch.cache_read_tokens[i] = batch.cache_write_tokens[i] = batch.reasoning_tokens[i] = 0


def normalize(batch: SpanBatch) -> SpanBatch:
    """Fill operation, provider, model, token, reported-cost, agent, tool and error fields."""
    return normalize_calls(batch)[0]


def normalize_calls(batch: SpanBatch) -> tuple[SpanBatch, set[int]]:
    """``normalize``, also returning the spans whose ``chat`` operation was inferred from usage (no
    operation named): ``calls.py`` decides whether each is a call or an aggregate of its children."""
    attrs_col, names, kinds, codes, scopes = batch.attributes, batch.name, batch.kind, batch.status_code, \
        batch.scope_name
    inferred: set[int] = set()
    pick = INDEX.pick
    for i, attrs in enumerate(attrs_col):
        f = pick(attrs)
        name = names[i]
        if not f:
            # No GenAI attribute at all (HTTP, DB, ... spans): only name-based operations and errors.
            op = operation_of(f, name, kinds[i], False)
            if op:
                batch.operation[i] = op
                if op in INFERENCE_OPERATIONS:
                    batch.usage_status[i] = "missing"
                    continue
            batch.usage_status[i] = "none"
            if codes[i] == 2:
                batch.error_type[i] = "_OTHER"
            continue
        provider_raw = f.get("provider", "")
        provider = normalize_provider(provider_raw) if provider_raw else provider_from_name(scopes[i], name)
        model = f.get("model", "")
        usage = read_usage(attrs, provider, model, f, scopes[i])
        op = operation_of(f, name, kinds[i], usage.present)
        if not op and usage.present and not usage.aggregated and (kinds[i] == 3 or model):
            # Usage and no operation: a CLIENT span, or one naming its model (a hand-written span).
            op = "chat"
            inferred.add(i)

        batch.operation[i] = op
        batch.provider[i] = provider
        batch.model[i] = model
        batch.request_model[i] = f.get("request_model", "")
        batch.input_tokens[i] = usage.input
        batch.output_tokens[i] = usage.output
        batch.cache_read_tokens[i] = usage.cache_read
        batch.cache_write_tokens[i] = usage.cache_write
        batch.reasoning_tokens[i] = usage.reasoning
        batch.total_tokens[i] = usage.total

        if not usage.present:
            status = "missing" if op in INFERENCE_OPERATIONS else "none"
        elif usage.problem:
            status = usage.problem
        elif usage.cache_read + usage.cache_write > usage.input or usage.reasoning > usage.output:
            status = "inconsistent"
        else:
            status = "ok"
        batch.usage_status[i] = status

        reason = exclusion_reason(name, op, usage.aggregated) if usage.present else ""
        if reason:
            exclude(batch, i, reason)

        cost = f.get("reported_cost")
        if cost:
            batch.reported_cost_usd[i] = parse_cost(cost)
        elif "langfuse_cost" in f:
            batch.reported_cost_usd[i] = parse_cost(_structured(f["langfuse_cost"]).get("total"))

        tl_kind = f.get("tl_kind")
        batch.agent_name[i] = f.get("agent_name") or (f.get("tl_entity", "") if tl_kind == "agent" else "")
        batch.agent_id[i] = f.get("agent_id", "")
        batch.tool_name[i] = f.get("tool_name") or (f.get("tl_entity", "") if tl_kind == "tool" else "")
        batch.tool_call_id[i] = f.get("tool_call_id", "")
        batch.error_type[i] = f.get("error") or ("_OTHER" if codes[i] == 2 else "")
    return batch, inferred

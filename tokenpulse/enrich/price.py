"""Price: tokens x the price in force at the span's start time -> cost columns.

Price data (``PriceTable``):
* the **genai-prices** package's bundled snapshot (pydantic/genai-prices, read
  offline: nothing is fetched at run time), with its own curated model-match
  rules (dated variants like ``gpt-4o-2024-08-06`` resolve by those rules; an
  unmatched new variant stays unknown rather than taking a sibling's price);
* user overrides from a YAML price file (``price_file`` setting), which win
  over genai-prices whenever one matches and is in force; among overrides the
  newest ``effective_from`` in force wins.

Cost (USD, Float64; prices are $ per 1M tokens; no rounding, so a cost is exact
to double precision, ~1e-15 relative)::

    uncached_input = input - cache_read - cache_write          (never below 0)
    input_cost       = uncached_input x input_price
    cache_read_cost  = cache_read x cache_read_price   (input price when the entry has none)
    cache_write_cost = (cache_write - cache_write_1h) x cache_write_price (input price when none)
                       + cache_write_1h x cache_write_1h_price (the 5-minute write price when none)
    output_cost      = (output - reasoning) x output_price
    reasoning_cost   = reasoning x reasoning_price      (output price when the entry has none)
    request_cost     = the per-request fee (genai-prices' requests_kcount / 1000), once per call
    cost = sum of the six

What the provider bills also depends on the request (``billing_context``): the service tier the
span reports (OpenAI's ``service_tier`` priority / flex, ``batch`` processing) selects
genai-prices' price variants for that tier, and the 1-hour part of Anthropic cache writes is read
from the span. Where a call went is placed by ``server.address`` against genai-prices' providers'
API URL patterns (the OpenAI SDK pointed at DeepSeek, OpenRouter, Groq, Azure, ...); a model the
placed provider does not list is matched by its name alone, ``price_status = priced_model_only``.

Context-length tiers follow genai-prices' "cliff" rule: when the span's total
input tokens exceed a tier's threshold, that tier's price applies to all of
that kind of token.

``price_status``: ``priced`` | ``priced_model_only`` | ``unknown_model`` (cost NULL, counted in
``tokenpulse_unknown_model_spans_total{model}``) | ``no_model`` | ``no_usage`` |
``invalid_usage`` | ``not_counted`` (aggregates and duplicates are not priced,
so sums never count them twice). ``price_id`` names the entry that priced the
span: ``genai-prices@<version>:<provider>/<model id>[@<start date>]`` or
``override:<id>``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Callable

import yaml

from tokenpulse.errors import ConfigError
from tokenpulse.record import SpanBatch

# gen_ai.provider.name (semconv) -> genai-prices provider id.
GENAI_PRICES_PROVIDERS = {
    "openai": "openai", "anthropic": "anthropic", "aws.bedrock": "aws", "azure.ai.openai": "azure",
    "azure.ai.inference": "azure", "gcp.gemini": "google", "gcp.vertex_ai": "google", "gcp.gen_ai": "google",
    "x_ai": "x-ai", "mistral_ai": "mistral", "deepseek": "deepseek", "groq": "groq", "cohere": "cohere",
    "perplexity": "perplexity", "moonshot_ai": "moonshotai", "openrouter": "openrouter", "together": "together",
    "fireworks": "fireworks", "cerebras": "cerebras",
}
# Model-name prefixes that name a provider ("openai/gpt-4o") or a gateway ("litellm_proxy/...").
PREFIX_PROVIDERS = {
    "openai": "openai", "anthropic": "anthropic", "azure": "azure.ai.openai", "bedrock": "aws.bedrock",
    "vertex_ai": "gcp.vertex_ai", "gemini": "gcp.gemini", "google": "gcp.gemini", "mistral": "mistral_ai",
    "groq": "groq", "deepseek": "deepseek", "xai": "x_ai", "cohere": "cohere", "together_ai": "together",
}
GATEWAY_PREFIXES = frozenset({"litellm_proxy", "litellm"})
PRICE_KINDS = ("input", "cache_read", "cache_write", "cache_write_1h", "output", "reasoning")


@dataclass(frozen=True)
class Tiered:
    """$ per 1M tokens, with optional cliff tiers: ((threshold, price), ...) ascending."""

    base: float
    tiers: tuple[tuple[int, float], ...] = ()

    def at(self, total_input: int) -> float:
        for start, price in reversed(self.tiers):
            if total_input > start:
                return price
        return self.base


@dataclass(frozen=True)
class PriceEntry:
    id: str
    source: str  # "genai-prices" | "override"
    input: Tiered
    output: Tiered
    cache_read: Tiered | None = None
    cache_write: Tiered | None = None
    reasoning: Tiered | None = None
    cache_write_1h: Tiered | None = None
    per_request: float = 0.0  # $ per call

    @functools.cached_property
    def flat(self) -> tuple[float, float, float, float, float, float] | None:
        """The prices with their fallbacks when none is tiered (the usual case), computed once; None
        when a context-length tier applies (``prices_at`` then reads them per span)."""
        kinds = (self.input, self.output, self.cache_read, self.cache_write, self.cache_write_1h, self.reasoning)
        if any(k is not None and k.tiers for k in kinds):
            return None
        i, o = self.input.base, self.output.base
        cw = self.cache_write.base if self.cache_write else i
        return (i, o, self.cache_read.base if self.cache_read else i, cw,
                self.cache_write_1h.base if self.cache_write_1h else cw, self.reasoning.base if self.reasoning else o)


@dataclass(frozen=True)
class Cost:
    input: float
    cache_read: float
    cache_write: float
    output: float
    reasoning: float
    request: float = 0.0

    @property
    def total(self) -> float:
        return self.input + self.cache_read + self.cache_write + self.output + self.reasoning + self.request


def prices_at(entry: PriceEntry, input_tokens: int) -> tuple[float, float, float, float, float, float]:
    """(input, output, cache_read, cache_write, cache_write_1h, reasoning) $ per 1M tokens, with the
    fallbacks applied, for a span with ``input_tokens`` (context-length tiers)."""
    flat = entry.flat
    if flat is not None:
        return flat
    i, o = entry.input.at(input_tokens), entry.output.at(input_tokens)
    cw = entry.cache_write.at(input_tokens) if entry.cache_write else i
    return (i, o, entry.cache_read.at(input_tokens) if entry.cache_read else i, cw,
            entry.cache_write_1h.at(input_tokens) if entry.cache_write_1h else cw,
            entry.reasoning.at(input_tokens) if entry.reasoning else o)


def cost_parts(prices: tuple, per_request: float, input_tokens: int, output_tokens: int, cache_read: int,
               cache_write: int, reasoning: int, cache_write_1h: int) -> tuple[float, ...]:
    """The six cost components (input, cache_read, cache_write, output, reasoning, request): the one
    place the arithmetic lives (the price step calls it per counted call, ``compute_cost`` too)."""
    in_p, out_p, cr_p, cw_p, cw1h_p, rs_p = prices
    uncached = input_tokens - cache_read - cache_write
    if reasoning > output_tokens:
        reasoning = output_tokens
    one_hour = cache_write_1h if cache_write_1h < cache_write else cache_write
    per = 1_000_000
    return ((uncached if uncached > 0 else 0) * in_p / per, cache_read * cr_p / per,
            ((cache_write - one_hour) * cw_p + one_hour * cw1h_p) / per, (output_tokens - reasoning) * out_p / per,
            reasoning * rs_p / per, per_request)


def compute_cost(entry: PriceEntry, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int,
                 reasoning: int, cache_write_1h: int = 0) -> Cost:
    return Cost(*cost_parts(prices_at(entry, input_tokens), entry.per_request, input_tokens, output_tokens,
                            cache_read, cache_write, reasoning, cache_write_1h))


# ---------------------------------------------------------------- what the request says

# The tier a call was billed at: the response's (the tier actually used) before the request's.
TIER_KEYS = ("gen_ai.openai.response.service_tier", "openai.response.service_tier",
             "gen_ai.openai.request.service_tier", "openai.request.service_tier", "anthropic.response.service_tier",
             "langfuse.observation.metadata.service_tier")
STANDARD_TIERS = frozenset({"", "default", "auto", "standard", "on_demand"})
# The 1-hour part of Anthropic cache writes (OpenLLMetry), and where OpenInference keeps the raw response.
ONE_HOUR_KEYS = ("anthropic.usage.cache_creation.ephemeral_1h_input_tokens",
                 "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens")
RAW_RESPONSE_KEYS = ("output.value",)


def billing_context(attrs: dict[str, str], cache_write: int = 1) -> tuple[str, int]:
    """(service tier as reported, 1-hour cache write tokens) from a span's attributes; the 1-hour
    split is looked for only when the span wrote to the cache."""
    tier = ""
    for k in TIER_KEYS:
        v = attrs.get(k)
        if v:
            tier = v.strip().strip('"').lower()
            break
    if not cache_write:
        return tier, 0
    one_hour = 0
    for k in ONE_HOUR_KEYS:
        v = attrs.get(k)
        if v and v.isdigit():
            one_hour = int(v)
            break
    else:
        for k in RAW_RESPONSE_KEYS:
            v = attrs.get(k)
            if v and "ephemeral_1h_input_tokens" in v:
                try:
                    got = json.loads(v)["usage"]["cache_creation"]["ephemeral_1h_input_tokens"]
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(got, int) and got > 0:
                    one_hour = got
                    break
    return tier, one_hour


def price_context(tier: str) -> dict[str, str] | None:
    """genai-prices' request context for a tier: its price variants are selected by it."""
    if tier in STANDARD_TIERS:
        return None
    if tier == "batch":
        return {"processing": "batch"}
    return {"service_tier": tier}


# ---------------------------------------------------------------- overrides

@dataclass(frozen=True)
class Override:
    id: str
    match_kind: str  # exact | prefix | regex
    pattern: str
    provider: str  # "" matches any provider
    entry: PriceEntry
    effective_from: date | None
    effective_to: date | None
    line: int = 0
    _regex: re.Pattern | None = field(default=None, compare=False)

    def matches(self, provider: str, model: str) -> bool:
        if self.provider and self.provider != provider:
            return False
        m = model.lower()
        if self.match_kind == "exact":
            return m == self.pattern.lower()
        if self.match_kind == "prefix":
            return m.startswith(self.pattern.lower())
        return bool(self._regex.fullmatch(model))

    def in_force(self, day: date) -> bool:
        return (self.effective_from is None or day >= self.effective_from) and (
            self.effective_to is None or day <= self.effective_to)


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves dates as text, so a bad date is reported with its line, not raised."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class PriceFileError(ConfigError):
    def __init__(self, path: str, errors: list[tuple[int, str]]):
        self.errors = errors
        super().__init__(f"price file {path}: " + "; ".join(f"line {ln}: {msg}" for ln, msg in errors))


def _tiered(node_value, where: str, errors: list, line: int) -> Tiered | None:
    if node_value is None:
        return None
    if isinstance(node_value, bool) or not isinstance(node_value, (int, float)) or node_value < 0:
        errors.append((line, f"{where} must be a non-negative number ($ per 1M tokens), got {node_value!r}"))
        return None
    return Tiered(float(node_value))


def load_overrides(path: str) -> list[Override]:
    """Read and validate a price file; every problem is reported with its line number."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise ConfigError(f"cannot read price file {path}: {e.strerror}") from None
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise PriceFileError(path, [((mark.line + 1) if mark else 0, f"not valid YAML: {e}")]) from None
    errors: list[tuple[int, str]] = []
    if root is None:
        return []
    doc = yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader subclass
    if not isinstance(doc, dict) or not isinstance(doc.get("prices"), list):
        raise PriceFileError(path, [(root.start_mark.line + 1, "the file must be a mapping with a 'prices' list")])
    prices_node = next(v for k, v in root.value if k.value == "prices")
    out = []
    allowed = {"id", "provider", "match", *PRICE_KINDS, "per_request", "tiers", "effective_from", "effective_to"}
    for n, (item, node) in enumerate(zip(doc["prices"], prices_node.value)):
        line = node.start_mark.line + 1
        if not isinstance(item, dict):
            errors.append((line, "each price entry must be a mapping"))
            continue
        unknown = set(item) - allowed
        if unknown:
            errors.append((line, f"unknown field(s) {', '.join(sorted(unknown))}"))
        match = item.get("match")
        kind = pattern = None
        if isinstance(match, str):
            kind, pattern = "exact", match
        elif isinstance(match, dict) and len(match) == 1 and next(iter(match)) in ("exact", "prefix", "regex"):
            kind, pattern = next(iter(match.items()))
            pattern = str(pattern)
        else:
            errors.append((line, "match must be a model name or one of {exact: ...}, {prefix: ...}, {regex: ...}"))
        regex = None
        if kind == "regex":
            try:
                regex = re.compile(pattern)
            except re.error as e:
                errors.append((line, f"invalid regex {pattern!r}: {e}"))
        rates = {k: _tiered(item.get(k), k, errors, line) for k in PRICE_KINDS}
        per_request = item.get("per_request", 0)
        if isinstance(per_request, bool) or not isinstance(per_request, (int, float)) or per_request < 0:
            errors.append((line, f"per_request must be a non-negative number ($ per call), got {per_request!r}"))
            per_request = 0
        for required in ("input", "output"):
            if rates[required] is None and item.get(required) is None:
                errors.append((line, f"{required} price is required"))
        tiers = item.get("tiers") or []
        if not isinstance(tiers, list):
            errors.append((line, "tiers must be a list of {above: N, input: ..., output: ...}"))
            tiers = []
        for t in tiers:
            if not isinstance(t, dict) or not isinstance(t.get("above"), int) or t["above"] < 0:
                errors.append((line, "each tier needs 'above': a whole number of input tokens"))
                continue
            for k in PRICE_KINDS:
                if k in t and rates.get(k) is not None:
                    tier_price = _tiered(t[k], f"tier {k}", errors, line)
                    if tier_price is not None:
                        r = rates[k]
                        rates[k] = Tiered(r.base, tuple(sorted(r.tiers + ((t["above"], tier_price.base),))))
        dates = {}
        for k in ("effective_from", "effective_to"):
            v = item.get(k)
            if v is None or isinstance(v, date):
                dates[k] = v
            else:
                try:
                    dates[k] = date.fromisoformat(str(v))
                except ValueError:
                    errors.append((line, f"{k} must be a date (YYYY-MM-DD), got {v!r}"))
                    dates[k] = None
        if dates.get("effective_from") and dates.get("effective_to") and dates["effective_to"] < dates["effective_from"]:
            errors.append((line, "effective_to is before effective_from"))
        if errors or kind is None or rates["input"] is None or rates["output"] is None:
            continue
        oid = str(item.get("id") or f"{item.get('provider') or '*'}/{pattern}#{n + 1}")
        entry = PriceEntry(f"override:{oid}", "override", rates["input"], rates["output"], rates["cache_read"],
                           rates["cache_write"], rates["reasoning"], rates["cache_write_1h"], float(per_request))
        out.append(Override(oid, kind, pattern, str(item.get("provider") or ""), entry,
                            dates["effective_from"], dates["effective_to"], line, regex))
    if errors:
        raise PriceFileError(path, errors)
    return out


# ---------------------------------------------------------------- the table

def split_model_ref(provider: str, model: str) -> tuple[str, str]:
    """Strip gateway and provider prefixes: ("", "openai/gpt-4o") -> ("openai", "gpt-4o")."""
    while "/" in model and provider != "openrouter":
        head, rest = model.split("/", 1)
        h = head.lower()
        if h in GATEWAY_PREFIXES:
            model = rest
        elif h in PREFIX_PROVIDERS:
            provider = provider or PREFIX_PROVIDERS[h]
            model = rest
        else:
            break
    return provider, model


MAX_RESOLVED = 10_000  # (provider, model, host) lookups remembered; cleared when full


@dataclass(frozen=True)
class Priced:
    entry: PriceEntry
    status: str  # "priced" | "priced_model_only" (the placed provider does not list the model)


class PriceTable:
    def __init__(self, overrides: list[Override] | None = None, use_genai_prices: bool = True):
        self.overrides = overrides or []
        self._snapshot = None
        self.genai_prices_version = ""
        if use_genai_prices:
            import genai_prices
            from genai_prices import data_snapshot

            self._snapshot = data_snapshot.get_snapshot()
            self.genai_prices_version = genai_prices.__version__
        self._resolved: dict[tuple[str, str, str], tuple[list[Override], object, str]] = {}
        self._entries: dict[tuple, PriceEntry] = {}
        self._hosts: dict[str, str | None] = {}

    def provider_of_host(self, host: str) -> str | None:
        """genai-prices' provider whose API URL pattern matches ``server.address`` (None: no match)."""
        if self._snapshot is None or not host:
            return None
        got = self._hosts.get(host, "")
        if got == "":
            url = "https://" + host.split(":", 1)[0].strip().lower()
            got = next((p.id for p in self._snapshot.providers if re.match(p.api_pattern, url)), None)
            if len(self._hosts) >= MAX_RESOLVED:
                self._hosts.clear()
            self._hosts[host] = got
        return got

    def _resolve(self, provider: str, model: str, host: str = ""):
        key = (provider, model, host)
        got = self._resolved.get(key)
        if got is None:
            p, m = split_model_ref(provider, model)
            overrides = [o for o in self.overrides if o.matches(p, m) or o.matches(provider, model)]
            found, status = None, "priced"
            if self._snapshot is not None:
                gp_provider = self.provider_of_host(host) or (GENAI_PRICES_PROVIDERS.get(p) if p else None)
                try:
                    found = self._snapshot.find_provider_model(m, None, gp_provider, None)
                except LookupError:
                    if gp_provider is not None:  # a gateway or compatible endpoint: the model's own name
                        try:
                            found, status = self._snapshot.find_provider_model(m, None, None, None), \
                                "priced_model_only"
                        except LookupError:
                            found = None
            if len(self._resolved) >= MAX_RESOLVED:  # model names come from clients: bounded
                self._resolved.clear()
            got = self._resolved[key] = (overrides, found, status)
        return got

    def lookup(self, provider: str, model: str, at: datetime, tier: str = "", host: str = "") -> PriceEntry | None:
        got = self.price(provider, model, at, tier, host)
        return got.entry if got else None

    def price(self, provider: str, model: str, at: datetime, tier: str = "", host: str = "") -> Priced | None:
        overrides, found, status = self._resolve(provider, model, host)
        day = at.astimezone(timezone.utc).date()
        best = None
        for o in overrides:
            if o.in_force(day) and (best is None or (o.effective_from or date.min) >= (best.effective_from or date.min)):
                best = o
        if best is not None:
            return Priced(best.entry, "priced")
        if found is None:
            return None
        gp_provider, model_info = found
        standard = model_info.get_prices(at)
        context = price_context(tier)
        key = (id(standard), tuple(sorted(context.items())) if context else ())
        entry = self._entries.get(key)
        if entry is None:
            prices = model_info.get_prices(at, context) if context else standard
            if len(self._entries) >= MAX_RESOLVED:
                self._entries.clear()
            entry = self._entries[key] = self._from_genai_prices(gp_provider.id, model_info, standard, prices, context)
        return Priced(entry, status)

    def _from_genai_prices(self, provider_id: str, model_info, standard, prices, context) -> PriceEntry:
        def conv(v) -> Tiered | None:
            if v is None:
                return None
            if hasattr(v, "tiers"):
                return Tiered(float(v.base), tuple((t.start, float(t.price)) for t in v.tiers))
            return Tiered(float(v))

        start = ""
        if isinstance(model_info.prices, list):
            for cp in model_info.prices:
                if cp.prices is standard and getattr(cp.constraint, "start_date", None):
                    start = f"@{cp.constraint.start_date.isoformat()}"
        variant = "" if not context else "+" + ",".join(f"{k}={v}" for k, v in sorted(context.items()))
        input_price = conv(getattr(prices, "input_mtok", None)) or Tiered(0.0)
        output_price = conv(getattr(prices, "output_mtok", None)) or Tiered(0.0)
        requests = getattr(prices, "requests_kcount", None)
        return PriceEntry(f"genai-prices@{self.genai_prices_version}:{provider_id}/{model_info.id}{start}{variant}",
                          "genai-prices", input_price, output_price, conv(getattr(prices, "cache_read_mtok", None)),
                          conv(getattr(prices, "cache_write_mtok", None)),
                          conv(getattr(prices, "output_reasoning_mtok", None)),
                          conv(getattr(prices, "cache_write_1h_mtok", None)),
                          float(requests) / 1000 if requests is not None else 0.0)


class PriceLookups:
    """``table.price`` memoized per key (provider, model, host, tier, start minute): (entry, price
    status), or None for a model the table does not know. Bounded: forgotten whole past 100k keys."""

    def __init__(self, table: "PriceTable"):
        self.table = table
        self._memo: dict[tuple, tuple | None] = {}

    def __call__(self, key: tuple, start_ns: int) -> tuple | None:
        got = self._memo.get(key, False)
        if got is False:
            at = datetime.fromtimestamp(start_ns / 1e9, tz=timezone.utc)
            p = self.table.price(key[0], key[1], at, key[3], key[2])
            got = self._memo[key] = None if p is None else (p.entry, p.status)
            if len(self._memo) > 100_000:
                self._memo.clear()
        return got


def make_price_step(table: PriceTable, on_unknown: Callable[[str], None] = lambda model: None):
    """The price step: fills cost columns, price_status, price_id, service_tier and the 1-hour
    cache writes. Runs for every counted call: lookups are memoized per (provider, model, host,
    tier, minute); the arithmetic is ``cost_parts``, as in ``compute_cost``."""
    lookup = PriceLookups(table)

    def price(batch: SpanBatch) -> SpanBatch:
        usage_status, counted, models, providers = batch.usage_status, batch.counted, batch.model, batch.provider
        attributes, starts = batch.attributes, batch.start_time_ns
        for i in range(len(batch)):
            status = usage_status[i]
            if not counted[i]:
                batch.price_status[i] = "not_counted" if status not in ("none", "missing") else ""
                continue
            if status in ("none", "missing"):
                batch.price_status[i] = "no_usage" if status == "missing" else ""
                continue
            if status not in ("ok", "inconsistent"):
                batch.price_status[i] = "invalid_usage"
                continue
            model = models[i]
            if not model:
                batch.price_status[i] = "no_model"
                continue
            attrs = attributes[i]
            cw = batch.cache_write_tokens[i]
            tier, one_hour = billing_context(attrs, cw)
            if tier:
                batch.service_tier[i] = tier
            if one_hour:
                one_hour = batch.cache_write_1h_tokens[i] = one_hour if one_hour < cw else cw
            # Per minute: genai-prices has time-of-day prices (off-peak rates) besides dated ones.
            key = (providers[i], model, attrs.get("server.address", ""), tier, starts[i] // 60_000_000_000)
            got = lookup(key, starts[i])
            if got is None:
                batch.price_status[i] = "unknown_model"
                on_unknown(model)
                continue
            entry, price_status = got
            inp = batch.input_tokens[i]
            parts = cost_parts(prices_at(entry, inp), entry.per_request, inp, batch.output_tokens[i],
                               batch.cache_read_tokens[i], cw, batch.reasoning_tokens[i], one_hour)
            (batch.input_cost_usd[i], batch.cache_read_cost_usd[i], batch.cache_write_cost_usd[i],
             batch.output_cost_usd[i], batch.reasoning_cost_usd[i], batch.request_cost_usd[i]) = parts
            batch.cost_usd[i] = parts[0] + parts[1] + parts[2] + parts[3] + parts[4] + parts[5]
            batch.price_status[i] = price_status
            batch.price_id[i] = entry.id
        return batch

    return price

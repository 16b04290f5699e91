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
    cache_write_cost = cache_write x cache_write_price (input price when the entry has none)
    output_cost      = (output - reasoning) x output_price
    reasoning_cost   = reasoning x reasoning_price      (output price when the entry has none)
    cost = sum of the five

Context-length tiers follow genai-prices' "cliff" rule: when the span's total
input tokens exceed a tier's threshold, that tier's price applies to all of
that kind of token.

``price_status``: ``priced`` | ``unknown_model`` (cost NULL, counted in
``tokenpulse_unknown_model_spans_total{model}``) | ``no_model`` | ``no_usage`` |
``invalid_usage`` | ``not_counted`` (aggregates and duplicates are not priced,
so sums never count them twice). ``price_id`` names the entry that priced the
span: ``genai-prices@<version>:<provider>/<model id>[@<start date>]`` or
``override:<id>``.
"""

from __future__ import annotations

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
PRICE_KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")


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


@dataclass(frozen=True)
class Cost:
    input: float
    cache_read: float
    cache_write: float
    output: float
    reasoning: float

    @property
    def total(self) -> float:
        return self.input + self.cache_read + self.cache_write + self.output + self.reasoning


def compute_cost(entry: PriceEntry, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int,
                 reasoning: int) -> Cost:
    per = 1_000_000
    in_price = entry.input.at(input_tokens)
    out_price = entry.output.at(input_tokens)
    cr_price = entry.cache_read.at(input_tokens) if entry.cache_read else in_price
    cw_price = entry.cache_write.at(input_tokens) if entry.cache_write else in_price
    rs_price = entry.reasoning.at(input_tokens) if entry.reasoning else out_price
    uncached = max(input_tokens - cache_read - cache_write, 0)
    reasoning = min(reasoning, output_tokens)
    return Cost(uncached * in_price / per, cache_read * cr_price / per, cache_write * cw_price / per,
                (output_tokens - reasoning) * out_price / per, reasoning * rs_price / per)


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
    allowed = {"id", "provider", "match", "input", "output", "cache_read", "cache_write", "reasoning", "tiers",
               "effective_from", "effective_to"}
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
                           rates["cache_write"], rates["reasoning"])
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


MAX_RESOLVED = 10_000  # (provider, model) lookups remembered; cleared when full


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
        self._resolved: dict[tuple[str, str], tuple[list[Override], object]] = {}
        self._entries: dict[int, PriceEntry] = {}

    def _resolve(self, provider: str, model: str):
        key = (provider, model)
        got = self._resolved.get(key)
        if got is None:
            p, m = split_model_ref(provider, model)
            overrides = [o for o in self.overrides if o.matches(p, m) or o.matches(provider, model)]
            found = None
            if self._snapshot is not None:
                gp_provider = GENAI_PRICES_PROVIDERS.get(p) if p else None
                try:
                    found = self._snapshot.find_provider_model(m, None, gp_provider, None)
                except LookupError:
                    found = None
            if len(self._resolved) >= MAX_RESOLVED:  # model names come from clients: bounded
                self._resolved.clear()
            got = self._resolved[key] = (overrides, found)
        return got

    def lookup(self, provider: str, model: str, at: datetime) -> PriceEntry | None:
        overrides, found = self._resolve(provider, model)
        day = at.astimezone(timezone.utc).date()
        best = None
        for o in overrides:
            if o.in_force(day) and (best is None or (o.effective_from or date.min) >= (best.effective_from or date.min)):
                best = o
        if best is not None:
            return best.entry
        if found is None:
            return None
        gp_provider, model_info = found
        prices = model_info.get_prices(at)
        entry = self._entries.get(id(prices))
        if entry is None:
            entry = self._entries[id(prices)] = self._from_genai_prices(gp_provider.id, model_info, prices)
        return entry

    def _from_genai_prices(self, provider_id: str, model_info, prices) -> PriceEntry:
        def conv(v) -> Tiered | None:
            if v is None:
                return None
            if hasattr(v, "tiers"):
                return Tiered(float(v.base), tuple((t.start, float(t.price)) for t in v.tiers))
            return Tiered(float(v))

        start = ""
        if isinstance(model_info.prices, list):
            for cp in model_info.prices:
                if cp.prices is prices and getattr(cp.constraint, "start_date", None):
                    start = f"@{cp.constraint.start_date.isoformat()}"
        input_price = conv(getattr(prices, "input_mtok", None)) or Tiered(0.0)
        output_price = conv(getattr(prices, "output_mtok", None)) or Tiered(0.0)
        return PriceEntry(f"genai-prices@{self.genai_prices_version}:{provider_id}/{model_info.id}{start}",
                          "genai-prices", input_price, output_price, conv(getattr(prices, "cache_read_mtok", None)),
                          conv(getattr(prices, "cache_write_mtok", None)), None)


def make_price_step(table: PriceTable, on_unknown: Callable[[str], None] = lambda model: None):
    """The price step: fills cost columns, price_status and price_id."""
    lookups: dict[tuple[str, str, int], PriceEntry | None] = {}

    def price(batch: SpanBatch) -> SpanBatch:
        for i in range(len(batch)):
            status = batch.usage_status[i]
            if not batch.counted[i]:
                batch.price_status[i] = "not_counted" if status not in ("none", "missing") else ""
                continue
            if status in ("none", "missing"):
                batch.price_status[i] = "no_usage" if status == "missing" else ""
                continue
            if status not in ("ok", "inconsistent"):
                batch.price_status[i] = "invalid_usage"
                continue
            model = batch.model[i]
            if not model:
                batch.price_status[i] = "no_model"
                continue
            provider = batch.provider[i]
            # Per minute: genai-prices has time-of-day prices (off-peak rates) besides dated ones.
            key = (provider, model, batch.start_time_ns[i] // 60_000_000_000)
            if key in lookups:
                entry = lookups[key]
            else:
                at = datetime.fromtimestamp(batch.start_time_ns[i] / 1e9, tz=timezone.utc)
                entry = lookups[key] = table.lookup(provider, model, at)
                if len(lookups) > 100_000:
                    lookups.clear()
            if entry is None:
                batch.price_status[i] = "unknown_model"
                on_unknown(model)
                continue
            c = compute_cost(entry, batch.input_tokens[i], batch.output_tokens[i], batch.cache_read_tokens[i],
                             batch.cache_write_tokens[i], batch.reasoning_tokens[i])
            batch.input_cost_usd[i] = c.input
            batch.cache_read_cost_usd[i] = c.cache_read
            batch.cache_write_cost_usd[i] = c.cache_write
            batch.output_cost_usd[i] = c.output
            batch.reasoning_cost_usd[i] = c.reasoning
            batch.cost_usd[i] = c.total
            batch.price_status[i] = "priced"
            batch.price_id[i] = entry.id
        return batch

    return price

"""Every billing component priced as the provider bills it, checked against genai-prices' own
calculation (``calc_price``, the independent reference) on spans run through the real pipeline."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest
from genai_prices import Usage, calc_price

from tests.enrich_helpers import CLIENT, batch_of
from tokenpulse.enrich import Pipeline
from tokenpulse.enrich.attribute import Attributor
from tokenpulse.enrich.price import PriceTable

PIPE = Pipeline(PriceTable(), Attributor(user_id_mode="raw"))


def _priced(provider: str, model: str, usage: dict, extra: dict | None = None):
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model,
             "gen_ai.response.model": model, **usage, **(extra or {})}
    b = PIPE(batch_of(("chat " + model, CLIENT, attrs))).batch
    return b, datetime.fromtimestamp(b.start_time_ns[0] / 1e9, tz=timezone.utc)


def _same(a: float, b) -> bool:
    return math.isclose(a, float(b), rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize("tier, context", [
    ("priority", {"service_tier": "priority"}),
    ("flex", {"service_tier": "flex"}),
    ("batch", {"processing": "batch"}),
])
def test_the_service_tier_selects_that_tiers_prices(tier, context):
    usage = {"gen_ai.usage.input_tokens": 12_000, "gen_ai.usage.output_tokens": 800}
    b, at = _priced("openai", "gpt-5", usage, {"openai.response.service_tier": tier})
    want = calc_price(Usage(input_tokens=12_000, output_tokens=800), "gpt-5", provider_id="openai",
                      genai_request_timestamp=at, price_context=context).total_price
    standard = calc_price(Usage(input_tokens=12_000, output_tokens=800), "gpt-5", provider_id="openai",
                          genai_request_timestamp=at).total_price
    assert want != standard, "the reference has no price for this tier: the case proves nothing"
    assert b.service_tier[0] == tier and b.price_status[0] == "priced"
    assert _same(b.cost_usd[0], want), (b.cost_usd[0], want)
    assert b.price_id[0].endswith("+" + ",".join(f"{k}={v}" for k, v in context.items()))


def test_a_default_tier_is_the_standard_price():
    usage = {"gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 100}
    b, at = _priced("openai", "gpt-4o", usage, {"gen_ai.openai.response.service_tier": "default"})
    want = calc_price(Usage(input_tokens=1000, output_tokens=100), "gpt-4o", provider_id="openai",
                      genai_request_timestamp=at).total_price
    assert _same(b.cost_usd[0], want) and b.service_tier[0] == "default"


def test_reasoning_is_priced_at_the_reasoning_price():
    """Perplexity's deep research bills reasoning below output: priced as output it was ~2x."""
    usage = {"gen_ai.usage.input_tokens": 2000, "gen_ai.usage.output_tokens": 9000,
             "gen_ai.usage.reasoning.output_tokens": 8000}
    b, at = _priced("perplexity", "sonar-deep-research", usage)
    want = calc_price(Usage(input_tokens=2000, output_tokens=9000, output_reasoning_tokens=8000),
                      "sonar-deep-research", provider_id="perplexity", genai_request_timestamp=at).total_price
    assert _same(b.cost_usd[0], want), (b.cost_usd[0], want)
    assert _same(b.reasoning_cost_usd[0], 8000 * 3 / 1e6)


def test_per_request_fees_are_added_once_per_call():
    usage = {"gen_ai.usage.input_tokens": 500, "gen_ai.usage.output_tokens": 300}
    b, at = _priced("perplexity", "sonar-pro", usage)
    ref = calc_price(Usage(input_tokens=500, output_tokens=300), "sonar-pro", provider_id="perplexity",
                     genai_request_timestamp=at).total_price
    assert _same(b.request_cost_usd[0], 14 / 1000)
    assert _same(b.cost_usd[0], ref), (b.cost_usd[0], ref)
    parts = (b.input_cost_usd[0], b.cache_read_cost_usd[0], b.cache_write_cost_usd[0], b.output_cost_usd[0],
             b.reasoning_cost_usd[0], b.request_cost_usd[0])
    assert _same(sum(parts), b.cost_usd[0])  # the components still add up to cost_usd


def test_one_hour_cache_writes_are_priced_at_the_one_hour_price():
    usage = {"gen_ai.usage.input_tokens": 5000, "gen_ai.usage.output_tokens": 200,
             "gen_ai.usage.cache_creation.input_tokens": 3000,
             "anthropic.usage.cache_creation.ephemeral_1h_input_tokens": 1200}
    b, at = _priced("anthropic", "claude-haiku-4-5", usage)
    want = calc_price(Usage(input_tokens=5000, output_tokens=200, cache_write_tokens=3000,
                            cache_write_1h_tokens=1200, cache_write_5m_tokens=1800),
                      "claude-haiku-4-5", provider_id="anthropic", genai_request_timestamp=at).total_price
    assert b.cache_write_1h_tokens[0] == 1200
    assert _same(b.cost_usd[0], want), (b.cost_usd[0], want)


def test_the_raw_response_openinference_keeps_gives_the_one_hour_split():
    raw = '{"usage": {"cache_creation": {"ephemeral_1h_input_tokens": 700, "ephemeral_5m_input_tokens": 300}}}'
    usage = {"gen_ai.usage.input_tokens": 2000, "gen_ai.usage.output_tokens": 10,
             "gen_ai.usage.cache_creation.input_tokens": 1000, "output.value": raw}
    b, _ = _priced("anthropic", "claude-haiku-4-5", usage)
    assert b.cache_write_1h_tokens[0] == 700


def test_an_openai_compatible_endpoint_is_placed_by_server_address():
    """The OpenAI SDK pointed at DeepSeek: provider openai, but the call went to api.deepseek.com."""
    usage = {"gen_ai.usage.input_tokens": 10_000, "gen_ai.usage.output_tokens": 1000}
    b, at = _priced("openai", "deepseek-chat", usage, {"server.address": "api.deepseek.com"})
    want = calc_price(Usage(input_tokens=10_000, output_tokens=1000), "deepseek-chat", provider_id="deepseek",
                      genai_request_timestamp=at).total_price
    assert b.price_status[0] == "priced" and ":deepseek/" in b.price_id[0]
    assert _same(b.cost_usd[0], want)


def test_an_unknown_gateway_falls_back_to_the_model_name_and_says_so():
    usage = {"gen_ai.usage.input_tokens": 10_000, "gen_ai.usage.output_tokens": 1000}
    b, at = _priced("openai", "deepseek-chat", usage, {"server.address": "llm-gateway.internal:8080"})
    want = calc_price(Usage(input_tokens=10_000, output_tokens=1000), "deepseek-chat",
                      genai_request_timestamp=at).total_price
    assert b.price_status[0] == "priced_model_only"  # was unknown_model and $0 in every sum
    assert _same(b.cost_usd[0], want)


def test_a_model_no_provider_lists_stays_unknown():
    usage = {"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 1}
    b, _ = _priced("openai", "our-own-finetune-v9", usage, {"server.address": "api.openai.com"})
    assert b.price_status[0] == "unknown_model" and b.cost_usd[0] is None

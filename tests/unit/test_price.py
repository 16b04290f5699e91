"""Price: the cost formula, tiers, effective dates, overrides, lineage, unknown models."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from tests.enrich_helpers import CLIENT, batch_of
from tokenpulse.enrich.normalize import normalize
from tokenpulse.enrich.price import (PriceEntry, PriceFileError, PriceTable, Tiered, compute_cost, load_overrides,
                                     make_price_step, split_model_ref)

NOW = datetime.now(timezone.utc)


def test_cost_formula_with_cache_and_reasoning():
    entry = PriceEntry("t", "override", Tiered(2.0), Tiered(8.0), Tiered(0.5), Tiered(2.5), None)
    # 1200 input of which 1000 cache read and 100 cache write; 300 output of which 100 reasoning.
    c = compute_cost(entry, 1200, 300, 1000, 100, 100)
    assert c.input == pytest.approx(100 * 2.0 / 1e6)
    assert c.cache_read == pytest.approx(1000 * 0.5 / 1e6)
    assert c.cache_write == pytest.approx(100 * 2.5 / 1e6)
    assert c.output == pytest.approx(200 * 8.0 / 1e6)
    assert c.reasoning == pytest.approx(100 * 8.0 / 1e6)  # reasoning falls back to the output price
    assert c.total == pytest.approx((200 + 500 + 250 + 1600 + 800) / 1e6)


def test_reasoning_priced_separately_and_missing_cache_prices_fall_back_to_input():
    entry = PriceEntry("t", "override", Tiered(1.0), Tiered(4.0), None, None, Tiered(10.0))
    c = compute_cost(entry, 1000, 100, 400, 100, 50)
    assert (c.input, c.cache_read, c.cache_write) == pytest.approx((500e-6, 400e-6, 100e-6))
    assert (c.output, c.reasoning) == pytest.approx((50 * 4.0 / 1e6, 50 * 10.0 / 1e6))


def test_context_tiers_are_cliffs_on_total_input():
    entry = PriceEntry("t", "genai-prices", Tiered(3.0, ((200_000, 6.0),)), Tiered(15.0, ((200_000, 22.5),)))
    assert compute_cost(entry, 200_000, 1000, 0, 0, 0).total == pytest.approx((200_000 * 3 + 1000 * 15) / 1e6)
    assert compute_cost(entry, 200_001, 1000, 0, 0, 0).total == pytest.approx((200_001 * 6 + 1000 * 22.5) / 1e6)


def test_genai_prices_lookup_and_lineage():
    table = PriceTable()
    entry = table.lookup("openai", "gpt-4o-2024-08-06", NOW)  # dated variant, matched by genai-prices' rule
    assert entry.id.startswith("genai-prices@") and entry.id.split(":", 1)[1].startswith("openai/gpt-4o")
    assert (entry.input.base, entry.output.base, entry.cache_read.base) == (2.5, 10.0, 1.25)
    assert table.lookup("openai", "gpt-4o-mini", NOW).input.base == 0.15  # not its sibling gpt-4o
    sonnet = table.lookup("anthropic", "claude-sonnet-4-5-20250929", NOW)
    assert sonnet.input.tiers == ((200_000, 6.0),) and sonnet.cache_write.base == 3.75


@pytest.mark.parametrize("provider, model", [
    ("", "openai/gpt-4o"), ("", "litellm_proxy/openai/gpt-4o"), ("openai", "gpt-4o"), ("azure.ai.openai", "gpt-4o"),
])
def test_gateway_and_provider_prefixes_resolve(provider, model):
    entry = PriceTable().lookup(provider, model, NOW)
    assert entry is not None and entry.input.base == 2.5


def test_split_model_ref():
    assert split_model_ref("", "openai/gpt-4o") == ("openai", "gpt-4o")
    assert split_model_ref("", "litellm_proxy/anthropic/claude-x") == ("anthropic", "claude-x")
    assert split_model_ref("openrouter", "openai/gpt-4o") == ("openrouter", "openai/gpt-4o")
    assert split_model_ref("", "my-org/custom") == ("", "my-org/custom")


def test_unknown_variant_does_not_take_a_siblings_price():
    table = PriceTable()
    assert table.lookup("openai", "gpt-4o-super-new", NOW) is None
    assert table.lookup("openai", "totally-unknown-model", NOW) is None


def _price_file(tmp_path, text):
    p = tmp_path / "prices.yaml"
    p.write_text(text)
    return str(p)


def test_overrides_win_and_follow_effective_dates(tmp_path):
    path = _price_file(tmp_path, """
prices:
  - id: contract-2026
    provider: openai
    match: {prefix: gpt-4o}
    input: 2.0
    output: 8.0
    cache_read: 1.0
    effective_from: 2026-01-01
    effective_to: 2026-06-30
  - id: contract-2026-h2
    provider: openai
    match: {prefix: gpt-4o}
    input: 1.5
    output: 6.0
    effective_from: 2026-07-01
  - id: in-house
    match: {regex: "acme-llm-[0-9]+"}
    input: 0.1
    output: 0.2
    tiers:
      - above: 100000
        input: 0.3
""")
    table = PriceTable(load_overrides(path))
    at = lambda s: datetime.fromisoformat(s).replace(tzinfo=timezone.utc)  # noqa: E731
    assert table.lookup("openai", "gpt-4o", at("2026-03-01")).id == "override:contract-2026"
    assert table.lookup("openai", "gpt-4o-mini", at("2026-08-01")).id == "override:contract-2026-h2"
    assert table.lookup("openai", "gpt-4o", at("2025-12-31")).id.startswith("genai-prices@")  # before any override
    # the override is for openai only: under another provider the model is matched by name alone, and says so
    other = table.price("anthropic", "gpt-4o", at("2026-03-01"))
    assert other.entry.id.startswith("genai-prices@") and other.status == "priced_model_only"
    acme = table.lookup("", "acme-llm-7", at("2026-03-01"))
    assert acme.id == "override:in-house" and acme.input.at(100_001) == 0.3 and acme.output.at(100_001) == 0.2
    assert table.lookup("", "acme-llm-x", at("2026-03-01")) is None


def test_price_file_errors_have_line_numbers(tmp_path):
    path = _price_file(tmp_path, """prices:
  - match: {exact: a}
    input: 1
    output: 2
  - match: {fuzzy: b}
    input: -1
    output: 2
    colour: blue
  - match: {regex: "("}
    input: 1
  - match: c
    input: 1
    output: 1
    effective_from: 2026-13-01
""")
    with pytest.raises(PriceFileError) as e:
        load_overrides(path)
    lines = sorted({ln for ln, _ in e.value.errors})
    assert lines == [5, 9, 11]
    text = str(e.value)
    assert "line 5: unknown field(s) colour" in text and "line 5: input must be a non-negative number" in text
    assert "line 9: invalid regex" in text and "line 9: output price is required" in text
    assert "line 11: effective_from must be a date" in text


def _priced(*specs, table=None, unknown=None):
    step = make_price_step(table or PriceTable(), (unknown.append if unknown is not None else lambda m: None))
    return step(normalize(batch_of(*specs)))


def test_price_step_statuses_and_costs():
    unknown: list[str] = []
    chat = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}
    b = _priced(
        ("chat", CLIENT, {**chat, "gen_ai.response.model": "gpt-4o", "gen_ai.usage.input_tokens": 1200,
                          "gen_ai.usage.cache_read.input_tokens": 1000, "gen_ai.usage.output_tokens": 100}),
        ("chat", CLIENT, {**chat, "gen_ai.response.model": "mystery-9", "gen_ai.usage.input_tokens": 5}),
        ("chat", CLIENT, {**chat, "gen_ai.usage.input_tokens": 5}),
        ("chat", CLIENT, {**chat, "gen_ai.response.model": "gpt-4o", "gen_ai.usage.input_tokens": -5}),
        ("chat", CLIENT, {**chat, "gen_ai.response.model": "gpt-4o"}),
        ("invoke_agent", 1, {"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 50}),
        unknown=unknown)
    assert b.price_status == ["priced", "unknown_model", "no_model", "invalid_usage", "no_usage", "not_counted"]
    assert b.cost_usd[0] == pytest.approx((200 * 2.5 + 1000 * 1.25 + 100 * 10) / 1e6)
    assert b.input_cost_usd[0] == pytest.approx(200 * 2.5 / 1e6)
    assert b.cache_read_cost_usd[0] == pytest.approx(1000 * 1.25 / 1e6)
    assert b.price_id[0].startswith("genai-prices@")
    assert b.cost_usd[1:] == [None] * 5  # unknown is NULL, never 0
    assert unknown == ["mystery-9"]


def test_newest_effective_price_at_span_start(tmp_path):
    path = _price_file(tmp_path, """
prices:
  - {id: old, match: m1, input: 1, output: 1, effective_to: 2020-12-31}
  - {id: new, match: m1, input: 2, output: 2, effective_from: 2021-01-01}
""")
    table = PriceTable(load_overrides(path), use_genai_prices=False)
    now_ns = time.time_ns()
    b = _priced(("chat", CLIENT, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m1",
                                  "gen_ai.usage.input_tokens": 1_000_000}, {"start": now_ns}), table=table)
    assert b.price_id == ["override:new"] and b.cost_usd == [2.0]


def test_cli_prices_lookup_and_check(tmp_path, capsys):
    from tokenpulse.cli import main

    assert main(["prices", "lookup", "gpt-4o-2024-08-06", "--provider", "openai", "--at", "2026-03-01"]) == 0
    out = capsys.readouterr().out
    assert "genai-prices@" in out and "input          2.5" in out and "reasoning      (the output price)" in out
    assert main(["prices", "lookup", "gpt-4o-super-new", "--provider", "openai"]) == 1
    assert "unknown_model" in capsys.readouterr().out

    good = _price_file(tmp_path, "prices:\n  - {id: x, match: m, input: 1, output: 2}\n")
    assert main(["prices", "check", good]) == 0 and "ok, 1 price entry" in capsys.readouterr().out
    assert main(["prices", "lookup", "m", "--price-file", good]) == 0 and "override:x" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("prices:\n  - {id: x, match: m, input: 1}\n")
    assert main(["prices", "check", str(bad)]) == 1
    assert f"{bad}:2: output price is required" in capsys.readouterr().err


def test_the_lookup_memory_is_bounded_by_distinct_model_names():
    """Model names come from clients: a sender inventing names must not grow memory without end."""
    from datetime import datetime, timezone

    from tokenpulse.enrich import price

    table = price.PriceTable()
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i in range(price.MAX_RESOLVED + 50):
        table.lookup("openai", f"made-up-model-{i}", at)
    assert len(table._resolved) <= price.MAX_RESOLVED
    assert table.lookup("openai", "gpt-4o", at) is not None  # still prices

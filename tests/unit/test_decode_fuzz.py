"""Decoders never crash: any bytes give a batch or InvalidRequest, nothing else (bounded examples)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.otlp import request, span
from tokenpulse.errors import InvalidRequest
from tokenpulse.otlp.decode import decode_json, decode_protobuf
from tokenpulse.record import FIELD_NAMES

VALID = request([span(attrs={"gen_ai.usage.input_tokens": 5, "k": "v"}) for _ in range(3)]).SerializeToString()


def _check(decoder, body: bytes) -> None:
    try:
        d = decoder(body)
    except InvalidRequest:
        return
    n = len(d.batch)
    assert all(len(getattr(d.batch, f)) == n for f in FIELD_NAMES)
    assert d.rejected >= 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_protobuf_decoder_random_bytes(body):
    _check(decode_protobuf, body)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_protobuf_decoder_mutated_valid_requests(data):
    body = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    _check(decode_protobuf, bytes(body[:cut]))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_json_decoder_arbitrary_documents(doc):
    _check(decode_json, json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [doc]}]}]}).encode())
    _check(decode_json, json.dumps(doc).encode())


# Keys enrichment reads, so random values hit the dialect tables, pricing and attribution.
_ENRICH_KEYS = ["gen_ai.operation.name", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
                "llm.token_count.completion", "ai.usage.promptTokens", "gen_ai.response.model",
                "gen_ai.request.model", "gen_ai.provider.name", "gen_ai.system", "gen_ai.usage.cost",
                "gen_ai.response.id", "tenant.id", "app.feature", "user.id", "gen_ai.agent.name",
                "gen_ai.conversation.id", "gen_ai.tool.name", "llm.usage.total_tokens"]
_VALUES = st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=40), st.booleans(),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["chat", "gpt-4o", "openai",
                                                                                     "anthropic", "", "-1", "1e9"]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(st.one_of(st.sampled_from(_ENRICH_KEYS), st.text(max_size=12)), _VALUES,
                                max_size=10), min_size=1, max_size=6))
def test_enrichment_any_attribute_values(attr_maps):
    from tokenpulse.enrich import Pipeline
    from tokenpulse.enrich.attribute import Attributor
    from tokenpulse.enrich.normalize import MAX_TOKENS

    d = decode_protobuf(request([span(attrs=a) for a in attr_maps]).SerializeToString())
    b = Pipeline(attributor=Attributor(user_id_mode="pseudonymize", user_id_key=b"k" * 16))(d.batch).batch
    assert all(len(getattr(b, f)) == len(b) for f in FIELD_NAMES)
    for i in range(len(b)):
        for f in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
            assert 0 <= getattr(b, f)[i] <= MAX_TOKENS * 2, (f, getattr(b, f)[i])
        assert b.cost_usd[i] is None or b.cost_usd[i] >= 0


@pytest.mark.parametrize("which", ["protobuf", "json"])
def test_atheris_coverage_guided_bounded(which, tmp_path):
    """libFuzzer-driven runs from valid seeds (tests/fuzz/atheris_targets.py), bounded for CI."""
    pytest.importorskip("atheris", reason="atheris is not installed (it ships Linux wheels only)")
    import subprocess
    import sys
    from pathlib import Path

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if which == "protobuf":
        (corpus / "seed1").write_bytes(VALID)
        (corpus / "seed2").write_bytes(request([span(attrs={"gen_ai.operation.name": "chat", "tenant.id": "a",
                                                            "gen_ai.response.model": "gpt-4o"})]).SerializeToString())
    else:
        (corpus / "seed1").write_text(json.dumps({"resourceSpans": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "s"}}]}, "scopeSpans": [{"spans": [{
                "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "chat",
                "startTimeUnixNano": "1700000000000000000", "attributes": [
                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
                    {"key": "tenant.id", "value": {"stringValue": "acme"}}]}]}]}]}))
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "tests/fuzz/atheris_targets.py"), which, "-runs=4000",
                        "-max_len=8192", f"-artifact_prefix={tmp_path}/", str(corpus)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 4000 runs" in r.stderr

"""Decoders never crash: any bytes give a batch or InvalidRequest, nothing else (bounded examples)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.otlp import request, span
from tokenpulse.errors import InvalidRequest
from tokenpulse.receiver.decode import decode_json, decode_protobuf
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

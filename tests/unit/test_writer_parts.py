"""Pure parts of the write path: the dedup cache, request inflation, error classification."""

from __future__ import annotations

import gzip
import zlib

import pytest

from tests.otlp import request, span
from tokenpulse.errors import DataError, InvalidRequest, RequestTooLarge, RetryableStorageError
from tokenpulse.otlp.decode import decode_protobuf
from tokenpulse.receiver.otlp_http import inflate
from tokenpulse.storage.backend import classify, redact_url
from tokenpulse.storage.dedup import DedupCache


def _batch(spans):
    return decode_protobuf(request(spans).SerializeToString()).batch


def test_dedup_drops_repeats_within_and_across_batches():
    cache = DedupCache(window_s=60, max_keys=100)
    a, b = span(), span()
    keep, keys = cache.filter(cache.keys_of(_batch([a, b, a])))
    assert keep == [0, 1] and len(keys) == 2
    cache.add(keys)
    keep, keys = cache.filter(cache.keys_of(_batch([span(), b])))
    assert keep == [0] and len(keys) == 1


def test_dedup_keys_are_per_tenant():
    """A tenant that learns another's trace and span ids (traceparent crosses services) cannot
    make that tenant's spans look like repeats of its own."""
    cache = DedupCache(window_s=60, max_keys=100)
    s = span()
    _, keys = cache.filter(cache.keys_of(_batch([s]), "evil"))
    cache.add(keys)
    assert cache.filter(cache.keys_of(_batch([s]), "acme"))[0] is None  # acme's own span is kept
    assert cache.filter(cache.keys_of(_batch([s]), "evil"))[0] == []  # evil's retry is a repeat
    ident = keys[0] & ((1 << 192) - 1)
    assert cache.stored_elsewhere(cache.keys_of(_batch([s]), "acme"), {ident: {"evil"}}) == [False]
    assert cache.stored_elsewhere(cache.keys_of(_batch([s]), "acme"), {ident: {"acme"}}) == [True]
    assert cache.stored_elsewhere(cache.keys_of(_batch([s])), {ident: {"evil"}}) == [True]  # unbound: any


def test_dedup_forgets_after_window_and_caps_memory():
    now = [0.0]
    cache = DedupCache(window_s=10, max_keys=1000, clock=lambda: now[0])
    s = span()
    _, keys = cache.filter(cache.keys_of(_batch([s])))
    cache.add(keys)
    now[0] = 6  # rotation 1: s moves to the previous generation, still known
    assert cache.filter(cache.keys_of(_batch([s])))[0] == []
    now[0] = 12  # rotation 2: forgotten
    assert cache.filter(cache.keys_of(_batch([s])))[0] is None

    small = DedupCache(window_s=3600, max_keys=10)
    for _ in range(10):
        _, keys = small.filter(small.keys_of(_batch([span() for _ in range(5)])))
        small.add(keys)
        assert len(small) <= 10


def test_dedup_key_is_exact():
    k = DedupCache(60, 10).key
    assert k("0" * 31 + "1", "0" * 16) != k("0" * 32, "0" * 15 + "1")


def test_inflate_limits():
    data = b"x" * 1000
    assert inflate(gzip.compress(data), "gzip", 1000) == data
    assert inflate(zlib.compress(data), "deflate", 1000) == data
    assert inflate(data, "identity", 10) == data
    with pytest.raises(RequestTooLarge):
        inflate(gzip.compress(data), "gzip", 999)
    with pytest.raises(InvalidRequest, match="unsupported Content-Encoding"):
        inflate(data, "zstd", 10_000)
    with pytest.raises(InvalidRequest, match="truncated"):
        inflate(gzip.compress(data)[:-10], "gzip", 10_000)


@pytest.mark.parametrize("message, cls", [
    ("Code: 53. DB::Exception: Type mismatch", DataError),
    ("Code: 6. DB::Exception: Cannot parse text", DataError),
    ("Code: 210. DB::NetException: Connection refused", RetryableStorageError),
    ("Code: 241. DB::Exception: Memory limit exceeded", RetryableStorageError),
    ("connection reset by peer", RetryableStorageError),
])
def test_storage_errors_are_classified(message, cls):
    err = classify(RuntimeError(message), "insert")
    assert type(err) is cls and err.code == (int(message.split()[1].rstrip(".")) if "Code" in message else None)


def test_redact_url_hides_credentials():
    assert redact_url("https://user:s3cret@ch.example:8443/db?x=1") == "https://ch.example:8443/db"


def test_shared_resource_maps_encode_like_one_map_per_row():
    import pyarrow as pa

    from tokenpulse.storage.schema import _MAP, _shared_map_array

    a, b, empty = {"service.name": "x", "k": "v"}, {"service.name": "y"}, {}
    for rows in ([a] * 5 + [b] * 3 + [a], [a, b, empty, {"k": "v2"}], [empty] * 4, []):
        expected = pa.array([list(d.items()) for d in rows], _MAP)
        assert _shared_map_array(rows).to_pylist() == expected.to_pylist()

"""The C span walk (otlp/_otlpwalk.c) decodes every request exactly as the Python walk over
the parsed message does: random requests of every value kind, mutated bytes, and hand-written
wire forms that protobuf parses in subtle ways (merged messages, fields out of order, unknown
fields, wrong wire types, switched oneofs)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.otlp import request, span
from tokenpulse.errors import InvalidRequest
from tokenpulse.otlp import decode
from tokenpulse.record import FIELD_NAMES

_DICTS = ("attributes", "resource_attributes")


def _snapshot(d: decode.Decoded) -> tuple:
    cols = []
    for f in FIELD_NAMES:
        col = getattr(d.batch, f)
        cols.append([list(x.items()) for x in col] if f in _DICTS else list(col))  # key order matters too
    return tuple(cols), d.rejected, d.errors, d.reasons


def _both(body: bytes):
    """(C walk, Python walk) results, or the error both raised."""
    try:
        slow = decode.decode_protobuf(body, fast=False)
    except InvalidRequest as e:
        with pytest.raises(InvalidRequest) as fast_error:
            decode.decode_protobuf(body, fast=True)
        assert str(fast_error.value) == str(e)
        return None, None
    return decode.decode_protobuf(body, fast=True), slow


def _same(body: bytes) -> None:
    fast, slow = _both(body)
    if slow is not None:
        assert _snapshot(fast) == _snapshot(slow)


def _declined(body: bytes) -> bool:
    req = ExportTraceServiceRequest.FromString(body)
    return decode._walk_bytes(body, req) is None


# Without the extension these are skipped; tests/unit/test_packaging.py then fails, on purpose.
pytestmark = pytest.mark.skipif(decode._c_walk is None, reason="the C extension is not built")


# ------------------------------------------------------------------ random requests

def _scalar_values():
    return st.one_of(
        st.builds(lambda s: AnyValue(string_value=s), st.text(max_size=12)),
        st.builds(lambda b: AnyValue(bool_value=b), st.booleans()),
        st.builds(lambda i: AnyValue(int_value=i), st.integers(-2**63, 2**63 - 1) | st.sampled_from([0, 1, -1])),
        st.builds(lambda d: AnyValue(double_value=d),
                  st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
                      [0.0, -0.0, 1e16, 1e16 - 2, -1e16 + 2, 0.1, 2.5, 1e300, 5e-324, 9007199254740993.0])),
        st.builds(lambda b: AnyValue(bytes_value=b), st.binary(max_size=8)),
        st.just(AnyValue()),
    )


def _extend(children):
    return st.one_of(
        st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(children, max_size=3)),
        st.builds(lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs])),
                  st.lists(st.tuples(st.text(max_size=5), children), max_size=3)),
    )


_values = st.recursive(_scalar_values(), _extend, max_leaves=6)
_keys = st.sampled_from(["service.name", "gen_ai.usage.input_tokens", "tenant.id", "k", ""]) | st.text(max_size=10)
_attributes = st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), _keys, _values), max_size=6)
_ids = st.one_of(st.binary(min_size=16, max_size=16), st.just(bytes(16)), st.binary(max_size=20))
_span_ids = st.one_of(st.binary(min_size=8, max_size=8), st.just(bytes(8)), st.just(b""), st.binary(max_size=10))


@st.composite
def _spans(draw):
    s = Span(trace_id=draw(_ids), span_id=draw(_span_ids), parent_span_id=draw(_span_ids),
             name=draw(st.text(max_size=10)), kind=draw(st.integers(-3, 8)),
             start_time_unix_nano=draw(st.integers(0, 2**64 - 1)), end_time_unix_nano=draw(st.integers(0, 2**64 - 1)))
    s.attributes.extend(draw(_attributes))
    if draw(st.booleans()):
        s.status.code = draw(st.integers(-1, 3))
        s.status.message = draw(st.text(max_size=8))
    if draw(st.booleans()):
        s.trace_state = "k=v"
        s.events.add(name="e", time_unix_nano=1).attributes.add(key="a", value=AnyValue(int_value=1))
        s.flags = 0x301
    return s


@st.composite
def _requests(draw):
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(draw(_attributes))
        rs.schema_url = draw(st.sampled_from(["", "https://opentelemetry.io/schemas/1.30.0"]))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            if draw(st.booleans()):
                ss.scope.name = draw(st.text(max_size=8))
                ss.scope.version = draw(st.text(max_size=4))
            ss.spans.extend(draw(st.lists(_spans(), max_size=4)))
    return req


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
def test_random_requests_decode_the_same(req):
    body = req.SerializeToString()
    _same(body)
    assert not _declined(body)  # well-formed requests as SDKs write them never need the Python walk


def test_repeated_keys_and_values_are_one_object_and_near_misses_are_not():
    """The walk reuses the str it made for the same attribute position of the previous span when the
    bytes are the same (_otlpwalk.c, Slot). A value that differs by a byte, a prefix, its type or its
    position gets its own str, and the batch is the Python walk's."""
    spans = [span(attrs={"gen_ai.request.model": "gpt-4o", "n": 5, "s": "ab"}),
             span(attrs={"gen_ai.request.model": "gpt-4o", "n": "5", "s": "abc"}),
             span(attrs={"gen_ai.request.model": "gpt-4p", "n": 5, "s": "ab"}),
             span(attrs={"s": "gpt-4o", "gen_ai.request.model": "gpt-4o", "n": True}),
             span(attrs={"gen_ai.request.model": "gpt-4o", "n": 5, "s": "ab"}),
             span(attrs={"gen_ai.request": "gpt-4o"})]  # a key that is a prefix of the slot's key
    body = request(spans).SerializeToString()
    _same(body)
    attrs = decode.decode_protobuf(body).batch.attributes
    assert [a.get("s") for a in attrs] == ["ab", "abc", "ab", "gpt-4o", "ab", None]
    assert list(attrs[5]) == ["gen_ai.request"]
    assert [a.get("n") for a in attrs] == ["5", "5", "5", "true", "5", None]
    assert attrs[1]["gen_ai.request.model"] is attrs[0]["gen_ai.request.model"]  # same bytes, same position
    assert attrs[2]["gen_ai.request.model"] == "gpt-4p"
    assert list(attrs[0])[0] is list(attrs[4])[0]  # keys: one object per distinct key


VALID = request([span(attrs={"gen_ai.usage.input_tokens": 5, "k": "v", "d": 0.5, "b": True}, status=2)
                 for _ in range(3)], resource={"tenant.id": "t"}).SerializeToString()


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_bytes_decode_the_same_or_fail_the_same(data):
    body = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    _same(bytes(body[:data.draw(st.integers(0, len(body)))]))


# ------------------------------------------------------------------ hand-written wire forms

def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:  # length-delimited
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _vfield(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def _kv(key: str, value: bytes) -> bytes:
    return _field(1, key.encode()) + _field(2, value)


TID, SID = bytes(range(1, 17)), bytes(range(1, 9))
BASE_SPAN = _field(1, TID) + _field(2, SID) + _field(5, b"chat") + _vfield(6, 3) \
    + b"\x39" + struct.pack("<Q", 10) + b"\x41" + struct.pack("<Q", 20)


def _req(span_bytes: bytes, resource: bytes = b"", scope: bytes = b"", scope_last: bool = False,
         resource_last: bool = False) -> bytes:
    ss = _field(2, span_bytes)
    ss = ss + _field(1, scope) if scope_last else _field(1, scope) + ss
    rs = _field(2, ss)
    rs = rs + _field(1, resource) if resource_last else _field(1, resource) + rs
    return _field(1, rs)


SVC = _field(1, _kv("service.name", _field(1, b"svc")))
CASES = {
    "plain": (_req(BASE_SPAN, SVC, _field(1, b"sc")), False),
    "resource and scope after the spans": (_req(BASE_SPAN, SVC, _field(1, b"sc"), True, True), False),
    "scalar fields repeated: the last wins": (_req(BASE_SPAN + _field(5, b"again") + _vfield(6, 2)), False),
    "ids repeated": (_req(BASE_SPAN + _field(1, bytes(16)) + _field(1, TID[::-1])), False),
    "unknown fields everywhere": (_field(9, b"x") + _req(BASE_SPAN + _field(40, b"zz") + _vfield(41, 7)
                                                         + b"\x5d\x01\x02\x03\x04" + b"\x61" + bytes(8),
                                                         SVC + _field(30, b"?"), _field(1, b"sc") + _vfield(20, 1)),
                                  False),
    "a known field with another wire type": (_req(BASE_SPAN + _vfield(5, 1)), True),
    "status twice (merged)": (_req(BASE_SPAN + _field(15, _vfield(3, 2)) + _field(15, _field(2, b"m"))), True),
    "resource twice (merged)": (_field(1, _field(1, SVC) + _field(1, _field(1, _kv("a", _field(1, b"b"))))
                                       + _field(2, _field(2, BASE_SPAN))), True),
    "attribute value twice (merged)": (_req(BASE_SPAN + _field(9, _kv("k", _vfield(3, 5)) + _field(2, _field(1, b"s")))),
                                       True),
    "oneof switched within a value": (_req(BASE_SPAN + _field(9, _kv("k", _field(1, b"s") + _vfield(3, 7)))
                                           + _field(9, _kv("j", _vfield(2, 1) + _field(1, b"")))), False),
    "array then string": (_req(BASE_SPAN + _field(9, _kv("k", _field(5, _field(1, _field(1, b"x"))) + _field(1, b"s")))),
                          False),
    "duplicate keys: last value, first position": (_req(BASE_SPAN + _field(9, _kv("a", _field(1, b"1")))
                                                        + _field(9, _kv("b", _field(1, b"2")))
                                                        + _field(9, _kv("a", _vfield(3, 3)))), False),
    "kvlist, bytes and strindex values": (_req(BASE_SPAN + _field(9, _kv("l", _field(6, _field(1, _kv(
        "x", _vfield(3, 1)))))) + _field(9, _kv("b", _field(7, b"\x00\xff"))) + _field(9, _kv("i", _vfield(8, 4)))),
        False),
    "explicit zero values (proto3 omits them; other writers may not)": (_req(
        BASE_SPAN + _field(9, _kv("f", _vfield(2, 0))) + _field(9, _kv("i", _vfield(3, 0)))
        + _field(9, _kv("d", b"\x21" + bytes(8))) + _field(9, _kv("s", _field(1, b"")))), False),
    "key missing, value missing": (_req(BASE_SPAN + _field(9, _field(2, _field(1, b"v"))) + _field(9, _field(1, b"k"))),
                                   False),
    "negative kind and status code": (_req(BASE_SPAN + _vfield(6, -1) + _field(15, _vfield(3, -5))), False),
    "invalid ids rejected one by one": (_req(_field(1, TID[:5]) + _field(2, SID) + _field(5, b"bad"))
                                        + _req(BASE_SPAN) + _req(_field(1, TID) + _field(2, bytes(8)))
                                        + _req(_field(1, TID) + _field(2, SID) + _field(4, b"abc")), False),
    "all-zero parent is no parent": (_req(BASE_SPAN + _field(4, bytes(8))), False),
    "empty service name": (_req(BASE_SPAN, _field(1, _kv("service.name", _field(1, b"")))), False),
    "non-string service name": (_req(BASE_SPAN, _field(1, _kv("service.name", _vfield(3, 42)))), False),
    "empty request": (b"", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_wire_forms(case):
    body, declined = CASES[case]
    ExportTraceServiceRequest.FromString(body)  # each case is a body protobuf accepts
    _same(body)
    assert _declined(body) == declined
    if case == "invalid ids rejected one by one":
        fast = decode.decode_protobuf(body)
        assert fast.rejected == 3 and len(fast.batch) == 1


def test_invalid_utf8_is_refused_like_upb():
    body = _req(BASE_SPAN + _field(9, _kv("k", _field(1, b"\xff\xfe"))))
    with pytest.raises(InvalidRequest):
        decode.decode_protobuf(body)


def test_rendering_matches_for_hard_doubles():
    for d in (0.1, 1 / 3, 1e16, 123456789012345.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-7, 2**53 + 1.0):
        body = _req(BASE_SPAN + _field(9, _kv("d", b"\x21" + struct.pack("<d", d))))
        fast, slow = _both(body)
        assert fast.batch.attributes == slow.batch.attributes, d


def test_the_c_walk_is_memory_safe_on_any_bytes_under_address_sanitizer(tmp_path):
    """The walk rebuilt with ASan and UBSan, fed mutated bodies without upb in front (tests/fuzz/asan_walk.py)."""
    import shutil
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc to build the sanitized walk with")
    runtimes = [subprocess.run([gcc, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
                for lib in ("libasan.so", "libubsan.so")]
    if not all(Path(r).is_absolute() and Path(r).exists() for r in runtimes):
        pytest.skip(f"gcc has no sanitizer runtimes here ({runtimes})")
    root = Path(__file__).resolve().parents[2]
    so = tmp_path / "_otlpwalk_asan.so"
    subprocess.run([gcc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    "-fno-omit-frame-pointer", "-std=c11", "-fPIC", "-shared",
                    f"-I{sysconfig.get_paths()['include']}", str(root / "tokenpulse/otlp/_otlpwalk.c"),
                    "-o", str(so)], check=True, capture_output=True)
    # PYTHONMALLOC=malloc: every object its own malloc block, so ASan sees a read past a body's end
    env = {**os.environ, "LD_PRELOAD": ":".join(runtimes), "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "PYTHONMALLOC": "malloc"}
    r = subprocess.run([sys.executable, str(root / "tests/fuzz/asan_walk.py"), str(so), "100000"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "no sanitizer finding" in r.stdout


def test_keep_first_cuts_on_the_wire_exactly_as_the_parsed_message_is_cut():
    """keep_first (C, no per-span allocation) against _cut_message (upb's parsed message, cut):
    same spans kept, same count; every resource and scope boundary tried."""
    import random

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tokenpulse.otlp import decode
    from tests.otlp import kv, span

    if decode._c_keep_first is None:
        pytest.skip("the C extension is not built (tests/unit/test_packaging.py fails on that)")
    rnd = random.Random(7)
    for trial in range(60):
        req = ExportTraceServiceRequest()
        for r in range(rnd.randint(1, 3)):
            rs = req.resource_spans.add()
            rs.resource.attributes.append(kv("service.name", f"s{r}"))
            for q in range(rnd.randint(1, 3)):
                ss = rs.scope_spans.add()
                ss.scope.name = f"scope{q}"
                ss.spans.extend(span(name=f"r{r}q{q}n{n}") for n in range(rnd.randint(0, 4)))
                ss.schema_url = "after-the-spans"
            rs.schema_url = "after-the-scopes"
        body = req.SerializeToString()
        total = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        for limit in range(0, total + 2):
            got_total, cut = decode._c_keep_first(body, limit)
            assert got_total == total
            if total <= limit:
                assert cut is None
                continue
            expected = ExportTraceServiceRequest.FromString(body)
            assert decode._cut_message(expected, limit) == total - limit
            mine = ExportTraceServiceRequest.FromString(cut)
            names = [s.name for rs in mine.resource_spans for ss in rs.scope_spans for s in ss.spans]
            assert names == [s.name for rs in expected.resource_spans for ss in rs.scope_spans for s in ss.spans]
            # resources and scopes of the kept spans are theirs (what follows the cut is dropped)
            for got_rs, want_rs in zip(mine.resource_spans, expected.resource_spans):
                assert got_rs.resource == want_rs.resource
                assert [ss.scope for ss in got_rs.scope_spans] == \
                    [ss.scope for ss in want_rs.scope_spans][:len(got_rs.scope_spans)]
    assert decode._c_keep_first(b"\x0a\xff", 1) == (-1, None)  # malformed: upb decides

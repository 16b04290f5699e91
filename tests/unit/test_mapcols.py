"""The attributes column built in C (storage/_mapcols.c) against its reference, schema._map_array:
the same Arrow array on generated batches, and the reference's own outcome on input C declines."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpulse.storage import schema
from tokenpulse.storage.schema import LEAN_KEYS

pytestmark = pytest.mark.skipif(schema._c_flatten is None, reason="built without the C extension")

_LEAN = dict(LEAN_KEYS)
_TEXT = sorted({c for c in _LEAN.values() if not c.endswith("_tokens")})
_INTS = sorted({c for c in _LEAN.values() if c.endswith("_tokens")})
_VALUES = ["", "a", "chat", "7", "007", "100", "18446744073709551615", "é ü", "日本", "x\x00y"]


def _both(dicts: list[dict], rows: dict[str, list]) -> tuple[pa.Array, pa.Array]:
    arrays = {c: pa.array(v, pa.string() if c in _TEXT else pa.uint64()) for c, v in rows.items()}
    reference = schema._map_array([dict(d) for d in dicts], arrays)
    return schema._lean_map_array(dicts, rows, arrays), reference


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 12).flatmap(lambda n: st.tuples(
    st.lists(st.dictionaries(st.sampled_from([k for k, _ in LEAN_KEYS] + ["other", "server.address", "ключ"]),
                             st.sampled_from(_VALUES) | st.text(max_size=6), max_size=9), min_size=n, max_size=n),
    st.fixed_dictionaries({**{c: st.lists(st.sampled_from(_VALUES), min_size=n, max_size=n) for c in _TEXT},
                           **{c: st.lists(st.sampled_from([0, 7, 100, 2**64 - 1]), min_size=n, max_size=n)
                              for c in _INTS}}))))
def test_c_builds_the_reference_array(case):
    dicts, rows = case
    got, want = _both(dicts, rows)
    got.validate(full=True)
    assert got.equals(want), (got.to_pylist(), want.to_pylist())


def test_the_c_path_is_taken_and_keeps_dict_order():
    d = {"z": "1", "gen_ai.request.model": "m", "a": "2"}
    del d["z"]
    d["z"] = "3"  # a deleted slot: PyDict_Next must still walk insertion order
    rows = {c: ["m" if c == "request_model" else ""] for c in _TEXT} | {c: [0] for c in _INTS}
    offsets, key_offsets, keys, value_offsets, values = schema._c_flatten(
        [d], {k: rows[c] for k, c in LEAN_KEYS}, pa.allocate_buffer)
    assert keys.to_pybytes() == b"az" and values.to_pybytes() == b"23"
    assert _both([d], rows)[0].to_pylist() == [[("a", "2"), ("z", "3")]]


@pytest.mark.parametrize("bad", [{"k": 5}, {"k": "\ud800"}])
def test_input_c_declines_gets_the_reference_outcome(bad):
    """A value that is not a str, or not UTF-8 encodable: C raises, the reference decides (here it
    refuses too, with pyarrow's own error, as before the C path existed)."""
    rows = {c: [""] for c in _TEXT} | {c: [0] for c in _INTS}
    with pytest.raises(Exception) as c_path:
        schema._lean_map_array([bad], rows, {c: pa.array(v) for c, v in rows.items()})
    with pytest.raises(Exception) as reference:
        schema._map_array([bad], {})
    assert type(c_path.value) is type(reference.value)


def test_a_short_column_is_declined_not_read_past_its_end():
    with pytest.raises(ValueError):
        schema._c_flatten([{"tenant.id": "a"}, {"tenant.id": "b"}], {"tenant.id": ["a"]}, pa.allocate_buffer)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_VALUES) | st.text(max_size=8), max_size=30))
def test_a_string_column_built_in_c_is_pa_array_s(values):
    got = schema._string_array(values)
    got.validate(full=True)
    assert got.equals(pa.array(values, pa.string()))


def test_a_string_column_c_declines_is_pa_array_s_outcome():
    assert schema._string_array(["a", None]).equals(pa.array(["a", None], pa.string()))  # a null: pyarrow's way
    with pytest.raises(Exception) as c_path:
        schema._string_array(["\ud800"])
    with pytest.raises(Exception) as reference:
        pa.array(["\ud800"], pa.string())
    assert type(c_path.value) is type(reference.value)


def test_input_that_changes_between_the_passes_raises_instead_of_overflowing():
    """alloc runs Python (and may release the GIL) between the measuring and the writing pass: a
    value grown meanwhile must be refused, not written past its buffer."""
    values = ["ab", "cd"]

    def alloc(n):
        values[1] = "a much longer value"
        return pa.allocate_buffer(n)

    with pytest.raises(RuntimeError):
        schema._c_strings(values, alloc)
    dicts = [{"k": "v"}]

    def alloc_map(n):
        dicts[0]["k"] = "a much longer value"
        return pa.allocate_buffer(n)

    with pytest.raises(RuntimeError):
        schema._c_flatten(dicts, {}, alloc_map)


def test_the_buffers_are_arrow_s_own():
    """Allocated by Arrow's pool, not Python bytes: tables in the writer's queue are freed without the GIL."""
    before = pa.total_allocated_bytes()
    column = schema._string_array(["x" * 1000] * 100)
    assert pa.total_allocated_bytes() - before >= 100_000
    assert column.to_pylist() == ["x" * 1000] * 100

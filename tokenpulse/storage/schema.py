"""Where record fields meet ClickHouse columns: the only place that knows both.

``SPAN_COLUMNS`` lists the columns the writer inserts, in insert order, with the
record field that feeds each and its Arrow type. Columns with a DEFAULT
(``duration_ms``, ``ingested_at``) are computed by ClickHouse and not listed.
A test checks this list against the migrated table, so the two cannot drift.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokenpulse.record import SpanBatch

try:
    from tokenpulse.storage._mapcols import flatten as _c_flatten
    from tokenpulse.storage._mapcols import strings as _c_strings
except ImportError:  # built without a C compiler: _map_array and pa.array below
    _c_flatten = _c_strings = None

_KIND_NAMES = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUS_NAMES = ("unset", "ok", "error")
_MAP = pa.map_(pa.string(), pa.string())
_TS = pa.timestamp("ns", tz="UTC")

# (column, record field, arrow type, ClickHouse type as DESCRIBE prints it)
SPAN_COLUMNS: tuple[tuple[str, str, pa.DataType, str], ...] = (
    ("trace_id", "trace_id", pa.string(), "String"),
    ("span_id", "span_id", pa.string(), "String"),
    ("parent_span_id", "parent_span_id", pa.string(), "String"),
    ("name", "name", pa.string(), "LowCardinality(String)"),
    ("kind", "kind", pa.string(), "LowCardinality(String)"),
    ("service", "service", pa.string(), "LowCardinality(String)"),
    ("scope_name", "scope_name", pa.string(), "LowCardinality(String)"),
    ("scope_version", "scope_version", pa.string(), "LowCardinality(String)"),
    ("start_time", "start_time_ns", _TS, "DateTime64(9, 'UTC')"),
    ("end_time", "end_time_ns", _TS, "DateTime64(9, 'UTC')"),
    ("status_code", "status_code", pa.string(), "LowCardinality(String)"),
    ("status_message", "status_message", pa.string(), "String"),
    ("operation", "operation", pa.string(), "LowCardinality(String)"),
    ("provider", "provider", pa.string(), "LowCardinality(String)"),
    ("model", "model", pa.string(), "LowCardinality(String)"),
    ("request_model", "request_model", pa.string(), "LowCardinality(String)"),
    ("input_tokens", "input_tokens", pa.uint64(), "UInt64"),
    ("output_tokens", "output_tokens", pa.uint64(), "UInt64"),
    ("cache_read_tokens", "cache_read_tokens", pa.uint64(), "UInt64"),
    ("cache_write_tokens", "cache_write_tokens", pa.uint64(), "UInt64"),
    ("cache_write_1h_tokens", "cache_write_1h_tokens", pa.uint64(), "UInt64"),
    ("reasoning_tokens", "reasoning_tokens", pa.uint64(), "UInt64"),
    ("total_tokens", "total_tokens", pa.uint64(), "UInt64"),
    ("usage_status", "usage_status", pa.string(), "LowCardinality(String)"),
    ("cost_usd", "cost_usd", pa.float64(), "Nullable(Float64)"),
    ("input_cost_usd", "input_cost_usd", pa.float64(), "Nullable(Float64)"),
    ("cache_read_cost_usd", "cache_read_cost_usd", pa.float64(), "Nullable(Float64)"),
    ("cache_write_cost_usd", "cache_write_cost_usd", pa.float64(), "Nullable(Float64)"),
    ("output_cost_usd", "output_cost_usd", pa.float64(), "Nullable(Float64)"),
    ("reasoning_cost_usd", "reasoning_cost_usd", pa.float64(), "Nullable(Float64)"),
    ("request_cost_usd", "request_cost_usd", pa.float64(), "Nullable(Float64)"),
    ("reported_cost_usd", "reported_cost_usd", pa.float64(), "Nullable(Float64)"),
    ("price_status", "price_status", pa.string(), "LowCardinality(String)"),
    ("price_id", "price_id", pa.string(), "LowCardinality(String)"),
    ("service_tier", "service_tier", pa.string(), "LowCardinality(String)"),
    ("counted", "counted", pa.uint8(), "UInt8"),
    ("excluded_reason", "excluded_reason", pa.string(), "LowCardinality(String)"),
    ("feature", "feature", pa.string(), "LowCardinality(String)"),
    ("tenant", "tenant", pa.string(), "LowCardinality(String)"),
    ("user_id", "user_id", pa.string(), "String"),
    ("agent_role", "agent_role", pa.string(), "LowCardinality(String)"),
    ("agent_name", "agent_name", pa.string(), "LowCardinality(String)"),
    ("agent_id", "agent_id", pa.string(), "String"),
    ("session_id", "session_id", pa.string(), "String"),
    ("route", "route", pa.string(), "LowCardinality(String)"),
    ("environment", "environment", pa.string(), "LowCardinality(String)"),
    ("tool_name", "tool_name", pa.string(), "LowCardinality(String)"),
    ("tool_call_id", "tool_call_id", pa.string(), "String"),
    ("error_type", "error_type", pa.string(), "LowCardinality(String)"),
    ("outcome", "outcome", pa.string(), "LowCardinality(String)"),
    ("resource_attributes", "resource_attributes", _MAP, "Map(String, String)"),
    ("attributes", "attributes", _MAP, "Map(String, String)"),
)

DEFAULT_COLUMNS = {"duration_ms": "Float64", "ingested_at": "DateTime64(3, 'UTC')"}
ARROW_SCHEMA = pa.schema([(c[0], c[2]) for c in SPAN_COLUMNS])

# DateTime64(9) holds 1900-01-01 .. 2262-04-11; Arrow's ns timestamps are int64.
MAX_TIME_NS = 2**63 - 1


def _names(codes: list[int], names: tuple[str, ...]) -> list[str]:
    # The common case (every code known) is checked and mapped in C; the comprehension is the rare fallback.
    if codes and min(codes) >= 0 and max(codes) < len(names):
        return list(map(names.__getitem__, codes))
    return [names[c] if 0 <= c < len(names) else names[0] for c in codes]


def _clamp(values: list[int], low: int, high: int, default: int) -> list[int]:
    # Enrichment and the decoders keep values in range; this guards the column type at C speed.
    if not values or (min(values) >= low and max(values) <= high):
        return values
    return [v if low <= v <= high else default for v in values]


def _map_array(dicts: list[dict[str, str]], lean: dict[str, pa.Array] | None = None) -> pa.Array:
    # Flattened keys/values/offsets: ~3x faster than pa.array(list_of_dicts).
    keys = pa.array(list(itertools.chain.from_iterable(dicts)), pa.string())
    values = pa.array(list(itertools.chain.from_iterable(d.values() for d in dicts)), pa.string())
    lengths = np.fromiter(map(len, dicts), np.int32, len(dicts))
    if lean is not None and len(keys):
        keys, values, lengths = _lean(keys, values, lengths, lean)
    offsets = np.zeros(len(dicts) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.MapArray.from_arrays(pa.array(offsets), keys, values)


# Attribute keys whose value a typed column holds unchanged: the stored ``attributes`` map leaves
# them out for a row where the column has the very same text (docs/spans-table.md, "Lean rows").
# Where enrichment changed the value (a provider name normalized, input tokens with cache added
# back, an excluded span's zeroed counts) the key stays, with the value as it came.
LEAN_KEYS: tuple[tuple[str, str], ...] = (
    ("gen_ai.operation.name", "operation"), ("gen_ai.provider.name", "provider"),
    ("gen_ai.request.model", "request_model"), ("gen_ai.response.model", "model"),
    ("gen_ai.usage.input_tokens", "input_tokens"), ("gen_ai.usage.output_tokens", "output_tokens"),
    ("gen_ai.usage.cache_read.input_tokens", "cache_read_tokens"),
    ("gen_ai.usage.cache_creation.input_tokens", "cache_write_tokens"),
    ("gen_ai.usage.reasoning.output_tokens", "reasoning_tokens"),
    ("gen_ai.agent.name", "agent_name"), ("gen_ai.agent.id", "agent_id"),
    ("gen_ai.conversation.id", "session_id"), ("gen_ai.tool.name", "tool_name"),
    ("gen_ai.tool.call.id", "tool_call_id"), ("error.type", "error_type"),
    ("tenant.id", "tenant"), ("app.feature", "feature"), ("user.id", "user_id"),
)
_LEAN_SET = pa.array([k for k, _ in LEAN_KEYS], pa.string())
_LEAN_COLUMN = dict(LEAN_KEYS)


def _lean(keys: pa.Array, values: pa.Array, lengths: np.ndarray, columns: dict[str, pa.Array]):
    """(keys, values, lengths) without the entries a typed column repeats: whole-column Arrow
    operations, never a loop over rows (one pass finds the candidate entries; each lean key then
    compares only its own entries with its column, taken at their rows)."""
    candidates = pc.is_in(keys, value_set=_LEAN_SET)
    if not pc.any(candidates).as_py():
        return keys, values, lengths
    where = pc.indices_nonzero(candidates)
    where_np = where.to_numpy()
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    cand_rows = pa.array(rows[where_np])
    cand_keys, cand_values = keys.take(where), values.take(where)
    drop = np.zeros(len(keys), bool)
    for key in pc.unique(cand_keys).to_pylist():
        mine = pc.indices_nonzero(pc.equal(cand_keys, key))
        column = columns[_LEAN_COLUMN[key]]
        typed = column if column.type == pa.string() else pc.cast(column, pa.string())
        same = pc.equal(cand_values.take(mine), typed.take(cand_rows.take(mine))).to_numpy(zero_copy_only=False)
        drop[where_np[mine.to_numpy()][same]] = True
    if not drop.any():
        return keys, values, lengths
    keep = pa.array(~drop)
    lengths = lengths - np.bincount(rows[drop], minlength=len(lengths)).astype(np.int32)
    return keys.filter(keep), values.filter(keep), lengths


def _lean_map_array(dicts: list[dict[str, str]], rows: dict[str, list], arrays: dict[str, pa.Array]) -> pa.Array:
    """The ``attributes`` column, lean: built in C (_mapcols.c) from the dicts and the lean columns'
    row values (``rows``), or by ``_map_array`` (the reference) from the same columns as Arrow
    arrays (``arrays``) without the extension or on input it declines."""
    if _c_flatten is not None:
        try:
            offsets, key_offsets, keys, value_offsets, values = _c_flatten(
                dicts, {key: rows[column] for key, column in LEAN_KEYS}, pa.allocate_buffer)
        except (TypeError, ValueError, OverflowError, UnicodeError, RuntimeError):
            pass
        else:
            m = key_offsets.size // 4 - 1
            key_array = pa.Array.from_buffers(pa.string(), m, [None, key_offsets, keys])
            value_array = pa.Array.from_buffers(pa.string(), m, [None, value_offsets, values])
            return pa.MapArray.from_arrays(pa.Array.from_buffers(pa.int32(), len(dicts) + 1, [None, offsets]),
                                           key_array, value_array)
    return _map_array(dicts, arrays)


def _string_array(values: list[str]) -> pa.Array:
    """A String column: its buffers built in C (_mapcols.c, half pa.array's time), or by pa.array."""
    if _c_strings is not None:
        try:
            offsets, data = _c_strings(values, pa.allocate_buffer)
        except (TypeError, OverflowError, UnicodeError, RuntimeError):
            pass
        else:
            return pa.Array.from_buffers(pa.string(), len(values), [None, offsets, data])
    return pa.array(values, pa.string())


def _shared_map_array(dicts: list[dict[str, str]]) -> pa.Array:
    # A request's spans share their resource's dict object: convert each distinct one once, then
    # repeat it with take() in C++ (bench spans: 0.7 -> 0.2 us per span). Rows are told apart by
    # object identity, with map() and dicts in C rather than a loop per row.
    ids = list(map(id, dicts))
    position = {k: j for j, k in enumerate(dict.fromkeys(ids))}
    if len(position) * 2 > len(dicts):
        return _map_array(dicts)
    by_id = dict(zip(ids, dicts))
    rows = np.fromiter(map(position.__getitem__, ids), np.int32, len(ids))
    return _map_array([by_id[k] for k in position]).take(pa.array(rows))


def batch_to_arrow(batch: SpanBatch) -> pa.Table:
    """One Arrow table in ``SPAN_COLUMNS`` order; the span attributes lean (``LEAN_KEYS``)."""
    arrays = []
    by_column: dict[str, pa.Array] = {}
    rows: dict[str, list] = {}  # each column's values as inserted, for the lean attributes (C path)
    n = len(batch)
    for column, field, typ, _ in SPAN_COLUMNS:
        values = getattr(batch, field)
        if typ == _MAP:
            arrays.append(_shared_map_array(values) if field == "resource_attributes"
                          else _lean_map_array(values, rows, by_column))
            continue
        if column == "kind":
            values = _names(values, _KIND_NAMES)
        elif column == "status_code":
            values = _names(values, _STATUS_NAMES)
        if n and typ == pa.string() and values[-1] == values[0] and values.count(values[0]) == n:
            # Constant columns (unset enrichment fields, one service): no per-row conversion.
            arrays.append(pa.repeat(pa.scalar(values[0], pa.string()), n))
            by_column[column], rows[column] = arrays[-1], values
            continue
        elif typ == pa.uint64():
            values = _clamp(values, 0, 2**64 - 1, 0)
        elif typ == _TS:
            values = _clamp(values, 0, MAX_TIME_NS, MAX_TIME_NS)
        arrays.append(_string_array(values) if typ == pa.string() else pa.array(values, type=typ))
        by_column[column], rows[column] = arrays[-1], values
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)

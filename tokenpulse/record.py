"""The span record that flows receiver -> enrich -> storage.

One field list, ``FIELDS``, defines it. Two views share that list:

* ``SpanBatch``: columnar, one Python list per field. The receiver appends to it
  (touching each attribute once; docs/sources.md#platform measured column lists ~2x faster
  than a dict per span) and storage turns it into one Arrow table per insert.
* ``SpanRecord``: a frozen, slotted row, used where one span at a time is clearer
  (tests, small per-span enrichment functions).

Protobuf never appears here: the receiver converts, and ClickHouse column types
and order live only in ``tokenpulse.storage.schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields as dc_fields
from typing import Any, Iterator

# The explicit bucket for spend no tenant or feature could be found for (enrich/attribute.py).
UNATTRIBUTED = "unattributed"

# (name, python type, default). Order is the record's order, not storage's.
# The first block is filled by the receiver from OTLP; the second block holds
# the typed fields that enrichment fills (GenAI usage, price, attribution).
RECEIVED_FIELDS: tuple[tuple[str, type, Any], ...] = (
    ("trace_id", str, ""),  # 32 lowercase hex chars
    ("span_id", str, ""),  # 16 lowercase hex chars
    ("parent_span_id", str, ""),  # "" for a root span
    ("name", str, ""),
    ("kind", int, 0),  # OTLP SpanKind: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    ("service", str, ""),  # resource attribute service.name
    ("scope_name", str, ""),
    ("scope_version", str, ""),
    ("start_time_ns", int, 0),  # Unix epoch nanoseconds
    ("end_time_ns", int, 0),
    ("status_code", int, 0),  # OTLP StatusCode: 0 unset, 1 ok, 2 error
    ("status_message", str, ""),
    ("resource_attributes", dict, None),  # dict[str, str]; shared by spans of one resource
    ("attributes", dict, None),  # dict[str, str]; non-string values rendered (see receiver)
)

ENRICHED_FIELDS: tuple[tuple[str, type, Any], ...] = (
    ("operation", str, ""),  # gen_ai.operation.name, normalized
    ("provider", str, ""),
    ("model", str, ""),  # model used for pricing (response model, else request model)
    ("request_model", str, ""),
    ("input_tokens", int, 0),  # includes cache read/write (semconv meaning)
    ("output_tokens", int, 0),  # includes reasoning
    ("cache_read_tokens", int, 0),
    ("cache_write_tokens", int, 0),
    ("cache_write_1h_tokens", int, 0),  # the part of cache_write written with a 1-hour TTL (Anthropic)
    ("reasoning_tokens", int, 0),
    ("total_tokens", int, 0),
    ("usage_status", str, ""),
    ("cost_usd", float, None),  # None (NULL) when the span could not be priced
    ("input_cost_usd", float, None),  # uncached input tokens x input price
    ("cache_read_cost_usd", float, None),
    ("cache_write_cost_usd", float, None),
    ("output_cost_usd", float, None),  # non-reasoning output tokens x output price
    ("reasoning_cost_usd", float, None),
    ("request_cost_usd", float, None),  # per-request fees (genai-prices' requests_kcount)
    ("reported_cost_usd", float, None),  # as the instrumentation reported it
    ("price_status", str, ""),
    ("price_id", str, ""),
    ("service_tier", str, ""),  # the provider's service tier or processing mode the call was billed at
    ("counted", int, 1),  # 1: counts in sums; 0: aggregate or duplicate report
    ("excluded_reason", str, ""),
    ("feature", str, ""),
    ("tenant", str, ""),
    ("user_id", str, ""),  # pseudonymized by enrichment
    ("agent_role", str, ""),
    ("agent_name", str, ""),
    ("agent_id", str, ""),
    ("session_id", str, ""),
    ("route", str, ""),
    ("environment", str, ""),
    ("tool_name", str, ""),
    ("tool_call_id", str, ""),
    ("error_type", str, ""),
    ("outcome", str, ""),  # "success" | "failure" | "" from the configured outcome attribute
)

FIELDS = RECEIVED_FIELDS + ENRICHED_FIELDS
FIELD_NAMES: tuple[str, ...] = tuple(f[0] for f in FIELDS)
_DEFAULTS = {name: default for name, _, default in FIELDS}
_DICT_FIELDS = frozenset(name for name, typ, _ in FIELDS if typ is dict)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    service: str
    scope_name: str
    scope_version: str
    start_time_ns: int
    end_time_ns: int
    status_code: int
    status_message: str
    resource_attributes: dict
    attributes: dict
    operation: str = ""
    provider: str = ""
    model: str = ""
    request_model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    usage_status: str = ""
    cost_usd: float | None = None
    input_cost_usd: float | None = None
    cache_read_cost_usd: float | None = None
    cache_write_cost_usd: float | None = None
    output_cost_usd: float | None = None
    reasoning_cost_usd: float | None = None
    request_cost_usd: float | None = None
    reported_cost_usd: float | None = None
    price_status: str = ""
    price_id: str = ""
    service_tier: str = ""
    counted: int = 1
    excluded_reason: str = ""
    feature: str = ""
    tenant: str = ""
    user_id: str = ""
    agent_role: str = ""
    agent_name: str = ""
    agent_id: str = ""
    session_id: str = ""
    route: str = ""
    environment: str = ""
    tool_name: str = ""
    tool_call_id: str = ""
    error_type: str = ""
    outcome: str = ""


assert tuple(f.name for f in dc_fields(SpanRecord)) == FIELD_NAMES, "SpanRecord must follow FIELDS"


class SpanBatch:
    """Columnar spans: ``batch.<field>`` is a list with one entry per span."""

    __slots__ = FIELD_NAMES

    def __init__(self) -> None:
        for name in FIELD_NAMES:
            setattr(self, name, [])

    def __len__(self) -> int:
        return len(self.trace_id)

    def fill_defaults(self) -> "SpanBatch":
        """Pad every column shorter than ``trace_id`` with its default.

        The receiver appends only the received fields; this makes the enriched
        columns exist with their defaults so every column has one value per span.
        """
        n = len(self.trace_id)
        for name in FIELD_NAMES:
            col = getattr(self, name)
            missing = n - len(col)
            if missing > 0:
                if name in _DICT_FIELDS:
                    col.extend({} for _ in range(missing))
                else:
                    col.extend([_DEFAULTS[name]] * missing)
        return self

    def extend(self, other: "SpanBatch") -> None:
        for name in FIELD_NAMES:
            getattr(self, name).extend(getattr(other, name))

    def take(self, keep: list[int]) -> "SpanBatch":
        """A new batch with only the spans at the given indexes, in that order."""
        out = SpanBatch()
        for name in FIELD_NAMES:
            col = getattr(self, name)
            setattr(out, name, [col[i] for i in keep])
        return out

    def row(self, i: int) -> SpanRecord:
        return SpanRecord(*(getattr(self, name)[i] for name in FIELD_NAMES))

    def rows(self) -> Iterator[SpanRecord]:
        for i in range(len(self)):
            yield self.row(i)

    @classmethod
    def from_records(cls, records: list[SpanRecord]) -> "SpanBatch":
        out = cls()
        for name in FIELD_NAMES:
            setattr(out, name, [getattr(r, name) for r in records])
        return out

    @classmethod
    def concat(cls, batches: list["SpanBatch"]) -> "SpanBatch":
        if len(batches) == 1:
            return batches[0]
        out = cls()
        for b in batches:
            out.extend(b)
        return out


def scoped_traces(tenant: str, trace_ids: list[str]) -> list[str]:
    """Keys for per-trace memories (trace tags, duplicate calls) as seen by a sender bound to
    ``tenant``: trace ids are chosen by clients and cross services in ``traceparent``, so one
    tenant's spans must never learn from, or teach, another tenant's trace with the same id."""
    return trace_ids if not tenant else [f"{tenant}/{t}" for t in trace_ids]

"""Enriched spans back to OTLP, for forwarding downstream (tokenpulse/forward/).

The request is re-encoded from the protobuf message the receiver parsed, not
rebuilt from span records: every original field (events, links, trace state,
flags, dropped counts, typed attribute values, schema URLs) goes on as it came.
Each forwarded span gains attributes under one namespace, ``tokenpulse.``
(``ATTRIBUTES`` lists them; docs/forwarding.md):

* spans the receiver refused (bad ids, expired, tag-or-reject) and exporter
  retries already stored are left out, so a span is forwarded once;
* when user ids are pseudonymized (or dropped), the user-id attributes of the
  span and of its resource carry the pseudonym (or are removed): a raw user id
  never leaves;
* attributes a sender put in the ``tokenpulse.`` namespace itself are removed,
  so downstream the namespace always means "computed by tokenpulse".

This module and the receiver are the only places protobuf is touched.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Callable

from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)

from tokenpulse.otlp.decode import _render_pb
from tokenpulse.record import UNATTRIBUTED, SpanBatch

NAMESPACE = "tokenpulse."

# (attribute, type, meaning): the public contract of forwarded spans (docs/forwarding.md).
ATTRIBUTES = (
    ("tokenpulse.cost_usd", "double", "computed cost of the call; absent when it could not be priced"),
    ("tokenpulse.cost.input_usd", "double", "uncached input tokens x input price"),
    ("tokenpulse.cost.cache_read_usd", "double", "cache-read tokens x cache-read price"),
    ("tokenpulse.cost.cache_write_usd", "double", "cache-write tokens x cache-write price"),
    ("tokenpulse.cost.output_usd", "double", "non-reasoning output tokens x output price"),
    ("tokenpulse.cost.reasoning_usd", "double", "reasoning tokens x output (or reasoning) price"),
    ("tokenpulse.price_id", "string", "the price table entry used (provider:model@effective date)"),
    ("tokenpulse.price_status", "string", "priced, unknown_model, no_model, no_usage, invalid_usage, not_counted"),
    ("tokenpulse.feature", "string", "resolved feature, or unattributed"),
    ("tokenpulse.tenant", "string", "resolved tenant (the API key's tenant when it has one), or unattributed"),
    ("tokenpulse.agent_role", "string", "resolved agent role (own or inherited from the parent agent span)"),
    ("tokenpulse.user_id", "string", "resolved user id, pseudonymized unless user_id_mode is raw"),
    ("tokenpulse.unattributed", "bool", "true when the tenant or the feature could not be resolved"),
    ("tokenpulse.counted", "bool", "whether the span's tokens count in sums"),
    ("tokenpulse.excluded_reason", "string", "why not counted (aggregate, duplicate_call, ...)"),
)
_COSTS = (("tokenpulse.cost_usd", "cost_usd"), ("tokenpulse.cost.input_usd", "input_cost_usd"),
          ("tokenpulse.cost.cache_read_usd", "cache_read_cost_usd"),
          ("tokenpulse.cost.cache_write_usd", "cache_write_cost_usd"),
          ("tokenpulse.cost.output_usd", "output_cost_usd"), ("tokenpulse.cost.reasoning_usd", "reasoning_cost_usd"))

FILTERS = ("all", "genai")


class Unencodable(ValueError):
    """The received request cannot be turned back into OTLP protobuf (a malformed JSON part)."""


class Reencoder:
    """``scrub_user``: raw user id -> the value to forward ("" removes the attribute); None when
    user ids are kept raw. ``user_keys``: the attribute keys that carry user ids.

    Cost (docs/forwarding.md): the added attributes are encoded straight to protobuf bytes
    (``_Encoded``) and merged into each span by upb in C; only a span that carries a user id or
    an attribute in our namespace is edited through the message API."""

    def __init__(self, user_keys: frozenset[str] = frozenset(), scrub_user: Callable[[str], str] | None = None):
        self.user_keys = user_keys
        self.scrub_user = scrub_user
        self._enc = _Encoded()

    def encode(self, source, batch: SpanBatch, kept: list[int] | None,
               filters: tuple[str, ...] = ("all",)) -> dict[str, tuple[bytes, int]]:
        """``batch``: the enriched spans of the request; ``kept``: positions in it to forward (None:
        all). Returns, per filter, (ExportTraceServiceRequest bytes, number of spans)."""
        req = to_message(source)
        rows = range(len(batch)) if kept is None else kept
        index = {(batch.trace_id[i], batch.span_id[i]): i for i in rows}
        attrs_col = batch.attributes
        scrub = self.scrub_user is not None
        user_keys = self.user_keys
        extra = self._enc.extra_for(batch)
        genai: list[tuple] = []  # (scope spans, position, is GenAI) for the genai filter
        total = 0
        for rs in req.resource_spans:
            self._clean(rs.resource.attributes)
            for ss in rs.scope_spans:
                spans = ss.spans
                drop = []
                for pos, span in enumerate(spans):
                    row = index.get((span.trace_id.hex(), span.span_id.hex()))
                    if row is None:
                        drop.append(pos)
                        continue
                    # The decoded attributes tell whether the span needs editing: a user-id key, a key
                    # in our namespace, or a count that differs (duplicate keys, limits, drop mode).
                    attrs, kvs = attrs_col[row], span.attributes
                    if len(kvs) != len(attrs) or _NS_MARK in "\x00" + "\x00".join(attrs):
                        self._clean(kvs)  # rare: duplicate keys, limits, drop mode, our namespace
                    elif scrub and not user_keys.isdisjoint(attrs):
                        # Same keys in the same order as decoded: the map gives the positions.
                        order = list(attrs)
                        for key in user_keys.intersection(attrs):
                            value = kvs[order.index(key)].value
                            masked = self.scrub_user(value.string_value or _render_pb(value))
                            if masked:
                                value.string_value = masked
                            else:  # cannot happen in pseudonymize mode (drop mode takes _clean)
                                self._clean(kvs)
                                break
                    span.MergeFromString(extra(row))  # appends to the repeated attributes
                    genai.append((ss, pos - len(drop), bool(batch.operation[row] or batch.model[row])))
                for pos in reversed(drop):
                    del spans[pos]
                total += len(spans)
        out = {}
        if "all" in filters:
            out["all"] = (req.SerializeToString() if total else b"", total)
        if "genai" in filters:
            for ss, pos, keep in reversed(genai):
                if not keep:
                    del ss.spans[pos]
                    total -= 1
            out["genai"] = (req.SerializeToString() if total else b"", total)
        return out

    def _clean(self, kvs) -> None:
        """Scrub user ids and remove attributes in our namespace, in place."""
        drop = []
        for pos, kv in enumerate(kvs):
            key = kv.key
            if key.startswith(NAMESPACE):
                drop.append(pos)
            elif key in self.user_keys and self.scrub_user is not None:
                value = kv.value
                raw = value.string_value or _render_pb(value)
                masked = self.scrub_user(raw) if raw else ""
                if masked:
                    value.string_value = masked  # setting one member of the oneof clears the others
                else:
                    drop.append(pos)
        for pos in reversed(drop):
            del kvs[pos]


_NS_MARK = "\x00" + NAMESPACE


class _Encoded:
    """The added attributes as protobuf bytes of Span field 9 (``repeated KeyValue attributes``).

    Wire format (protobuf encoding guide): each attribute is tag 0x4A (field 9, length-delimited),
    a varint length, then KeyValue{1: key, 2: AnyValue{1: string | 2: bool | 4: double}}. Parsing
    concatenated fields appends to a repeated field, so these bytes merged into a span add the
    attributes after its own. String attributes repeat (tenants, features): cached."""

    def __init__(self, max_cached: int = 50_000):
        self._str: dict[tuple[str, str], bytes] = {}
        self.max_cached = max_cached
        self._double = {key: _kv_prefix(key, 9) + b"\x21" for key, _ in _COSTS}  # AnyValue 4: fixed64
        self._bool = {(key, v): _kv_prefix(key, 2) + (b"\x10\x01" if v else b"\x10\x00")
                      for key in ("tokenpulse.unattributed", "tokenpulse.counted") for v in (False, True)}

    def string(self, key: str, value: str) -> bytes:
        got = self._str.get((key, value))
        if got is None:
            if len(self._str) >= self.max_cached:
                self._str.clear()
            raw = value.encode("utf-8")
            any_value = b"\x0a" + _varint(len(raw)) + raw
            got = self._str[(key, value)] = _kv_prefix(key, len(any_value)) + any_value
        return got

    def extra_for(self, b: SpanBatch) -> Callable[[int], bytes]:
        """The added attributes of row ``i`` of ``b``, as bytes (columns looked up once per batch)."""
        costs = [(self._double[key], getattr(b, column)) for key, column in _COSTS]
        operation, model, price_id, price_status = b.operation, b.model, b.price_id, b.price_status
        tenants, features, roles, users = b.tenant, b.feature, b.agent_role, b.user_id
        counted, excluded = b.counted, b.excluded_reason
        string, bools, pack = self.string, self._bool, _DOUBLE.pack

        groups: dict[tuple, bytes] = {}  # the attribution attributes repeat: encoded once per batch

        def extra(i: int) -> bytes:
            head = b""
            if operation[i] or model[i]:  # cost fields only on GenAI spans
                parts = [prefix + pack(column[i]) for prefix, column in costs if column[i] is not None]
                if price_id[i]:
                    parts.append(string("tokenpulse.price_id", price_id[i]))
                if price_status[i]:
                    parts.append(string("tokenpulse.price_status", price_status[i]))
                head = b"".join(parts)
            key = (tenants[i], features[i], roles[i], counted[i], excluded[i])
            tail = groups.get(key)
            if tail is None:
                tenant, feature = tenants[i] or UNATTRIBUTED, features[i] or UNATTRIBUTED
                parts = [string("tokenpulse.feature", feature), string("tokenpulse.tenant", tenant)]
                if roles[i]:
                    parts.append(string("tokenpulse.agent_role", roles[i]))
                parts.append(bools[("tokenpulse.unattributed", tenant == UNATTRIBUTED or feature == UNATTRIBUTED)])
                parts.append(bools[("tokenpulse.counted", bool(counted[i]))])
                if excluded[i]:
                    parts.append(string("tokenpulse.excluded_reason", excluded[i]))
                tail = groups[key] = b"".join(parts)
            if users[i]:
                return head + tail + string("tokenpulse.user_id", users[i])
            return head + tail

        return extra


_DOUBLE = struct.Struct("<d")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _kv_prefix(key: str, any_value_len: int) -> bytes:
    """Span field 9 tag and length, KeyValue's key, and KeyValue field 2's tag and length: all of
    one attribute but its AnyValue's ``any_value_len`` bytes."""
    k = key.encode("utf-8")
    kv_len = 1 + len(_varint(len(k))) + len(k) + 1 + len(_varint(any_value_len)) + any_value_len
    return b"\x4a" + _varint(kv_len) + b"\x0a" + _varint(len(k)) + k + b"\x12" + _varint(any_value_len)


# ---------------------------------------------------------------- the received request


def to_message(source) -> ExportTraceServiceRequest:
    """The request as protobuf: the parsed message itself, or built from the OTLP/JSON document.

    OTLP/JSON differs from protobuf's JSON mapping in its hex ids, so ids are converted first;
    each resource, scope and span is parsed on its own, so one malformed part (already refused
    by the decoder) does not stop its neighbours."""
    if isinstance(source, ExportTraceServiceRequest):
        return source
    if not isinstance(source, dict):
        raise Unencodable("no received request to re-encode")
    req = ExportTraceServiceRequest()
    for rs in _items(source, "resourceSpans", "resource_spans"):
        out_rs = req.resource_spans.add()
        try:
            json_format.ParseDict({k: v for k, v in rs.items() if k not in ("scopeSpans", "scope_spans")},
                                  out_rs, ignore_unknown_fields=True)
        except (json_format.ParseError, TypeError, ValueError, AttributeError, RecursionError):
            del req.resource_spans[len(req.resource_spans) - 1]
            continue
        for ss in _items(rs, "scopeSpans", "scope_spans"):
            out_ss = out_rs.scope_spans.add()
            try:
                json_format.ParseDict({k: v for k, v in ss.items() if k != "spans"}, out_ss,
                                      ignore_unknown_fields=True)
            except (json_format.ParseError, TypeError, ValueError, AttributeError, RecursionError):
                del out_rs.scope_spans[len(out_rs.scope_spans) - 1]
                continue
            for span in _items(ss, "spans", "spans"):
                try:
                    converted = _hex_ids_to_b64(span)
                except ValueError:
                    continue  # refused by the decoder already
                try:
                    json_format.ParseDict(converted, out_ss.spans.add(), ignore_unknown_fields=True)
                except (json_format.ParseError, TypeError, ValueError, AttributeError, RecursionError):
                    del out_ss.spans[len(out_ss.spans) - 1]
    return req


def _items(d, camel: str, snake: str) -> list:
    if not isinstance(d, dict):
        return []
    got = d.get(camel, d.get(snake))
    return [x for x in got if isinstance(x, dict)] if isinstance(got, list) else []


_ID_KEYS = ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")


def _hex_ids_to_b64(span: dict) -> dict:
    out = dict(span)
    for key in _ID_KEYS:
        if isinstance(out.get(key), str):
            out[key] = _b64(out[key])
    links = out.get("links")
    if isinstance(links, list):
        out["links"] = [{**lk, **{k: _b64(lk[k]) for k in _ID_KEYS if isinstance(lk.get(k), str)}}
                        if isinstance(lk, dict) else lk for lk in links]
    return out


def _b64(hex_id: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(hex_id)).decode("ascii")
    except (ValueError, binascii.Error):
        raise ValueError(f"id {hex_id!r} is not hex") from None


# ---------------------------------------------------------------- downstream answers


def parse_response(body: bytes) -> tuple[int, str]:
    """(rejected spans, message) of an ExportTraceServiceResponse; (0, "") when it is empty or
    not protobuf (some servers answer 200 with no body)."""
    resp = ExportTraceServiceResponse()
    try:
        resp.ParseFromString(body or b"")
    except Exception:
        return 0, ""
    p = resp.partial_success
    return int(p.rejected_spans), p.error_message


def retry_delay(status_details: bytes | None) -> float | None:
    """The RetryInfo delay (seconds) in a gRPC ``grpc-status-details-bin`` trailer, or an HTTP
    error body (a google.rpc.Status); None when there is none."""
    if not status_details:
        return None
    status = status_pb2.Status()
    try:
        status.ParseFromString(status_details)
    except Exception:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None

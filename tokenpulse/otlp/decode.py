"""OTLP ExportTraceServiceRequest (protobuf or JSON) -> SpanBatch.

The hot path is ``decode_protobuf``: parse once with upb (which validates the
body and is what forwarding re-encodes), then walk the spans appending straight
to column lists, touching each attribute once (docs/sources.md#platform:
the attribute walk is the bottleneck). The walk is done in C over the same
bytes when the extension ``_otlpwalk`` is built (decode about twice as fast), and
in Python over the parsed message otherwise or when the C walk declines a
request (a repeated singular message, which protobuf merges; a group). Both
produce the same batch: tests/unit/test_decode_fast.py compares them.

Attribute values become strings (the ``attributes`` column is
Map(String, String)): strings as is, ints and doubles in decimal, bools as
``true``/``false``, bytes as base64 (as OTLP/JSON writes them), arrays and
kvlists as compact JSON.

A span with invalid ids (wrong length or all zero; OTLP specification.md,
trace.proto: "all-zero ... is considered invalid") is rejected on its own and
counted; its valid neighbours are kept. An undecodable body raises
``InvalidRequest`` (INVALID_ARGUMENT / 400 for the whole request).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tokenpulse.errors import InvalidRequest, RequestTooLarge
from tokenpulse.record import SpanBatch

try:
    from tokenpulse.otlp._otlpwalk import keep_first as _c_keep_first
    from tokenpulse.otlp._otlpwalk import walk as _c_walk
except ImportError:  # built without a C compiler: the Python walk below
    _c_walk = _c_keep_first = None

UNKNOWN_SERVICE = "unknown_service"
_MAX_ERRORS_LISTED = 5
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


@dataclass
class Decoded:
    batch: SpanBatch
    rejected: int = 0
    listed: int = 0  # rejected spans that ``errors`` accounts for
    errors: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # kind -> count, for /metrics
    tenant: str = ""  # set by the receiver from an API key bound to a tenant: it wins over the spans' own
    tenant_overridden: int = 0  # spans that claimed another tenant (counted by enrichment)
    # The request as received (an ExportTraceServiceRequest, or the OTLP/JSON document), for
    # forwarding enriched spans downstream (otlp/reencode.py). Opaque outside this package.
    source: object = None
    # Traces whose earlier calls were stored unattributed and whose root is in this request, with a
    # start time of each (enrichment fills it; storage/late_attribution.py moves their rollup rows).
    late_traces: list = field(default_factory=list)
    # (most attributes on one span or resource, longest value in characters), when the C walk
    # measured them while decoding; None from the Python walk (receiver/limits.py then looks).
    widest: tuple[int, int] | None = None

    def reject(self, message: str, kind: str = "invalid_span") -> None:
        """Refuse one span: ``message`` goes to the client, ``kind`` to the metrics label."""
        self.reject_many(1, message, kind)

    def reject_many(self, n: int, message: str, kind: str) -> None:
        """Refuse ``n`` spans for one reason (listed once)."""
        self.rejected += n
        self.reasons[kind] = self.reasons.get(kind, 0) + n
        # A reason for many spans at once is always listed (there are few such); single ones up to a cap.
        if n > 1 or len(self.errors) < _MAX_ERRORS_LISTED:
            self.errors.append(message if n == 1 else f"{n} spans: {message}")
            self.listed += n

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        more = self.rejected - self.listed
        tail = f" (and {more} more)" if more > 0 else ""
        return f"rejected {self.rejected} span(s): " + "; ".join(self.errors) + tail


# ---------------------------------------------------------------- protobuf


def _render_pb(v) -> str:
    """Render a non-string (or empty-string) AnyValue. Rare path."""
    which = v.WhichOneof("value")
    if which is None or which == "string_value":
        return v.string_value
    if which == "int_value":
        return str(v.int_value)
    if which == "bool_value":
        return "true" if v.bool_value else "false"
    if which == "double_value":
        return _render_double(v.double_value)
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    if which in ("array_value", "kvlist_value"):
        return json.dumps(_pb_to_py(v), separators=(",", ":"), ensure_ascii=False)
    # string_value_strindex: profiles only; trace receivers ignore it (otlp.md)
    return ""


def _render_double(d: float) -> str:
    if math.isfinite(d) and d == int(d) and abs(d) < 1e16:
        return str(int(d)) if d != 0 or math.copysign(1, d) > 0 else "0"
    return repr(d)


def _pb_to_py(v):
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_pb_to_py(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _pb_to_py(kv.value) for kv in v.kvlist_value.values}
    if which == "int_value":
        return v.int_value
    if which == "bool_value":
        return v.bool_value
    if which == "double_value":
        d = v.double_value
        return d if math.isfinite(d) else repr(d)
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    if which == "string_value":
        return v.string_value
    return None


def _attrs_pb(kvs) -> dict[str, str]:
    # Strings first, then non-zero ints (token counts): both skip WhichOneof,
    # which measured ~20% of decode time (bench, 16 attributes per span).
    out = {}
    for kv in kvs:
        v = kv.value
        s = v.string_value
        if s:
            out[kv.key] = s
        else:
            i = v.int_value
            out[kv.key] = str(i) if i else _render_pb(v)
    return out


def too_many_spans(limit: int) -> str:
    return f"more than {limit} spans in one request: the rest were refused (send smaller batches)"


def decode_protobuf(body: bytes, fast: bool = True, max_spans: int | None = None) -> Decoded:
    """``max_spans``: spans past the first ``max_spans`` are refused (partial success) before
    anything is built for them: counted on the wire first when the C extension is there."""
    excess = 0
    if max_spans is not None and _c_keep_first is not None:
        total, cut = _c_keep_first(body, max_spans)
        if cut is not None:
            excess, body = total - max_spans, cut
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as e:
        raise InvalidRequest(f"cannot decode ExportTraceServiceRequest protobuf: {e}") from None
    if max_spans is not None and _c_keep_first is None:
        excess = _cut_message(req, max_spans)
        if excess:
            body = req.SerializeToString()
    out = _walk_bytes(body, req) if fast and _c_walk is not None else None
    if out is None:
        out = decode_message(req)
    if excess:
        out.reject_many(excess, too_many_spans(max_spans), "too_many_spans")
    return out


def _cut_message(req: ExportTraceServiceRequest, max_spans: int) -> int:
    """Without the C extension: the parsed request cut to its first ``max_spans`` spans; the excess."""
    keep, excess = max_spans, 0
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            n = len(ss.spans)
            if n > keep:
                excess += n - keep
                del ss.spans[keep:]
            keep -= min(n, keep)
    return excess


def _render_raw(raw: bytes) -> str:
    """The C walk's callback for arrays, kvlists and bytes: the Python path's own rendering."""
    return _render_pb(AnyValue.FromString(raw))


# The columns the C walk fills, in the order it takes them (the enum in _otlpwalk.c).
WALK_COLUMNS = ("trace_id", "span_id", "parent_span_id", "name", "kind", "service", "scope_name", "scope_version",
                "start_time_ns", "end_time_ns", "status_code", "status_message", "resource_attributes", "attributes")


def walk_columns(batch: SpanBatch) -> tuple[list, ...]:
    return tuple(getattr(batch, name) for name in WALK_COLUMNS)


def _walk_bytes(body: bytes, req: ExportTraceServiceRequest) -> Decoded | None:
    """The C walk; None when it declines the request (then nothing of its output is used)."""
    batch = SpanBatch()
    out = Decoded(batch, source=req)
    widest = _c_walk(body, walk_columns(batch), out.reject, _render_raw, UNKNOWN_SERVICE)
    if not widest:
        return None
    out.widest = widest
    batch.fill_defaults()
    return out


def decode_message(req: ExportTraceServiceRequest) -> Decoded:
    batch = SpanBatch()
    out = Decoded(batch, source=req)
    # Local aliases: attribute lookups on self in the inner loop cost ~10%.
    trace_ids, span_ids, parent_ids = batch.trace_id, batch.span_id, batch.parent_span_id
    names, kinds, services = batch.name, batch.kind, batch.service
    scope_names, scope_versions = batch.scope_name, batch.scope_version
    starts, ends = batch.start_time_ns, batch.end_time_ns
    status_codes, status_messages = batch.status_code, batch.status_message
    res_attrs_col, attrs_col = batch.resource_attributes, batch.attributes

    for rs in req.resource_spans:
        res_attrs = _attrs_pb(rs.resource.attributes)
        service = res_attrs.get("service.name") or UNKNOWN_SERVICE
        for ss in rs.scope_spans:
            scope = ss.scope
            scope_name, scope_version = scope.name, scope.version
            for span in ss.spans:
                tid = span.trace_id
                sid = span.span_id
                pid = span.parent_span_id
                if len(tid) != 16 or tid == _ZERO_TRACE:
                    out.reject(f"span {span.name!r}: trace_id must be 16 non-zero bytes, got {len(tid)}")
                    continue
                if len(sid) != 8 or sid == _ZERO_SPAN:
                    out.reject(f"span {span.name!r}: span_id must be 8 non-zero bytes, got {len(sid)}")
                    continue
                if pid and len(pid) != 8:
                    out.reject(f"span {span.name!r}: parent_span_id must be empty or 8 bytes, got {len(pid)}")
                    continue
                trace_ids.append(tid.hex())
                span_ids.append(sid.hex())
                parent_ids.append(pid.hex() if pid and pid != _ZERO_SPAN else "")
                names.append(span.name)
                kinds.append(span.kind)
                services.append(service)
                scope_names.append(scope_name)
                scope_versions.append(scope_version)
                starts.append(span.start_time_unix_nano)
                ends.append(span.end_time_unix_nano)
                st = span.status
                status_codes.append(st.code)
                status_messages.append(st.message)
                res_attrs_col.append(res_attrs)
                attrs_col.append(_attrs_pb(span.attributes))
    batch.fill_defaults()
    return out


# ---------------------------------------------------------------- JSON
# OTLP/JSON (otlp.md "JSON quirks"): lowerCamelCase keys, hex ids, int64 as
# decimal strings (numbers accepted too), enums as integers, unknown fields
# ignored. We also accept the proto field names (snake_case), as the
# Collector's own unmarshaler does.

_KIND_NAMES = {
    "SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3, "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5,
}
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


class _SpanError(ValueError):
    pass


def _get(d: dict, camel: str, snake: str, default=None):
    v = d.get(camel)
    if v is None:
        v = d.get(snake, default)
    return default if v is None else v


def _list(d: dict, camel: str, snake: str) -> list:
    v = _get(d, camel, snake, [])
    if not isinstance(v, list):
        raise _SpanError(f"{camel} must be a list")
    return v


def _json_int(v, what: str) -> int:
    if isinstance(v, bool):
        raise _SpanError(f"{what} must be an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise _SpanError(f"{what} must be an integer or a decimal string, got {v!r:.40}")


def _json_id(v, nbytes: int, what: str, allow_empty: bool) -> str:
    if v in (None, ""):
        if allow_empty:
            return ""
        raise _SpanError(f"{what} is missing")
    if not isinstance(v, str) or len(v) != 2 * nbytes:
        raise _SpanError(f"{what} must be {2 * nbytes} hex characters")
    try:
        raw = binascii.unhexlify(v)
    except (binascii.Error, ValueError):
        raise _SpanError(f"{what} is not hex") from None
    if raw == bytes(nbytes):
        if allow_empty:
            return ""
        raise _SpanError(f"{what} must not be all zeros")
    return v.lower()


def _json_value_py(v):
    if not isinstance(v, dict):
        return None
    if "stringValue" in v or "string_value" in v:
        return str(_get(v, "stringValue", "string_value", ""))
    if "intValue" in v or "int_value" in v:
        return _json_int(_get(v, "intValue", "int_value"), "intValue")
    if "boolValue" in v or "bool_value" in v:
        return bool(_get(v, "boolValue", "bool_value"))
    if "doubleValue" in v or "double_value" in v:
        d = _get(v, "doubleValue", "double_value")
        return float(d) if isinstance(d, (int, float, str)) else None
    if "bytesValue" in v or "bytes_value" in v:
        return str(_get(v, "bytesValue", "bytes_value", ""))
    if "arrayValue" in v or "array_value" in v:
        arr = _get(v, "arrayValue", "array_value", {})
        return [_json_value_py(x) for x in (arr.get("values") or [])] if isinstance(arr, dict) else None
    if "kvlistValue" in v or "kvlist_value" in v:
        kvl = _get(v, "kvlistValue", "kvlist_value", {})
        vals = kvl.get("values") or [] if isinstance(kvl, dict) else []
        return {str(kv.get("key", "")): _json_value_py(kv.get("value")) for kv in vals if isinstance(kv, dict)}
    return None


def _json_value_str(v) -> str:
    py = _json_value_py(v)
    if py is None:
        return ""
    if isinstance(py, str):
        return py
    if isinstance(py, bool):
        return "true" if py else "false"
    if isinstance(py, int):
        return str(py)
    if isinstance(py, float):
        return _render_double(py)
    return json.dumps(py, separators=(",", ":"), ensure_ascii=False)


def _attrs_json(kvs) -> dict[str, str]:
    if not isinstance(kvs, list):
        raise _SpanError("attributes must be a list")
    out = {}
    for kv in kvs:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise _SpanError("each attribute must be an object with a string key")
        out[kv["key"]] = _json_value_str(kv.get("value"))
    return out


# A \\uD800-\\uDFFF escape: JSON allows a lone one (JavaScript's JSON.stringify writes one when text
# is cut mid-emoji); Python decodes it to a lone surrogate that no UTF-8 encoder takes.
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F][0-9a-fA-F]{2}")


def _no_lone_surrogates(v):
    """The document with every lone surrogate replaced by U+FFFD (valid pairs were joined by json)."""
    if isinstance(v, str):
        return v.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(v, list):
        return [_no_lone_surrogates(x) for x in v]
    if isinstance(v, dict):
        return {_no_lone_surrogates(k): _no_lone_surrogates(x) for k, x in v.items()}
    return v


# json.loads builds a dict per object: a body of millions of `{}` costs ~40x its size in memory
# before any span is looked at. An honest request of 100k spans with ~10 attributes each has ~2M
# objects; a body with more than this many `{` is refused before parsing (413).
MAX_JSON_OBJECTS = 4_000_000


def decode_json(body: bytes, max_spans: int | None = None) -> Decoded:
    objects = body.count(b"{")
    if objects > MAX_JSON_OBJECTS:
        raise RequestTooLarge(f"OTLP/JSON body with {objects} objects (more than {MAX_JSON_OBJECTS}): "
                              "send smaller batches")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise InvalidRequest(f"cannot decode OTLP/JSON body: {e}") from None
    if _SURROGATE_ESCAPE.search(body):  # rare: only then walk the document
        doc = _no_lone_surrogates(doc)
    if not isinstance(doc, dict):
        raise InvalidRequest("OTLP/JSON body must be an object with resourceSpans")
    try:
        resource_spans = _list(doc, "resourceSpans", "resource_spans")
    except _SpanError as e:
        raise InvalidRequest(str(e)) from None

    batch = SpanBatch()
    out = Decoded(batch, source=doc)
    seen = 0
    for rs in resource_spans:
        try:
            if not isinstance(rs, dict):
                raise _SpanError("resourceSpans entries must be objects")
            resource = rs.get("resource") or {}
            res_attrs = _attrs_json(resource.get("attributes") or [])
            scope_spans = _list(rs, "scopeSpans", "scope_spans")
        except (_SpanError, AttributeError, RecursionError) as e:
            out.reject(f"resourceSpans entry: {e}")
            continue
        service = res_attrs.get("service.name") or UNKNOWN_SERVICE
        for ss in scope_spans:
            try:
                if not isinstance(ss, dict):
                    raise _SpanError("scopeSpans entries must be objects")
                scope = ss.get("scope") or {}
                scope_name = str(scope.get("name") or "")
                scope_version = str(scope.get("version") or "")
                spans = _list(ss, "spans", "spans")
            except (_SpanError, AttributeError) as e:
                out.reject(f"scopeSpans entry: {e}")
                continue
            for k, span in enumerate(spans):
                if max_spans is not None and seen >= max_spans:
                    out.reject_many(len(spans) - k, too_many_spans(max_spans), "too_many_spans")
                    break
                seen += 1
                try:
                    _append_json_span(batch, span, service, scope_name, scope_version, res_attrs)
                except (_SpanError, AttributeError, TypeError, RecursionError) as e:
                    name = span.get("name") if isinstance(span, dict) else None
                    out.reject(f"span {name!r}: {e}")
    batch.fill_defaults()
    return out


def _append_json_span(batch: SpanBatch, span, service, scope_name, scope_version, res_attrs) -> None:
    if not isinstance(span, dict):
        raise _SpanError("span must be an object")
    # Validate and convert everything before appending anything, so a bad
    # span never leaves the columns with unequal lengths.
    tid = _json_id(_get(span, "traceId", "trace_id"), 16, "traceId", allow_empty=False)
    sid = _json_id(_get(span, "spanId", "span_id"), 8, "spanId", allow_empty=False)
    pid = _json_id(_get(span, "parentSpanId", "parent_span_id"), 8, "parentSpanId", allow_empty=True)
    kind = _get(span, "kind", "kind", 0)
    kind = _KIND_NAMES.get(kind, None) if isinstance(kind, str) else kind
    if not isinstance(kind, int) or isinstance(kind, bool) or not 0 <= kind <= 5:
        raise _SpanError("kind must be an integer 0..5")
    start = _json_int(_get(span, "startTimeUnixNano", "start_time_unix_nano", 0), "startTimeUnixNano")
    end = _json_int(_get(span, "endTimeUnixNano", "end_time_unix_nano", 0), "endTimeUnixNano")
    if not (0 <= start < 2**64 and 0 <= end < 2**64):
        raise _SpanError("timestamps must be fixed64 (0 .. 2^64-1)")
    status = span.get("status") or {}
    if not isinstance(status, dict):
        raise _SpanError("status must be an object")
    code = status.get("code", 0)
    code = _STATUS_NAMES.get(code, None) if isinstance(code, str) else code
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 2:
        raise _SpanError("status.code must be 0, 1 or 2")
    attrs = _attrs_json(span.get("attributes") or [])
    name = span.get("name") or ""
    if not isinstance(name, str):
        raise _SpanError("name must be a string")

    batch.trace_id.append(tid)
    batch.span_id.append(sid)
    batch.parent_span_id.append(pid)
    batch.name.append(name)
    batch.kind.append(kind)
    batch.service.append(service)
    batch.scope_name.append(scope_name)
    batch.scope_version.append(scope_version)
    batch.start_time_ns.append(start)
    batch.end_time_ns.append(end)
    batch.status_code.append(code)
    batch.status_message.append(str(status.get("message") or ""))
    batch.resource_attributes.append(res_attrs)
    batch.attributes.append(attrs)

"""Per-request limits, applied to the decoded batch before enrichment, every cut counted.

* spans per request over ``max_spans``: the excess spans are refused (partial success, reason
  ``too_many_spans``), the first ``max_spans`` are kept;
* attributes per span (and per resource) over ``max_attributes``: the extra attributes are
  dropped, keeping first the ones enrichment reads (GenAI usage, attribution, session, service);
* attribute values over ``max_value_chars`` characters: cut to that length.

Both cuts are counted in ``tokenpulse_attributes_limited_total{kind}``. The OpenTelemetry SDKs
apply similar limits on the sending side (128 attributes by default); these protect the
receiver from senders that do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenpulse.otlp.decode import Decoded

# Attributes that enrichment reads are kept first when a span has too many.
KEPT_FIRST = ("gen_ai.", "llm.", "ai.", "traceloop.", "langfuse.", "openinference.", "session.", "user.", "enduser.",
              "tenant", "customer.", "app.", "service.", "deployment.", "http.route", "input.value", "output.value")


@dataclass(frozen=True)
class Limits:
    max_spans: int = 100_000
    max_attributes: int = 256
    max_value_chars: int = 65_536


def _limit_attrs(d: dict, limits: Limits, counts: dict) -> dict:
    out = d
    if len(d) > limits.max_attributes:
        first = [k for k in d if k.startswith(KEPT_FIRST)]
        rest = [k for k in d if not k.startswith(KEPT_FIRST)]
        keep = (first + rest)[: limits.max_attributes]
        counts["dropped"] += len(d) - len(keep)
        out = {k: d[k] for k in keep}
    if out and max(map(len, out.values())) > limits.max_value_chars:
        out = dict(out) if out is d else out
        for k, v in out.items():
            if len(v) > limits.max_value_chars:
                out[k] = v[: limits.max_value_chars]
                counts["truncated"] += 1
    return out


def apply_limits(decoded: Decoded, limits: Limits) -> dict[str, int]:
    """Cut the batch to the limits in place; return {"dropped": n, "truncated": n} attributes."""
    counts = {"dropped": 0, "truncated": 0}
    batch = decoded.batch
    n = len(batch)
    if n > limits.max_spans:
        for _ in range(n - limits.max_spans):
            decoded.reject(f"more than {limits.max_spans} spans in one request: the rest were refused "
                           "(send smaller batches)", "too_many_spans")
        batch = decoded.batch = batch.take(list(range(limits.max_spans)))
    widest = decoded.widest
    if widest is not None and widest[0] <= limits.max_attributes and widest[1] <= limits.max_value_chars:
        return counts  # the C walk measured the request while decoding it: nothing to cut
    seen: dict[int, dict] = {}  # resource attribute dicts are shared by the spans of a resource
    res = batch.resource_attributes
    for i, d in enumerate(res):
        got = seen.get(id(d))
        if got is None:
            got = seen[id(d)] = _limit_attrs(d, limits, counts)
        res[i] = got
    attrs = batch.attributes
    for i, d in enumerate(attrs):
        attrs[i] = _limit_attrs(d, limits, counts)
    return counts

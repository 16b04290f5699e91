"""Enrichment: SpanBatch -> SpanBatch steps, applied in order on the receiver's path.

    normalize  (every dialect -> typed GenAI fields; aggregates flagged)
    calls      (the same LLM call reported twice in a trace counted once)
    price      (cost from the price table in force at the span's start)
    attribute  (tenant, feature, user, session, route, agent role, environment;
                tag-or-reject)
    content    (prompt and completion attributes dropped, or capped when captured)

The service runs the fast counterparts of normalize, calls, price and attribute (``enrich/fast/``);
the modules above are their reference, kept for the differential test (``Pipeline(reference=True)``).

The pipeline takes a batch and the request's context (``RequestContext``) and returns an
``Enriched`` result; it knows nothing of OTLP or of the receivers. Each step is a plain function
of the batch and its loaded tables, with no I/O, tested with tables of cases. ``calls`` and ``attribute`` keep bounded memories
of recent traces (see their modules). A step may refuse spans: the pipeline
reports them to the client as OTLP partial success.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from tokenpulse.enrich.attribute import Attributor
from tokenpulse.enrich.calls import DuplicateCalls
from tokenpulse.enrich.content import Content
from tokenpulse.enrich.fast.attribute import ColumnarAttributor
from tokenpulse.enrich.fast.calls import TraceCalls
from tokenpulse.enrich.fast.normalize import Normalizer
from tokenpulse.enrich.fast.price import make_price_step as make_fast_price_step
from tokenpulse.enrich.normalize import normalize_calls
from tokenpulse.enrich.price import PriceTable, make_price_step
from tokenpulse.record import SpanBatch, scoped_traces


@dataclass(frozen=True)
class RequestContext:
    """What enrichment needs to know about the request a batch came in."""

    tenant: str = ""  # the sender's bound tenant (receiver/auth.py): it wins over the spans' own


@dataclass
class Enriched:
    batch: SpanBatch
    rejects: list[str] = field(default_factory=list)  # one message per refused span (tag-or-reject)
    tenant_overridden: int = 0  # spans whose own tenant lost to the bound one
    late_traces: list = field(default_factory=list)  # (trace id, start ns) whose late root resolves earlier calls


def span_shapes(attributes: list[dict]) -> list[tuple[str, ...]]:
    """Each span's attribute keys, one tuple object per distinct shape: the steps then recognize a
    span of the previous span's shape by identity, without hashing its keys again."""
    shapes = list(map(tuple, attributes))
    if not shapes or shapes.count(shapes[0]) == len(shapes):  # one shape (the key strs are shared: fast)
        return [shapes[0]] * len(shapes) if shapes else shapes
    canonical: dict[tuple[str, ...], tuple[str, ...]] = {}
    return [canonical.setdefault(s, s) for s in shapes]


class Pipeline:
    def __init__(self, price_table: PriceTable | None = None, attributor: Attributor | None = None,
                 on_unknown_model: Callable[[str], None] = lambda model: None,
                 on_excluded: Callable[[str, int], None] = lambda reason, n: None, content: Content | None = None,
                 calls: DuplicateCalls | TraceCalls | None = None, reference: bool = False):
        """``reference``: the reference steps throughout (the differential test's other side); an
        ``attributor`` or ``calls`` passed in is used as it is either way."""
        self.attributor = attributor or (Attributor if reference else ColumnarAttributor)(user_id_mode="raw")
        self.calls = calls or (DuplicateCalls() if reference else TraceCalls())
        self.reference = reference
        # Every step takes the spans' attribute-key tuples (``shapes``); the reference ones ignore them.
        self._normalize = (lambda batch, shapes: normalize_calls(batch)) if reference else Normalizer()
        self._on_unknown_model = on_unknown_model
        self.set_price_table(price_table or PriceTable())
        self._on_excluded = on_excluded
        self.content = content or Content()

    def set_price_table(self, table: PriceTable) -> None:
        """Price with ``table`` from the next batch on (a reload: one reference swapped, so a batch
        is priced wholly by the old table or wholly by the new one)."""
        self.price_table = table
        if self.reference:
            step = make_price_step(table, self._on_unknown_model)
            self._price = lambda batch, shapes: step(batch)
        else:
            self._price = make_fast_price_step(table, self._on_unknown_model)

    def __call__(self, batch: SpanBatch, ctx: RequestContext = RequestContext()) -> Enriched:
        traces = scoped_traces(ctx.tenant, batch.trace_id)  # per-trace memory keys, computed once
        # Each span's attribute keys, made once for the fast steps (the reference ones take None).
        shapes = None if self.reference else span_shapes(batch.attributes)
        batch, inferred = self._normalize(batch, shapes)
        batch = self.calls(batch, inferred, ctx.tenant, traces)
        self._count_excluded(batch)
        # Price keeps every row in place: the memory keys and the key tuples still line up.
        batch = self._price(batch, shapes)
        batch, rejects = self.attributor(batch, ctx.tenant, traces, shapes)
        return Enriched(self.content(batch), rejects, self.attributor.overridden, self.attributor.late)

    def _count_excluded(self, batch) -> None:
        """Spans that carried usage and are not counted, by reason kind (aggregate, duplicate_of,
        not_inference): a user sees in /metrics that a rule excluded reported tokens."""
        kinds: dict[str, int] = {}
        for reason in batch.excluded_reason:
            if reason:
                kind = reason.split(":", 1)[0]
                kinds[kind] = kinds.get(kind, 0) + 1
        for kind, n in kinds.items():
            self._on_excluded(kind, n)

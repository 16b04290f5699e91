"""Enrichment: SpanBatch -> SpanBatch steps, applied in order on the receiver's path.

    normalize  (every dialect -> typed GenAI fields; aggregates flagged)
    calls      (the same LLM call reported twice in a trace counted once)
    price      (cost from the price table in force at the span's start)
    attribute  (tenant, feature, user, session, route, agent role, environment;
                tag-or-reject)
    content    (prompt and completion attributes dropped, or capped when captured)

Each step is a plain function of the batch and its loaded tables, with no I/O,
tested with tables of cases. ``calls`` and ``attribute`` keep bounded memories
of recent traces (see their modules). A step may refuse spans: the pipeline
reports them to the client as OTLP partial success.
"""

from __future__ import annotations

from typing import Callable

from tokenpulse.enrich.attribute import Attributor
from tokenpulse.enrich.calls import DuplicateCalls
from tokenpulse.enrich.content import Content
from tokenpulse.enrich.normalize import normalize_calls
from tokenpulse.enrich.price import PriceTable, make_price_step
from tokenpulse.receiver.decode import Decoded


class Pipeline:
    def __init__(self, price_table: PriceTable | None = None, attributor: Attributor | None = None,
                 on_unknown_model: Callable[[str], None] = lambda model: None,
                 on_excluded: Callable[[str, int], None] = lambda reason, n: None, content: Content | None = None,
                 calls: DuplicateCalls | None = None):
        self.price_table = price_table or PriceTable()
        self.attributor = attributor or Attributor(user_id_mode="raw")
        self.calls = calls or DuplicateCalls()
        self._price = make_price_step(self.price_table, on_unknown_model)
        self._on_excluded = on_excluded
        self.content = content or Content()

    def __call__(self, decoded: Decoded) -> Decoded:
        batch, inferred = normalize_calls(decoded.batch)
        batch = self.calls(batch, inferred, decoded.tenant)
        self._count_excluded(batch)
        batch = self._price(batch)
        batch, rejects = self.attributor(batch, decoded.tenant)
        decoded.tenant_overridden = self.attributor.overridden
        decoded.late_traces = self.attributor.late
        for reason in rejects:
            decoded.reject(reason, "missing_tags")
        decoded.batch = self.content(batch)
        return decoded

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

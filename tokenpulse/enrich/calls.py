"""The same LLM call reported twice in one trace is counted once.

Two instrumentations on one call (a provider SDK's own span plus a library's
span around it, e.g. OpenLLMetry over the OpenAI SDK's OTel integration) give
two counted inference spans. They are the same call when, within one trace,
(a) they carry the same response id (``gen_ai.response.id``), or (b) one is
the other's parent and both report the same input and output token counts.
The span seen second is flagged ``counted = 0``, ``excluded_reason =
'duplicate_of:<span_id>'``.

This is the one stateful enrichment step: it remembers recent calls (bounded,
``max_entries``, oldest forgotten first) so the two reports may arrive in
different export requests. The memory is per process: with several receivers
(deployment docs) a pair split across receivers is not caught at ingest.
"""

from __future__ import annotations

from collections import OrderedDict

from tokenpulse.enrich.normalize import INFERENCE_OPERATIONS, exclude
from tokenpulse.record import SpanBatch


class DuplicateCalls:
    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        # Insertion order, the oldest forgotten first. Not plain dicts: ``del d[next(iter(d))]``
        # scans the deleted slots at the front of a dict's entry table on every call, so once
        # full, each span cost up to ~370 us (measured: 200k entries, bench spans).
        # OrderedDict.popitem(last=False) is O(1).
        self._by_response: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._by_span: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        self._children: OrderedDict[tuple[str, str], list[tuple[str, tuple[int, int]]]] = OrderedDict()

    def __call__(self, batch: SpanBatch) -> SpanBatch:
        # Columns and tables in locals, the bounded inserts inlined: this runs for every counted call.
        counted, operation, input_tokens, output_tokens = batch.counted, batch.operation, batch.input_tokens, \
            batch.output_tokens
        trace_ids, span_ids, parents, attributes = batch.trace_id, batch.span_id, batch.parent_span_id, batch.attributes
        by_response, by_span, children, limit = self._by_response, self._by_span, self._children, self.max_entries
        for i in range(len(batch)):
            if not counted[i] or operation[i] not in INFERENCE_OPERATIONS or not input_tokens[i]:
                continue
            trace, sid, parent = trace_ids[i], span_ids[i], parents[i]
            attrs = attributes[i]
            rid = attrs.get("gen_ai.response.id") or attrs.get("ai.response.id", "")
            fp = (input_tokens[i], output_tokens[i])
            dup_of = ""
            if rid:
                prev = by_response.get((trace, rid))
                if prev and prev != sid:
                    dup_of = prev
            if not dup_of and parent and by_span.get((trace, parent)) == fp:
                dup_of = parent
            if not dup_of:
                for child, child_fp in children.get((trace, sid), ()):
                    if child_fp == fp and child != sid:
                        dup_of = child
                        break
            if dup_of:
                exclude(batch, i, f"duplicate_of:{dup_of}")
                continue
            if rid:
                by_response[(trace, rid)] = sid
                if len(by_response) > limit:
                    by_response.popitem(last=False)
            by_span[(trace, sid)] = fp
            if len(by_span) > limit:
                by_span.popitem(last=False)
            if parent:
                siblings = children.get((trace, parent))
                if siblings is None:
                    children[(trace, parent)] = [(sid, fp)]
                    if len(children) > limit:
                        children.popitem(last=False)
                else:
                    siblings.append((sid, fp))
        return batch

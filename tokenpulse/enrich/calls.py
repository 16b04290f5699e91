"""The same LLM call reported twice in one trace is counted once.

Real stacks report one call two or three times: a provider SDK's own span beside a library's
(the Anthropic SDK under OpenLLMetry or OpenInference, as siblings or parent and child), a
framework over an instrumentation (LangChain over OpenAI), two instrumentations on one client.
The conformance corpus (tests/conformance/) holds recordings of each. Within one trace, span B is
a duplicate of the kept span A when:

(a) both carry the same response id (``gen_ai.response.id``, ``ai.response.id``); or
(b) they come from two instrumentations (scope names differ) or are parent and child, their
    time intervals overlap (by at least half the shorter one), provider and model agree (a request
    model may be the prefix of a dated response model), neither names another response id, and
    either both report the same output tokens and the same input counted with cache or without it
    (two libraries may disagree on whether input includes cache), or, for a parent, child or
    sibling, B reports no usage at all (a stream without usage reported by two instrumentations, a
    429 seen twice, or a wrapper that lost the usage its inner span kept).

One instrumentation never reports one call twice, so two spans of one scope that are not parent
and child are two calls, however alike (parallel identical requests cut at the same max_tokens).

B is flagged ``counted = 0``, ``excluded_reason = 'duplicate_of:<A's span id>'``. Within one
export request the kept span is chosen, not merely the first: a span with usage before one
without, then the higher ``quirks.py`` rank (a provider SDK's own span), then the one with more
detail (cache and reasoning counts), then the larger input (cache included).

A span whose operation was inferred from its usage (no operation named; ``normalize``) and whose
children are counted LLM calls other than itself is their sum: ``excluded_reason =
'aggregate:llm_children'``.

This is a stateful step: it remembers recent calls (bounded, ``max_entries``, oldest forgotten
first) so the reports may arrive in different export requests. Limits: a span without usage that
was stored counted before its twin with usage arrived stays counted (with zero tokens); an
inferred parent stored before its children stays counted. The memory is per process: with several
receivers a pair split across receivers is not caught at ingest.
"""

from __future__ import annotations

from collections import OrderedDict

from tokenpulse.enrich.normalize import INFERENCE_OPERATIONS, exclude
from tokenpulse.enrich.quirks import quirk
from tokenpulse.record import SpanBatch, scoped_traces

MAX_SAME_OUTPUT = 32  # calls remembered per (trace, output tokens)


class _Call:
    __slots__ = ("sid", "parent", "scope", "start", "end", "provider", "models", "input", "output", "cache", "rid",
                 "usage")

    def __init__(self, sid, parent, scope, start, end, provider, models, input_, output, cache, rid, usage):
        self.sid, self.parent, self.scope, self.start, self.end = sid, parent, scope, start, end
        self.provider, self.models, self.input, self.output, self.cache = provider, models, input_, output, cache
        self.rid, self.usage = rid, usage


def _models_agree(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if not a or not b:
        return True
    return any(x.startswith(y) or y.startswith(x) for x in a for y in b)


def _overlap(a: _Call, b: _Call) -> bool:
    shorter = min(a.end - a.start, b.end - b.start)
    common = min(a.end, b.end) - max(a.start, b.start)
    return common >= 0 and common * 2 >= shorter


def _same_call(a: _Call, b: _Call) -> bool:
    return ((a.scope != b.scope or a.parent == b.sid or b.parent == a.sid)
            and (not a.provider or not b.provider or a.provider == b.provider) and _models_agree(a.models, b.models)
            and (not a.rid or not b.rid or a.rid == b.rid) and _overlap(a, b))


def _same_tokens(a: _Call, b: _Call) -> bool:
    return a.output == b.output and (a.input == b.input or a.input + a.cache == b.input or b.input + b.cache == a.input)


def counted_calls(batch: SpanBatch) -> list[int]:
    """The rows that are counted LLM calls: the only ones count-once compares."""
    return [i for i, (c, op) in enumerate(zip(batch.counted, batch.operation)) if c and op in INFERENCE_OPERATIONS]


class DuplicateCalls:
    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        # OrderedDicts, oldest first: popitem(last=False) is O(1), where ``del d[next(iter(d))]`` on a
        # full plain dict rescans its deleted slots on every call (measured: up to ~370 us per span).
        self._calls: OrderedDict[tuple[str, str], _Call] = OrderedDict()
        self._by_response: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._by_output: OrderedDict[tuple[str, int], list[str]] = OrderedDict()
        self._children: OrderedDict[tuple[str, str], list[str]] = OrderedDict()

    def __call__(self, batch: SpanBatch, inferred: set[int] = frozenset(), tenant: str = "",
                 traces: list[str] | None = None) -> SpanBatch:
        """``tenant``: the sender's bound tenant; the memory is per tenant (record.scoped_traces).
        ``traces``: those keys already computed for this batch (the pipeline shares them)."""
        # Columns and tables in locals, the bounded inserts inlined: this runs for every counted call.
        status = batch.usage_status
        todo = counted_calls(batch)
        if not todo:
            return batch
        cr, cw, rs, inp, out = batch.cache_read_tokens, batch.cache_write_tokens, batch.reasoning_tokens, \
            batch.input_tokens, batch.output_tokens
        scopes, sids, parents = batch.scope_name, batch.span_id, batch.parent_span_id
        traces = traces if traces is not None else scoped_traces(tenant, batch.trace_id)
        if len(todo) > 1:
            todo.sort(key=lambda i: (status[i] in ("missing", "none"), -quirk(scopes[i]).rank,
                                     -(cr[i] + cw[i] + rs[i]), -inp[i], i))
        attributes, models, request_models, providers = batch.attributes, batch.model, batch.request_model, \
            batch.provider
        starts, ends = batch.start_time_ns, batch.end_time_ns
        calls, by_response, by_output, children = self._calls, self._by_response, self._by_output, self._children
        limit = self.max_entries
        kept: dict[int, _Call] = {}
        for i in todo:
            attrs = attributes[i]
            rid = attrs.get("gen_ai.response.id") or attrs.get("ai.response.id", "")
            m, rm = models[i], request_models[i]
            trace, sid, parent = traces[i], sids[i], parents[i]
            c = _Call(sid, parent, scopes[i], starts[i], ends[i], providers[i],
                      (m, rm) if m and rm else ((m,) if m else ((rm,) if rm else ())), inp[i], out[i], cr[i] + cw[i],
                      rid, status[i] not in ("missing", "none"))
            dup_of = self._match(trace, c, parent)
            if dup_of:
                exclude(batch, i, f"duplicate_of:{dup_of}")
                continue
            kept[i] = c
            calls[(trace, sid)] = c
            if len(calls) > limit:
                calls.popitem(last=False)
            if rid:
                by_response[(trace, rid)] = sid
                if len(by_response) > limit:
                    by_response.popitem(last=False)
            if c.usage:
                same = by_output.get((trace, c.output))
                if same is None:
                    by_output[(trace, c.output)] = [sid]
                    if len(by_output) > limit:
                        by_output.popitem(last=False)
                elif len(same) < MAX_SAME_OUTPUT:
                    same.append(sid)
            if parent:
                siblings = children.get((trace, parent))
                if siblings is None:
                    children[(trace, parent)] = [sid]
                    if len(children) > limit:
                        children.popitem(last=False)
                elif len(siblings) < MAX_SAME_OUTPUT:
                    siblings.append(sid)
        for i in inferred:
            c = kept.get(i)
            if c is not None and self._has_call_children(traces[i], c):
                exclude(batch, i, "aggregate:llm_children")
                calls.pop((traces[i], c.sid), None)
        return batch

    def _match(self, trace: str, c: _Call, parent: str) -> str:
        calls = self._calls
        if c.rid:
            prev = self._by_response.get((trace, c.rid))
            if prev and prev != c.sid:
                return prev
        if c.usage:
            for sid in self._by_output.get((trace, c.output), ()):
                other = calls.get((trace, sid))
                if other is not None and sid != c.sid and _same_tokens(c, other) and _same_call(c, other):
                    return sid
            return ""
        # No usage here: the same call as a parent, child or sibling that overlaps it (with or without usage).
        relatives = list(self._children.get((trace, c.sid), ()))
        if parent:
            relatives.append(parent)
            relatives.extend(self._children.get((trace, parent), ()))
        for sid in relatives:
            other = calls.get((trace, sid))
            if other is not None and sid != c.sid and _same_call(c, other):
                return sid
        return ""

    def _has_call_children(self, trace: str, c: _Call) -> bool:
        return any(sid != c.sid and (trace, sid) in self._calls for sid in self._children.get((trace, c.sid), ()))

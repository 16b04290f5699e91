"""The same LLM call reported twice in one trace is counted once: ``enrich/calls.py``'s rules, with
its memory kept per trace.

The reference keys four bounded maps by ``(trace, ...)`` tuples and builds a ``_Call`` object per
call: about eight tracked allocations and four tuple hashes per call, and most of its time. Here a
trace's calls, response ids, output counts and children live in one small record per trace, keyed
by plain strings and ints, and a call is a tuple. The rules (``_match``, the keep order, the
aggregate-of-children check) are the reference's, written over tuples.

Bound: ``max_entries`` calls. Past it, whole traces are forgotten, the one first seen longest ago
first (the reference forgets the oldest entry of each of its maps on its own). Forgetting per call
cost ~1.5 us per call once the memory was full, most of the step. A trace alone larger than the
bound is forgotten too: its later reports are then compared only within their own request.
"""

from __future__ import annotations

from collections import OrderedDict

from tokenpulse.enrich.calls import MAX_SAME_OUTPUT, _models_agree
from tokenpulse.enrich.normalize import INFERENCE_OPERATIONS, exclude
from tokenpulse.enrich.quirks import quirk
from tokenpulse.record import SpanBatch, scoped_traces

# A call: (span id, parent id, scope, start, end, provider, models, input, output, cache, response id, usage)
SID, PARENT, SCOPE, START, END, PROVIDER, MODELS, INPUT, OUTPUT, CACHE, RID, USAGE = range(12)
_NO_USAGE = ("missing", "none")


class _Trace:
    __slots__ = ("calls", "by_response", "by_output", "children")

    def __init__(self) -> None:
        self.calls: dict[str, tuple] = {}
        self.by_response: dict[str, str] = {}
        # Tuples, not lists: a tuple of strings leaves the cyclic collector's care after its first
        # collection, a list never does (the memory holds ~200k of them).
        self.by_output: dict[int, tuple[str, ...]] = {}
        self.children: dict[str, tuple[str, ...]] = {}


def _overlap(a: tuple, b: tuple) -> bool:
    shorter = min(a[END] - a[START], b[END] - b[START])
    common = min(a[END], b[END]) - max(a[START], b[START])
    return common >= 0 and common * 2 >= shorter


def _same_call(a: tuple, b: tuple) -> bool:
    return ((a[SCOPE] != b[SCOPE] or a[PARENT] == b[SID] or b[PARENT] == a[SID])
            and (not a[PROVIDER] or not b[PROVIDER] or a[PROVIDER] == b[PROVIDER])
            and _models_agree(a[MODELS], b[MODELS]) and (not a[RID] or not b[RID] or a[RID] == b[RID])
            and _overlap(a, b))


def _same_tokens(a: tuple, b: tuple) -> bool:
    return a[OUTPUT] == b[OUTPUT] and (a[INPUT] == b[INPUT] or a[INPUT] + a[CACHE] == b[INPUT]
                                       or b[INPUT] + b[CACHE] == a[INPUT])


def _match(t: _Trace, c: tuple) -> str:
    """The span id of the remembered call ``c`` repeats, or ""."""
    calls, sid = t.calls, c[SID]
    rid = c[RID]
    if rid:
        prev = t.by_response.get(rid)
        if prev and prev != sid:
            return prev
    if c[USAGE]:
        for other_sid in t.by_output.get(c[OUTPUT], ()):
            other = calls.get(other_sid)
            if other is not None and other_sid != sid and _same_tokens(c, other) and _same_call(c, other):
                return other_sid
        return ""
    # No usage here: the same call as a parent, child or sibling that overlaps it (with or without usage).
    relatives = list(t.children.get(sid, ()))
    parent = c[PARENT]
    if parent:
        relatives.append(parent)
        relatives.extend(t.children.get(parent, ()))
    for other_sid in relatives:
        other = calls.get(other_sid)
        if other is not None and other_sid != sid and _same_call(c, other):
            return other_sid
    return ""


class TraceCalls:
    """``calls.DuplicateCalls`` with its memory per trace (same constructor and call)."""

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        # Oldest first: popitem(last=False) is O(1), where deleting a plain dict's first key again and
        # again rescans its deleted slots (calls.py).
        self._traces: OrderedDict[str, _Trace] = OrderedDict()
        self._size = 0  # calls remembered

    def __len__(self) -> int:
        """Calls remembered."""
        return self._size

    def __call__(self, batch: SpanBatch, inferred: set[int] = frozenset(), tenant: str = "",
                 traces: list[str] | None = None) -> SpanBatch:
        counted, operation, status = batch.counted, batch.operation, batch.usage_status
        todo = [i for i, (c, op) in enumerate(zip(counted, operation)) if c and op in INFERENCE_OPERATIONS]
        if not todo:
            return batch
        cr, cw, rs, inp, out = batch.cache_read_tokens, batch.cache_write_tokens, batch.reasoning_tokens, \
            batch.input_tokens, batch.output_tokens
        scopes, sids, parents = batch.scope_name, batch.span_id, batch.parent_span_id
        traces = traces if traces is not None else scoped_traces(tenant, batch.trace_id)
        if len(todo) > 1:  # the reference's keep order; calls of different traces never meet
            rank = {s: -quirk(s).rank for s in {scopes[i] for i in todo}}
            todo = [k[-1] for k in sorted([(status[i] in _NO_USAGE, rank[scopes[i]], -(cr[i] + cw[i] + rs[i]),
                                            -inp[i], i) for i in todo])]
        attributes, models, request_models, providers = batch.attributes, batch.model, batch.request_model, \
            batch.provider
        starts, ends = batch.start_time_ns, batch.end_time_ns
        mem = self._traces
        added = 0
        kept: dict[int, tuple] = {}
        for i in todo:
            attrs = attributes[i]
            rid = attrs.get("gen_ai.response.id") or attrs.get("ai.response.id", "")
            m, rm = models[i], request_models[i]
            trace, sid, parent = traces[i], sids[i], parents[i]
            usage = status[i] not in _NO_USAGE
            c = (sid, parent, scopes[i], starts[i], ends[i], providers[i],
                 (m, rm) if m and rm else ((m,) if m else ((rm,) if rm else ())), inp[i], out[i], cr[i] + cw[i],
                 rid, usage)
            t = mem.get(trace)
            if t is None:
                t = mem[trace] = _Trace()
            else:
                dup_of = _match(t, c)
                if dup_of:
                    exclude(batch, i, f"duplicate_of:{dup_of}")
                    continue
            kept[i] = c
            added += sid not in t.calls
            t.calls[sid] = c
            if rid:
                t.by_response[rid] = sid
            if usage:
                same = t.by_output.get(c[OUTPUT], ())
                if len(same) < MAX_SAME_OUTPUT:
                    t.by_output[c[OUTPUT]] = same + (sid,)
            if parent:
                siblings = t.children.get(parent, ())
                if len(siblings) < MAX_SAME_OUTPUT:
                    t.children[parent] = siblings + (sid,)
        for i in inferred:
            c = kept.get(i)
            if c is not None:
                t = mem[traces[i]]
                if any(s != c[SID] and s in t.calls for s in t.children.get(c[SID], ())):
                    exclude(batch, i, "aggregate:llm_children")
                    if t.calls.pop(c[SID], None) is not None:
                        added -= 1
        self._size += added
        while self._size > self.max_entries and mem:
            self._size -= len(mem.popitem(last=False)[1].calls)
        return batch

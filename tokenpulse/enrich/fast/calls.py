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

Most traces need no comparison at all: a trace the memory has not seen whose calls in a request
all carry usage, with distinct span ids, response ids and output counts, cannot repeat itself
(``_match`` finds nothing by response id or by output, and the no-usage path is not taken). Such
a trace is remembered *lazily*: the request's call columns are kept as tuples (one ``itemgetter``
per column) and the trace points at its positions in them. Its record is built, in the keep order,
only when a later request reports the same trace again (``_materialize``), so it ends up the same
as if it had been built at once. Within one request, the traces that need a record enter the
memory first, the lazy ones after them, each in the order of its first span.
"""

from __future__ import annotations

from collections import OrderedDict
from operator import itemgetter

from tokenpulse.enrich.calls import MAX_SAME_OUTPUT, _models_agree, counted_calls
from tokenpulse.enrich.normalize import exclude
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


class _Lazy:
    """A trace's calls from one request that repeated nothing, not yet indexed: positions in the
    request's call columns (``seg``: sid, parent, scope, start, end, provider, model, request model,
    input, output, cache read, cache write, reasoning, response id, row)."""

    __slots__ = ("seg", "at")

    def __init__(self, seg: tuple, at: list[int]):
        self.seg, self.at = seg, at


def _cols(rows: list[int], *columns: list) -> tuple[tuple, ...]:
    """Each column's items at ``rows``, as tuples (in C)."""
    if len(rows) == 1:
        return tuple((c[rows[0]],) for c in columns)
    get = itemgetter(*rows)
    return tuple(map(get, columns))


def _remember(t: _Trace, c: tuple) -> None:
    """Index call ``c`` in its trace record (the eager path's bookkeeping)."""
    sid, rid, parent = c[SID], c[RID], c[PARENT]
    t.calls[sid] = c
    if rid:
        t.by_response[rid] = sid
    if c[USAGE]:
        same = t.by_output.get(c[OUTPUT], ())
        if len(same) < MAX_SAME_OUTPUT:
            t.by_output[c[OUTPUT]] = same + (sid,)
    if parent:
        siblings = t.children.get(parent, ())
        if len(siblings) < MAX_SAME_OUTPUT:
            t.children[parent] = siblings + (sid,)


def _materialize(lazy: _Lazy) -> _Trace:
    """The record the eager path would have built from these calls, in the keep order."""
    sid, parent, scope, start, end, provider, model, rmodel, inp, out, cr, cw, rs, rid, row = lazy.seg
    rank = {sc: -quirk(sc).rank for sc in {scope[p] for p in lazy.at}}
    t = _Trace()
    for p in sorted(lazy.at, key=lambda p: (rank[scope[p]], -(cr[p] + cw[p] + rs[p]), -inp[p], row[p])):
        m, rm = model[p], rmodel[p]
        _remember(t, (sid[p], parent[p], scope[p], start[p], end[p], provider[p],
                      (m, rm) if m and rm else ((m,) if m else ((rm,) if rm else ())), inp[p], out[p],
                      cr[p] + cw[p], rid[p], True))
    return t


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
        self._traces: OrderedDict[str, _Trace | _Lazy] = OrderedDict()
        self._size = 0  # calls remembered

    def __len__(self) -> int:
        """Calls remembered."""
        return self._size

    def __call__(self, batch: SpanBatch, inferred: set[int] = frozenset(), tenant: str = "",
                 traces: list[str] | None = None) -> SpanBatch:
        status = batch.usage_status
        todo = counted_calls(batch)
        if not todo:
            return batch
        cr, cw, rs, inp, out = batch.cache_read_tokens, batch.cache_write_tokens, batch.reasoning_tokens, \
            batch.input_tokens, batch.output_tokens
        scopes, sids, parents = batch.scope_name, batch.span_id, batch.parent_span_id
        traces = traces if traces is not None else scoped_traces(tenant, batch.trace_id)
        attributes, models, request_models, providers = batch.attributes, batch.model, batch.request_model, \
            batch.provider
        starts, ends = batch.start_time_ns, batch.end_time_ns
        mem = self._traces
        rids = [a.get("gen_ai.response.id") or a.get("ai.response.id", "") for a in map(attributes.__getitem__, todo)]
        # Each trace's calls (positions in todo), then which traces can be remembered lazily.
        by_trace: dict[str, list[int]] = {}
        for p, i in enumerate(todo):
            ps = by_trace.get(traces[i])
            if ps is None:
                by_trace[traces[i]] = [p]
            else:
                ps.append(p)
        lazy: list[tuple[str, list[int]]] = []
        eager: list[int] = []
        for trace, ps in by_trace.items():
            if trace not in mem and self._alone(ps, todo, status, out, sids, rids, inferred):
                lazy.append((trace, ps))
            else:
                eager.extend(todo[p] for p in ps)
        added = 0
        kept: dict[int, tuple] = {}
        if eager:
            rid_of = dict(zip(todo, rids))
            if len(eager) > 1:  # the reference's keep order; calls of different traces never meet
                rank = {s: -quirk(s).rank for s in {scopes[i] for i in eager}}
                eager = [k[-1] for k in sorted([(status[i] in _NO_USAGE, rank[scopes[i]], -(cr[i] + cw[i] + rs[i]),
                                                 -inp[i], i) for i in eager])]
            for i in eager:
                rid = rid_of[i]
                m, rm = models[i], request_models[i]
                trace, sid, parent = traces[i], sids[i], parents[i]
                c = (sid, parent, scopes[i], starts[i], ends[i], providers[i],
                     (m, rm) if m and rm else ((m,) if m else ((rm,) if rm else ())), inp[i], out[i],
                     cr[i] + cw[i], rid, status[i] not in _NO_USAGE)
                t = mem.get(trace)
                if t is None:
                    t = mem[trace] = _Trace()
                else:
                    if type(t) is _Lazy:
                        t = mem[trace] = _materialize(t)
                    dup_of = _match(t, c)
                    if dup_of:
                        exclude(batch, i, f"duplicate_of:{dup_of}")
                        continue
                kept[i] = c
                added += sid not in t.calls
                _remember(t, c)
        if lazy:
            rows = [todo[p] for _, ps in lazy for p in ps]
            seg = _cols(rows, sids, parents, scopes, starts, ends, providers, models, request_models, inp, out,
                        cr, cw, rs) + (tuple(rids[p] for _, ps in lazy for p in ps), tuple(rows))
            at = 0
            for trace, ps in lazy:
                mem[trace] = _Lazy(seg, list(range(at, at + len(ps))))
                at += len(ps)
            added += at
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
            old = mem.popitem(last=False)[1]
            self._size -= len(old.at) if type(old) is _Lazy else len(old.calls)
        return batch

    @staticmethod
    def _alone(ps: list[int], todo: list[int], status: list[str], out: list[int], sids: list[str],
               rids: list[str], inferred) -> bool:
        """Whether calls ``ps`` of a trace the memory has not seen cannot repeat one another: each has
        usage, and their span ids, response ids and output counts are distinct (and none had its
        operation inferred: that check needs the record)."""
        if len(ps) == 1:
            i = todo[ps[0]]
            return status[i] not in _NO_USAGE and i not in inferred
        rows = [todo[p] for p in ps]
        named = [rids[p] for p in ps if rids[p]]
        return (len({out[i] for i in rows}) == len(rows) and len({sids[i] for i in rows}) == len(rows)
                and len(set(named)) == len(named) and not any(status[i] in _NO_USAGE for i in rows)
                and not (inferred and any(i in inferred for i in rows)))

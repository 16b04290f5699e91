"""Attribute: ``enrich/attribute.py``'s answers, with its memory kept per trace.

The reference learns trace tags and agent roles span by span into two maps keyed by trace and by
(trace, span); here one record per trace holds the trace's tags, each span's parent and the roles
seen, and a request's spans of one trace meet that record once in a row. The rest is the
reference's rules, with per-span checks replaced by whole-dict comparisons in C:

* a span's trace tags change nothing (the usual case after the first span of a trace) when every
  trace-level tag it carries is already known and it is not the root: one ``keys() <=`` test;
* a span needs nothing from its trace when the trace knows no tag the span lacks: the same test;
* the Langfuse JSON decoding and the user-key scrubbing are decided once per attribute shape.

Bound: ``max_traces`` traces and ``max_spans`` spans; past either, whole traces are forgotten, the
one first seen longest ago first (the reference forgets tags and roles apart).
"""

from __future__ import annotations

from collections import OrderedDict

from tokenpulse.enrich.attribute import TRACE_LEVEL, Attributor, _decode_langfuse, _refused
from tokenpulse.enrich.normalize import INFERENCE_OPERATIONS
from tokenpulse.record import UNATTRIBUTED, SpanBatch, scoped_traces

MAX_SHAPES = 4096
_TRACE_LEVEL = frozenset(TRACE_LEVEL)


class _Trace:
    __slots__ = ("tags", "parents", "roles")

    def __init__(self) -> None:
        self.tags: dict[str, str] | None = None
        self.parents: dict[str, str] = {}  # span -> its parent ("" for a root)
        self.roles: dict[str, str] = {}  # span -> its own agent role, when it has one


class TraceMemory:
    """``attribute.TraceTags``'s interface (scope, trace, add_trace), one record per trace."""

    scope = staticmethod(scoped_traces)

    def __init__(self, max_traces: int = 100_000, max_spans: int = 500_000):
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.records: OrderedDict[str, _Trace] = OrderedDict()
        self.spans = 0

    def trace(self, trace_id: str) -> dict[str, str] | None:
        t = self.records.get(trace_id)
        return t.tags if t is not None else None

    def record(self, trace_id: str) -> _Trace:
        t = self.records.get(trace_id)
        if t is None:
            t = self.records[trace_id] = _Trace()
        return t

    def add_trace(self, trace_id: str, tags: dict[str, str], is_root: bool) -> None:
        t = self.record(trace_id)
        if t.tags is None:
            t.tags = dict(tags)
        else:
            known = t.tags
            for k, v in tags.items():
                if is_root or k not in known:
                    known[k] = v
        self.forget_oldest()

    def forget_oldest(self) -> None:
        records = self.records
        while records and (len(records) > self.max_traces or self.spans > self.max_spans):
            self.spans -= len(records.popitem(last=False)[1].parents)

    def ancestor_role(self, t: _Trace, parent: str) -> str:
        parents, roles = t.parents, t.roles
        for _ in range(64):  # ancestors of one trace; bounded against cycles
            if parent not in parents:
                return ""
            role = roles.get(parent)
            if role:
                return role
            parent = parents[parent]
            if not parent:
                return ""
        return ""


class ColumnarAttributor(Attributor):
    """``Attributor`` (same settings, same answers) over a ``TraceMemory``."""

    def __init__(self, *args, memory: TraceMemory | None = None, **kw):
        super().__init__(*args, memory=memory or TraceMemory(), **kw)
        self._shapes: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._last_shape: tuple[str, ...] | None = None
        self._last: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def _shape(self, shape: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(the Langfuse-decoded fields a span of this shape may carry, its user keys)."""
        if shape is self._last_shape:  # the previous span's shape object: no hashing
            return self._last
        got = self._shapes.get(shape)
        if got is None:
            if len(self._shapes) >= MAX_SHAPES:
                self._shapes.clear()
            got = self._shapes[shape] = (tuple(d for d, _ in self._index.plan(shape) if d in self._langfuse_fields),
                                         tuple(k for k in shape if k in self._user_keys))
        self._last_shape, self._last = shape, got
        return got

    def _write(self, batch: SpanBatch, own: list[dict], keep: list[int] | None, user_keys: list[tuple[str, ...]],
               resources: dict[int, tuple[dict, dict]]) -> None:
        """The dimension columns from each span's final tags, one comprehension per column (rows a
        refusal drops are written too: ``take`` removes them after)."""
        parents, trace_ids = batch.parent_span_id, batch.trace_id
        attributes, resource_attributes = batch.attributes, batch.resource_attributes
        batch.tenant = [t.get("tenant") or UNATTRIBUTED for t in own]
        batch.feature = [t.get("feature") or UNATTRIBUTED for t in own]
        raw_users = [t.get("user_id") for t in own]
        users = {u: self._user(u) for u in set(raw_users) if u is not None}
        batch.user_id = [users[u] if u is not None else old for u, old in zip(raw_users, batch.user_id)]
        batch.session_id = [t.get("session_id", "") for t in own]
        batch.route = [t.get("route", "") for t in own]
        batch.agent_role = [t.get("agent_role", "") for t in own]
        batch.environment = [t.get("environment", "") for t in own]
        kept = range(len(own)) if keep is None else keep
        counted, operation = batch.counted, batch.operation
        for i in kept:  # calls stored unattributed: their trace is watched for a late root
            tags = own[i]
            if (("tenant" not in tags or "feature" not in tags) and parents[i] and counted[i]
                    and operation[i] in INFERENCE_OPERATIONS):
                self._unresolved[trace_ids[i]] = None
                if len(self._unresolved) > self.memory.max_traces:
                    self._unresolved.popitem(last=False)
        outcome_key = self.outcome_attribute
        if outcome_key:
            for i in kept:
                raw = attributes[i].get(outcome_key) or resource_attributes[i].get(outcome_key)
                if raw:
                    batch.outcome[i] = "success" if raw.strip().lower() in self.outcome_success else "failure"
        if self.user_id_mode != "raw":  # in place: a copy of every span's dict cost ~0.6 us per span
            scrub = self._scrub_keys
            for a, keys in zip(attributes, user_keys):
                if keys:
                    scrub(a, keys, False)
        batch.resource_attributes = [resources[id(r)][1] for r in resource_attributes]

    def __call__(self, batch: SpanBatch, tenant: str = "", scoped: list[str] | None = None,
                 shapes: list[tuple[str, ...]] | None = None) -> tuple[SpanBatch, list[str]]:
        """``shapes``: ``tuple(attrs)`` of each span, if the caller made them (Pipeline shares them)."""
        self.overridden = 0
        n = len(batch)
        if shapes is None:
            shapes = list(map(tuple, batch.attributes))
        pick, pick_shaped, shape_of, stamp = self._index.pick, self._index.pick_shaped, self._shape, self._stamp
        attributes, resource_attributes = batch.attributes, batch.resource_attributes
        resources: dict[int, tuple[dict, dict]] = {}  # id(resource attrs) -> (its tags, scrubbed copy)
        own: list[dict] = []
        user_keys: list[tuple[str, ...]] = []
        for i in range(n):
            res = resource_attributes[i]
            r = resources.get(id(res))
            if r is None:
                r = resources[id(res)] = (pick(res), self._scrub(res))
            attrs, shape = attributes[i], shapes[i]
            tags = pick_shaped(attrs, shape)
            lf_fields, users = shape_of(shape)
            user_keys.append(users)
            if lf_fields:
                _decode_langfuse(tags, lf_fields)
            own.append(stamp(tags, r[0], tenant))
        mem: TraceMemory = self.memory
        trace_ids, span_ids, parents = batch.trace_id, batch.span_id, batch.parent_span_id
        if scoped is None:
            scoped = mem.scope(tenant, trace_ids)
        # Pass 1: learn what this request tells about its traces and agent roles, one trace record
        # fetched per run of spans of that trace.
        records: list[_Trace] = []
        last_key, t = None, None
        for i in range(n):
            key = scoped[i]
            if key != last_key:
                t, last_key = mem.record(key), key
            records.append(t)
            tags, parent = own[i], parents[i]
            if tags:
                known = t.tags
                if known is None:
                    trace_tags = {d: v for d, v in tags.items() if d in _TRACE_LEVEL}
                    if trace_tags:
                        t.tags = trace_tags
                elif not parent or not known.keys() >= tags.keys() - {"agent_role"}:
                    for d, v in tags.items():
                        if d in _TRACE_LEVEL and (not parent or d not in known):
                            known[d] = v
            sid = span_ids[i]
            if sid not in t.parents:
                mem.spans += 1
            t.parents[sid] = parent
            role = tags.get("agent_role", "")
            if role:
                t.roles[sid] = role
            else:
                t.roles.pop(sid, None)
        # A root whose trace had calls stored unattributed before: they can be moved now.
        self.late = []
        if self._unresolved:
            for i in range(n):
                if not parents[i] and trace_ids[i] in self._unresolved:
                    del self._unresolved[trace_ids[i]]
                    known = records[i].tags
                    if known and (known.get("tenant") or known.get("feature")):
                        self.late.append((trace_ids[i], batch.start_time_ns[i]))
        # Pass 2: fill from the trace and the ancestors, then write the columns whole.
        rejects: list[str] = []
        keep: list[int] | None = None
        require = self.require
        for i in range(n):
            tags = own[i]
            t = records[i]
            known = t.tags
            if known and not known.keys() <= tags.keys():
                for d in TRACE_LEVEL:
                    if d not in tags and d in known:
                        tags[d] = known[d]
            if "agent_role" not in tags and parents[i]:
                role = mem.ancestor_role(t, parents[i])
                if role:
                    tags["agent_role"] = role
            if require:
                refusal = self._refusal(tags, batch.name[i])
                if refusal:
                    rejects.append(refusal)
                    keep = _refused(keep, i)
                    continue
                if keep is not None:
                    keep.append(i)
        self._write(batch, own, keep, user_keys, resources)
        mem.forget_oldest()
        if keep is not None:
            batch = batch.take(keep)
        return batch, rejects

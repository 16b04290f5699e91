"""Attribute: who and what a span's tokens were for.

Each dimension is read from an ordered list of attribute keys, resource
attributes first, then span attributes; the first non-empty value wins. The
defaults (``DEFAULT_KEYS``) cover the conventions in
docs/sources.md#genai-semconv: ``tenant.id``, ``app.feature``,
``user.id``/``enduser.id``, ``gen_ai.agent.name``, ``gen_ai.conversation.id``/
``session.id``, and the OpenLLMetry (``traceloop.association.properties.*``),
Langfuse (``langfuse.*``) and Vercel (``ai.telemetry.metadata.*``) spellings.

**Trace-level tags.** Tags set once per trace (on the root agent span, or on
every span through baggage) attribute every span of that trace:

1. At ingest, a bounded in-memory map ``trace_id -> tags`` (``TraceTags``) fills
   spans that arrive *after* a tagged span of their trace, in the same request
   or a later one. Within a request, all spans are read before any is filled,
   so order inside a request does not matter.
2. Spans that arrive *before* the tagged span (children usually end, and are
   exported, before their root) are stored with what was known then. The
   ``trace_tags`` table and the ``spans_attributed`` view (migration 0002)
   resolve them at query time: the view fills each empty or ``unattributed``
   dimension from the trace's tagged spans, preferring the root.

``agent_role`` is per span: its own ``gen_ai.agent.name`` (or the configured
keys), else the nearest ancestor's role seen so far, so an LLM call inside a
``planner`` agent span counts for ``planner``. An agent span usually ends, and
is exported, after its calls; ``spans_attributed`` then gives each span the
role of the innermost agent span of its trace whose time interval contains it
(an approximation: two agents running in parallel in one trace overlap).

**Outcome.** With ``outcome_attribute`` set, a span carrying it gets ``outcome``
``success`` (its value is one of ``outcome_success_values``) or ``failure``; the
``runs`` rollup and the cost-per-successful-run panel use it before root status.

**unattributed.** A span with no tenant or no feature gets the explicit value
``unattributed`` for it. Such a counted call's trace is remembered (bounded); when
its root arrives later and the trace has tags, the trace is listed in ``late`` so
that the rollup alerts read moves its calls (storage/late_attribution.py).
In tag-or-reject mode (``require_tags``), such spans
are refused with OTLP partial success, naming the missing tags; their valid
neighbours are stored.

**Privacy.** With ``user_id_mode = pseudonymize`` (the default) the user id is
stored as ``HMAC-SHA256(key, raw)``, 32 hex characters, and the raw value is
replaced by that pseudonym wherever it appears in the stored attribute maps
under a user key. ``raw`` stores it as is (opt-in); ``drop`` stores nothing.
The ``personal_keys`` (default ``user.email``, ``user.full_name``, ``user.name``,
``enduser.email``) are treated exactly as user keys in the attribute maps, though
they never fill ``user_id``.

**Langfuse metadata.** The Langfuse SDK writes ``langfuse.trace.metadata.*`` and
``langfuse.observation.metadata.*`` values JSON-encoded (a string arrives with its
quotes: recorded, langfuse 5.0.4); such a value is decoded before it tags a span.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from typing import Callable, Iterable

from tokenpulse.enrich.keys import KeyIndex
from tokenpulse.enrich.normalize import INFERENCE_OPERATIONS
from tokenpulse.record import UNATTRIBUTED, SpanBatch, scoped_traces

DIMENSIONS = ("tenant", "feature", "user_id", "session_id", "route", "agent_role", "environment")
TRACE_LEVEL = ("tenant", "feature", "user_id", "session_id", "route", "environment")
REQUIRED_CHOICES = ("tenant", "feature", "user_id", "session_id", "route", "agent_role", "environment")

DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "tenant": ("tenant.id", "tenant", "app.tenant", "customer.id", "traceloop.association.properties.customer_id",
               "traceloop.association.properties.tenant_id", "langfuse.trace.metadata.tenant_id",
               "langfuse.trace.metadata.tenant", "ai.telemetry.metadata.tenantId", "ai.telemetry.metadata.tenant"),
    "feature": ("app.feature", "feature", "traceloop.association.properties.feature",
                "langfuse.trace.metadata.feature", "ai.telemetry.metadata.feature", "ai.telemetry.functionId",
                "traceloop.workflow.name"),
    "user_id": ("user.id", "enduser.id", "enduser.pseudo.id", "langfuse.user.id",
                "traceloop.association.properties.user_id", "ai.telemetry.metadata.userId",
                "langfuse.trace.metadata.langfuse_user_id"),
    "session_id": ("gen_ai.conversation.id", "session.id", "langfuse.session.id",
                   "traceloop.association.properties.session_id", "ai.telemetry.metadata.sessionId"),
    "route": ("http.route", "app.route", "traceloop.association.properties.route"),
    "agent_role": ("app.agent.role", "gen_ai.agent.role", "gen_ai.agent.name"),
    "environment": ("deployment.environment.name", "deployment.environment", "environment"),
}


class TraceTags:
    """Bounded memory of tags per trace and agent role per span (oldest forgotten first).

    OrderedDicts, oldest first: evicting with ``popitem(last=False)`` is O(1), where
    ``del d[next(iter(d))]`` on a plain dict rescans its deleted slots each time (see calls.py)."""

    def __init__(self, max_traces: int = 100_000, max_spans: int = 500_000):
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.traces: OrderedDict[str, dict[str, str]] = OrderedDict()
        self.roles: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()  # (trace, span) -> (parent, role)

    scope = staticmethod(scoped_traces)

    def trace(self, trace_id: str) -> dict[str, str] | None:
        return self.traces.get(trace_id)

    def add_trace(self, trace_id: str, tags: dict[str, str], is_root: bool) -> None:
        known = self.traces.get(trace_id)
        if known is None:
            self.traces[trace_id] = dict(tags)
            if len(self.traces) > self.max_traces:
                self.traces.popitem(last=False)
        else:
            for k, v in tags.items():
                if is_root or k not in known:
                    known[k] = v

    def add_span(self, trace_id: str, span_id: str, parent: str, role: str) -> None:
        self.roles[(trace_id, span_id)] = (parent, role)
        if len(self.roles) > self.max_spans:
            self.roles.popitem(last=False)

    def ancestor_role(self, trace_id: str, parent: str) -> str:
        for _ in range(64):  # ancestors of one trace; bounded against cycles
            got = self.roles.get((trace_id, parent))
            if got is None:
                return ""
            parent, role = got
            if role:
                return role
            if not parent:
                return ""
        return ""


def _decode_langfuse(tags: dict[str, str], fields: Iterable[str]) -> None:
    """A JSON-encoded string value (Langfuse metadata: ``"\"tenant-acme\""``) -> the string, for
    each of ``fields`` that ``tags`` has."""
    for d in fields:
        v = tags.get(d)
        if v is not None and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            try:
                got = json.loads(v)
            except ValueError:
                continue
            if isinstance(got, str):
                tags[d] = got


def _refused(keep: list[int] | None, i: int) -> list[int]:
    """The rows kept once row ``i`` is refused: every row before it when it is the first refusal."""
    return list(range(i)) if keep is None else keep


def pseudonymize(key: bytes, raw: str) -> str:
    return hmac.new(key, raw.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


class Attributor:
    def __init__(self, keys: dict[str, tuple[str, ...]] | None = None, user_id_mode: str = "pseudonymize",
                 user_id_key: bytes | None = None, require: tuple[str, ...] = (), memory: TraceTags | None = None,
                 outcome_attribute: str = "", outcome_success_values: tuple[str, ...] = (),
                 personal_keys: tuple[str, ...] = ("user.email", "user.full_name", "user.name", "enduser.email")):
        self.keys = {**DEFAULT_KEYS, **(keys or {})}
        if user_id_mode not in ("pseudonymize", "raw", "drop"):
            raise ValueError(f"user_id_mode {user_id_mode!r}")
        if user_id_mode == "pseudonymize" and not user_id_key:
            raise ValueError("pseudonymize needs a key")
        self.user_id_mode = user_id_mode
        self.user_id_key = user_id_key
        self.require = tuple(require)
        self.memory = memory or TraceTags()
        self._user_keys = frozenset(self.keys["user_id"]) | frozenset(k for k in personal_keys if k)
        self._index = KeyIndex(self.keys)
        self._langfuse_fields = frozenset(d for d, ks in self.keys.items() if any(k.startswith("langfuse.") for k in ks))
        self._pseudonyms: dict[str, str] = {}
        self.outcome_attribute = outcome_attribute
        self.outcome_success = frozenset(v.strip().lower() for v in outcome_success_values)
        self.overridden = 0  # spans of the last call whose own tenant lost to the authenticated one
        self.late: list[tuple[str, int]] = []  # traces of the last call whose late root resolves earlier calls
        self._unresolved: OrderedDict[str, None] = OrderedDict()  # traces with calls stored unattributed

    @property
    def user_keys(self) -> frozenset[str]:
        """Attribute keys that carry user ids or other personal data (``personal_keys``)."""
        return self._user_keys

    def scrub_user(self) -> Callable[[str], str] | None:
        """What a raw user id becomes outside storage too (forwarded spans): its pseudonym, or ""
        (removed) in drop mode; None when user ids are kept raw."""
        return None if self.user_id_mode == "raw" else self._user

    def _user(self, raw: str) -> str:
        if not raw or self.user_id_mode == "drop":
            return ""
        if self.user_id_mode == "raw":
            return raw
        got = self._pseudonyms.get(raw)
        if got is None:
            if len(self._pseudonyms) >= 100_000:
                self._pseudonyms.clear()
            got = self._pseudonyms[raw] = pseudonymize(self.user_id_key, raw)
        return got

    def _scrub(self, attrs: dict) -> dict:
        """The attribute map with raw user ids replaced (or removed, in drop mode)."""
        if self.user_id_mode == "raw":
            return attrs
        return self._scrub_keys(attrs, tuple(self._user_keys.intersection(attrs)))

    def _scrub_keys(self, attrs: dict, keys: tuple[str, ...], copy: bool = True) -> dict:
        """``_scrub``, given the user keys ``attrs`` has; ``copy=False`` edits ``attrs`` itself (the
        fast attributor's own span dicts: one per span, made by the decoder)."""
        if not keys or self.user_id_mode == "raw":
            return attrs
        out = dict(attrs) if copy else attrs
        for k in keys:
            if self.user_id_mode == "drop":
                del out[k]
            else:
                out[k] = self._user(out[k])
        return out

    def _stamp(self, tags: dict[str, str], resource_tags: dict[str, str], tenant: str) -> dict[str, str]:
        """A span's own tags: its resource's win over its attributes', the bound tenant over both
        (counted in ``overridden`` when the span claimed another)."""
        if resource_tags:
            tags.update(resource_tags)
        if tenant:
            if tags.get("tenant", tenant) != tenant:
                self.overridden += 1
            tags["tenant"] = tenant
        return tags

    def _refusal(self, tags: dict[str, str], name: str) -> str:
        """Tag-or-reject: why span ``name`` with its final ``tags`` is refused ("" when it is not)."""
        missing = [d for d in self.require if not tags.get(d)]
        if not missing:
            return ""
        return (f"span {name!r} has no {' or '.join(missing)} "
                f"(tag-or-reject mode; set one of: {', '.join(self.keys[missing[0]][:3])}, ...)")

    def __call__(self, batch: SpanBatch, tenant: str = "", scoped: list[str] | None = None,
                 shapes: list[tuple[str, ...]] | None = None) -> tuple[SpanBatch, list[str]]:
        """``tenant``: the sender's authenticated tenant, stamped on every span (see receiver/auth.py).
        ``shapes`` (each span's attribute keys) is for the fast attributor; the reference ignores it."""
        self.overridden = 0
        n = len(batch)
        pick = self._index.pick
        resources: dict[int, tuple[dict, dict]] = {}  # id(resource attrs) -> (its tags, scrubbed copy)
        own = []
        for i in range(n):
            res = batch.resource_attributes[i]
            r = resources.get(id(res))
            if r is None:
                r = resources[id(res)] = (pick(res), self._scrub(res))
            tags = pick(batch.attributes[i])
            if tags:
                _decode_langfuse(tags, self._langfuse_fields)
            own.append(self._stamp(tags, r[0], tenant))
        mem = self.memory
        trace_ids, span_ids, parents = batch.trace_id, batch.span_id, batch.parent_span_id
        if scoped is None:  # memory keys; trace_ids stay for storage
            scoped = mem.scope(tenant, trace_ids)
        # Pass 1: learn everything this request tells about its traces and agent roles.
        for i in range(n):
            tags = own[i]
            if tags:
                trace_tags = {d: tags[d] for d in TRACE_LEVEL if d in tags}
                if trace_tags:
                    mem.add_trace(scoped[i], trace_tags, is_root=not parents[i])
            mem.add_span(scoped[i], span_ids[i], parents[i], tags.get("agent_role", ""))
        # A root whose trace had calls stored unattributed before: they can be moved now.
        self.late = []
        if self._unresolved:
            for i in range(n):
                if not parents[i] and trace_ids[i] in self._unresolved:
                    del self._unresolved[trace_ids[i]]
                    known = mem.trace(scoped[i])
                    if known and (known.get("tenant") or known.get("feature")):
                        self.late.append((trace_ids[i], batch.start_time_ns[i]))
        # Pass 2: fill.
        rejects: list[str] = []
        keep: list[int] | None = None
        for i in range(n):
            tags = own[i]
            known = mem.trace(scoped[i])
            if known:
                for d in TRACE_LEVEL:
                    if d not in tags and d in known:
                        tags[d] = known[d]
            if "agent_role" not in tags and parents[i]:
                role = mem.ancestor_role(scoped[i], parents[i])
                if role:
                    tags["agent_role"] = role
            refusal = self._refusal(tags, batch.name[i]) if self.require else ""
            if refusal:
                rejects.append(refusal)
                keep = _refused(keep, i)
                continue
            if keep is not None:
                keep.append(i)
            batch.tenant[i] = tags.get("tenant") or UNATTRIBUTED
            batch.feature[i] = tags.get("feature") or UNATTRIBUTED
            if (("tenant" not in tags or "feature" not in tags) and parents[i] and batch.counted[i]
                    and batch.operation[i] in INFERENCE_OPERATIONS):
                self._unresolved[trace_ids[i]] = None
                if len(self._unresolved) > mem.max_traces:
                    self._unresolved.popitem(last=False)
            if "user_id" in tags:
                batch.user_id[i] = self._user(tags["user_id"])
            batch.session_id[i] = tags.get("session_id", "")
            batch.route[i] = tags.get("route", "")
            batch.agent_role[i] = tags.get("agent_role", "")
            batch.environment[i] = tags.get("environment", "")
            if self.outcome_attribute:
                raw = batch.attributes[i].get(self.outcome_attribute) or \
                    batch.resource_attributes[i].get(self.outcome_attribute)
                if raw:
                    batch.outcome[i] = "success" if raw.strip().lower() in self.outcome_success else "failure"
            batch.attributes[i] = self._scrub(batch.attributes[i])
            batch.resource_attributes[i] = resources[id(batch.resource_attributes[i])][1]
        if keep is not None:
            batch = batch.take(keep)
        return batch, rejects

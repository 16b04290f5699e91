"""Normalize: ``enrich/normalize.py``'s answers, computed per attribute shape and column.

Spans of one instrumentation come in a few shapes (the same attribute keys). The rows of a batch
are grouped by shape; for each shape the key tables are resolved once (which key feeds which
field), and each field becomes one column for the group, read with ``itemgetter`` in C. The
decisions then run as comprehensions over those columns, and the ones that depend only on a few
distinct values (provider spelling, operation from the kind attributes and the span name) are
memoized per value.

A group takes this path when it has at least ``MIN_GROUP`` rows and is *clean*: every field it names has a non-empty value on every
row, every token count is a plain integer within bounds, and it carries none of the structured
dialects (Langfuse usage or cost details, LangSmith token details, the Vercel split input,
aggregated usage). Any other group is handed to the reference ``normalize_calls`` as it is: the
unusual rows get the reference's own code, so they cannot disagree.
"""

from __future__ import annotations

from operator import itemgetter

import tokenpulse.enrich.normalize as ref
from tokenpulse.enrich.quirks import provider_from_name, quirk
from tokenpulse.record import ENRICHED_FIELDS, SpanBatch

MAX_MEMO = 4096  # shapes, provider spellings, operation keys kept; all forgotten when full
# Groups smaller than this go to the reference row by row: a shape's columns cost more to set up
# than a few rows save (a request where every span has its own shape ran 2x slower columnar).
MIN_GROUP = 8
_STRUCTURED = frozenset({"ls_in", "ls_out", "langfuse_usage", "langfuse_cost", "vercel_nocache"} |
                        {"agg_" + f for f in ref.TOKEN_FIELDS})
_KIND_FIELDS = ("op", "oi_kind", "llm_type", "tl_kind", "ls_kind", "lf_type")
_TOKEN_SET = frozenset(ref.TOKEN_FIELDS)
# The columns enrichment fills: the reference's part is copied back whole (normalize runs first, so
# the others still hold their defaults on both sides).
_ENRICHED = tuple(name for name, _, _ in ENRICHED_FIELDS)


class _Shape:
    """One attribute shape: its fields' keys in priority order, and whether it may go columnar."""

    __slots__ = ("fields", "columnar")

    def __init__(self, shape: tuple[str, ...]):
        self.fields: dict[str, tuple[str, ...]] = dict(ref.INDEX.plan(shape))
        self.columnar = not _STRUCTURED.intersection(self.fields)


class Normalizer:
    """``normalize_calls`` for the service: ``normalizer(batch) -> (batch, inferred)``."""

    def __init__(self, min_group: int = MIN_GROUP) -> None:
        self.min_group = min_group  # the differential test sets 1: every group it draws goes columnar
        self._shapes: dict[tuple[str, ...], _Shape] = {}
        self._providers: dict[str, str] = {}
        self._ops: dict[tuple, str] = {}
        self._named_ops: dict[str, str] = {}

    def __call__(self, batch: SpanBatch, shapes: list[tuple[str, ...]] | None = None) -> tuple[SpanBatch, set[int]]:
        """``shapes``: ``tuple(attrs)`` of each span, if the caller made them (Pipeline shares them)."""
        if shapes is None:
            shapes = list(map(tuple, batch.attributes))
        groups: dict[tuple[str, ...], list[int]] = {}
        if shapes and shapes.count(shapes[0]) == len(shapes):  # one shape: no loop over the rows
            groups[shapes[0]] = list(range(len(shapes)))
        else:
            for i, shape in enumerate(shapes):
                rows = groups.get(shape)
                if rows is None:
                    groups[shape] = [i]
                else:
                    rows.append(i)
        inferred: set[int] = set()
        whole = len(groups) == 1
        slow: list[int] = []
        for shape, rows in groups.items():
            if len(rows) < self.min_group:  # a few spans of their own shape: per row is cheaper
                slow.extend(rows)
                continue
            plan = self._shapes.get(shape)
            if plan is None:
                if len(self._shapes) >= MAX_MEMO:
                    self._shapes.clear()
                plan = self._shapes[shape] = _Shape(shape)
            if not (plan.columnar and self._group(batch, rows, plan, whole, inferred)):
                slow.extend(rows)
        if len(slow) == len(shapes):
            return ref.normalize_calls(batch)
        if slow:
            self._reference(batch, sorted(slow), inferred)
        return batch, inferred

    @staticmethod
    def _reference(batch: SpanBatch, rows: list[int], inferred: set[int]) -> None:
        """The reference on the rows given, its columns copied back in place."""
        part, found = ref.normalize_calls(batch.take(rows))
        for name in _ENRICHED:
            col, got = getattr(batch, name), getattr(part, name)
            for i, v in zip(rows, got):
                col[i] = v
        inferred.update(rows[j] for j in found)

    def _providers_of(self, raws: list[str]) -> list[str]:
        memo = self._providers
        if len(memo) >= MAX_MEMO:
            memo.clear()
        for raw in set(raws).difference(memo):
            memo[raw] = ref.normalize_provider(raw)
        return list(map(memo.__getitem__, raws))

    def _operations_of(self, keys: list[tuple]) -> list[str]:
        """keys: (the kind attributes' values in _KIND_FIELDS order, span name) per row."""
        memo = self._ops
        if len(memo) >= MAX_MEMO:
            memo.clear()
        for key in set(keys).difference(memo):
            f = {field: v for field, v in zip(_KIND_FIELDS, key) if v}
            memo[key] = ref.operation_of(f, key[-1], 0, False)
        return list(map(memo.__getitem__, keys))

    def _named_operations(self, named: list[str]) -> list[str]:
        """The operation of each row whose operation attribute is set (``operation_of``'s first rule),
        computed once per distinct value."""
        memo = self._named_ops
        if len(memo) >= MAX_MEMO:
            memo.clear()
        for value in set(named).difference(memo):
            memo[value] = ref.operation_of({"op": value}, "", 0, False)
        return list(map(memo.__getitem__, named))

    def _group(self, batch: SpanBatch, rows: list[int], plan: _Shape, whole: bool, inferred: set[int]) -> bool:
        """Normalize one clean group columnar; False (nothing written) when it is not clean."""
        attrs = [batch.attributes[i] for i in rows] if not whole else batch.attributes
        n = len(rows)
        cols: dict[str, list[str]] = {}
        for field, keys in plan.fields.items():
            col = list(map(itemgetter(keys[0]), attrs))
            for key in keys[1:]:
                col = [a or b for a, b in zip(col, map(itemgetter(key), attrs))]
            if "" in col:
                return False  # a row where this field is absent: the reference decides per row
            cols[field] = col
        tokens: dict[str, list[int]] = {}
        for field in _TOKEN_SET.intersection(cols):
            try:
                values = list(map(int, cols[field]))
            except ValueError:
                return False
            if min(values) < 0 or max(values) > ref.MAX_TOKENS:
                return False
            tokens[field] = values
        names = [batch.name[i] for i in rows] if not whole else batch.name
        scopes = [batch.scope_name[i] for i in rows] if not whole else batch.scope_name
        kinds = [batch.kind[i] for i in rows] if not whole else batch.kind
        codes = [batch.status_code[i] for i in rows] if not whole else batch.status_code
        blank = [""] * n
        if not cols:  # no GenAI attribute at all (HTTP, DB, ... spans)
            ops = self._operations_of([("",) * len(_KIND_FIELDS) + (name,) for name in names])
            status = ["missing" if op in ref.INFERENCE_OPERATIONS else "none" for op in ops]
            errors = ["" if op in ref.INFERENCE_OPERATIONS else ("_OTHER" if code == 2 else "")
                      for op, code in zip(ops, codes)]
            self._write(batch, rows, whole, {"operation": ops, "usage_status": status, "error_type": errors})
            return True
        provider = (self._providers_of(cols["provider"]) if "provider" in cols else
                    [provider_from_name(s, name) for s, name in zip(scopes, names)])
        model = cols.get("model", blank)
        present = bool(tokens)
        zero = [0] * n
        inp, out, cr, cw, rs, total = (tokens.get(f, zero) for f in ref.TOKEN_FIELDS)
        if present and (any(cr) or any(cw)):  # Anthropic's cache-exclusive input passed through (reference)
            # Per row: 2 when the cache counts are always added back (the scope's quirk), 1 when only if
            # they exceed the input (an Anthropic model), 0 never; decided per distinct (scope, provider, model).
            vercel = "vercel_provider" in cols
            rule = {k: 2 if quirk(k[0]).cache_exclusive_input else
                    (int(ref._anthropic_family(k[1], k[2])) * (2 if vercel else 1))
                    for k in set(zip(scopes, provider, model))}
            how = list(map(rule.__getitem__, zip(scopes, provider, model)))
            inp = [i + r + w if (r or w) and (h == 2 or (h == 1 and r + w > i)) else i
                   for i, r, w, h in zip(inp, cr, cw, how)]
        if present and (total is zero or not all(total)):
            total = [t or i + o for t, i, o in zip(total, inp, out)]
        if "op" in cols:  # named on every row (a clean group): the other kinds and the name never matter
            ops = self._named_operations(cols["op"])
        else:
            ops = self._operations_of(list(zip(*[cols.get(f, blank) for f in _KIND_FIELDS], names)))
        if present and "model" in cols:
            chat_if_unnamed = [True] * n
        else:
            chat_if_unnamed = [k == 3 for k in kinds] if present else [False] * n
        if "" in ops:
            for j, (op, infer) in enumerate(zip(ops, chat_if_unnamed)):
                if not op and infer:  # usage and no operation: a CLIENT span, or one naming its model
                    ops[j] = "chat"
                    inferred.add(rows[j])
        if present:
            status = ["inconsistent" if r + w > i or s > o else "ok" for i, o, r, w, s in zip(inp, out, cr, cw, rs)]
            pairs = list(zip(names, ops))
            why = {pair: ref.exclusion_reason(*pair) for pair in set(pairs)}  # few distinct (name, operation)
            reasons = list(map(why.__getitem__, pairs)) if any(why.values()) else []
        else:
            status = ["missing" if op in ref.INFERENCE_OPERATIONS else "none" for op in ops]
            reasons = []
        out_cols = {"operation": ops, "provider": provider, "model": model,
                    "request_model": cols.get("request_model", blank), "usage_status": status,
                    "input_tokens": inp, "output_tokens": out, "cache_read_tokens": cr, "cache_write_tokens": cw,
                    "reasoning_tokens": rs, "total_tokens": total}
        if "reported_cost" in cols:
            out_cols["reported_cost_usd"] = [ref.parse_cost(c) for c in cols["reported_cost"]]
        tl_kind = cols.get("tl_kind")
        entity = cols.get("tl_entity", blank)
        agent = cols.get("agent_name", blank)
        tool = cols.get("tool_name", blank)
        if tl_kind is not None:
            agent = [a or (e if k == "agent" else "") for a, e, k in zip(agent, entity, tl_kind)]
            tool = [t or (e if k == "tool" else "") for t, e, k in zip(tool, entity, tl_kind)]
        out_cols.update({"agent_name": agent, "agent_id": cols.get("agent_id", blank), "tool_name": tool,
                         "tool_call_id": cols.get("tool_call_id", blank),
                         "error_type": cols["error"] if "error" in cols else
                         ["_OTHER" if code == 2 else "" for code in codes]})
        self._write(batch, rows, whole, out_cols)
        for j, reason in enumerate(reasons):
            if reason:
                ref.exclude(batch, rows[j], reason)
        return True

    @staticmethod
    def _write(batch: SpanBatch, rows: list[int], whole: bool, columns: dict[str, list]) -> None:
        for name, values in columns.items():
            if whole:
                setattr(batch, name, list(values))  # a copy: one list may feed several columns
            else:
                col = getattr(batch, name)
                for i, v in zip(rows, values):
                    col[i] = v


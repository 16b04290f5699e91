"""Lean rows: an attribute a typed column holds unchanged leaves the stored map (storage/schema.py),
decided with whole-column Arrow operations; where enrichment changed a value, the key stays."""

from __future__ import annotations

from tokenpulse.record import SpanBatch
from tokenpulse.storage.schema import LEAN_KEYS, batch_to_arrow


def _batch(rows: list[dict]) -> SpanBatch:
    b = SpanBatch()
    for i, r in enumerate(rows):
        b.trace_id.append(f"{i:032x}")
        b.span_id.append(f"{i + 1:016x}")
        b.parent_span_id.append("")
        b.name.append("chat")
        b.kind.append(3)
        b.service.append("svc")
        b.scope_name.append("")
        b.scope_version.append("")
        b.start_time_ns.append(10**18)
        b.end_time_ns.append(10**18 + 1)
        b.status_code.append(0)
        b.status_message.append("")
        b.resource_attributes.append({"service.name": "svc"})
        b.attributes.append(r.pop("attrs"))
    b.fill_defaults()
    for i, r in enumerate(rows):
        for k, v in r.items():
            getattr(b, k)[i] = v
    return b


def test_keys_a_typed_column_repeats_leave_the_map_and_changed_ones_stay():
    b = _batch([
        {"attrs": {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "OpenAI",
                   "gen_ai.usage.input_tokens": "100", "gen_ai.usage.output_tokens": "7", "tenant.id": "acme",
                   "server.address": "api.openai.com", "user.id": "p5e1d0"},
         "operation": "chat", "provider": "openai", "input_tokens": 100, "output_tokens": 7, "tenant": "acme",
         "user_id": "p5e1d0"},
        # an aggregate: its counts zeroed in the columns, kept as reported in the map
        {"attrs": {"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": "900"},
         "operation": "invoke_agent", "input_tokens": 0, "counted": 0},
        {"attrs": {}},
        # cache added back to Anthropic's input: the column differs from what was reported
        {"attrs": {"gen_ai.usage.input_tokens": "50", "gen_ai.usage.cache_read.input_tokens": "30"},
         "input_tokens": 80, "cache_read_tokens": 30},
    ])
    stored = batch_to_arrow(b).column("attributes").to_pylist()
    assert [dict(m) for m in stored] == [
        {"gen_ai.provider.name": "OpenAI", "server.address": "api.openai.com"},  # normalized: kept as sent
        {"gen_ai.usage.input_tokens": "900"},
        {},
        {"gen_ai.usage.input_tokens": "50"},
    ]
    # the batch itself is untouched (forwarding re-encodes from it)
    assert b.attributes[0]["tenant.id"] == "acme" and len(b.attributes[0]) == 7


def test_every_lean_key_names_a_column_of_the_table():
    from tokenpulse.storage.schema import SPAN_COLUMNS

    columns = {c[0] for c in SPAN_COLUMNS}
    assert all(column in columns for _, column in LEAN_KEYS)


def test_lean_rows_agree_with_the_plain_rule_on_generated_batches():
    """Differential: the columnar lean step against the rule written per row, on generated rows
    (keys from the lean list and others, values equal to the column or not, empty maps)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    lean = dict(LEAN_KEYS)
    text_cols = sorted({c for c in lean.values() if not c.endswith("_tokens")})
    int_cols = sorted({c for c in lean.values() if c.endswith("_tokens")})
    value = st.sampled_from(["", "a", "acme", "chat", "7", "100", "x y"])
    row = st.fixed_dictionaries({
        "attrs": st.dictionaries(st.sampled_from([k for k, _ in LEAN_KEYS] + ["other", "server.address"]), value,
                                 max_size=8),
        **{c: value for c in text_cols}, **{c: st.sampled_from([0, 7, 100]) for c in int_cols}})

    @settings(max_examples=150, deadline=None)
    @given(st.lists(row, max_size=12))
    def check(rows):
        expected = [{k: v for k, v in r["attrs"].items() if k not in lean or str(r[lean[k]]) != v} for r in rows]
        got = batch_to_arrow(_batch([dict(r, attrs=dict(r["attrs"])) for r in rows])).column("attributes")
        assert [dict(m) for m in got.to_pylist()] == expected

    check()

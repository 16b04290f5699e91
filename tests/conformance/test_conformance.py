"""Conformance: spans recorded from the real instrumentation libraries (``record.py``), replayed into a
real tokenpulse over gRPC (and OTLP/HTTP for Langfuse's own exporter), counted exactly once.

Per library and per served call: exactly one counted inference span covers the call (none when the
library reported nothing), with the tokens the fake provider served in semconv meaning, or, where
the library itself lost or invented numbers, what a receiver can know (``corpus.LIBRARY_GAPS``);
its cost is genai-prices' price computed here, independently. No other counted span carries tokens.
"""

from __future__ import annotations

import pytest

from tests.conftest import sql
from tests.conformance import corpus
from tests.conformance.replay import STORED_COLUMNS, covers, per_call, replay, stored_spans, stray


def replay_library(make_service, library: str, **settings):
    svc = make_service(retention_days=3650, **settings)  # the recordings keep their original timestamps
    rec = corpus.load(library)
    assert replay(rec, svc.grpc.port, svc.http.port) == 0
    spans = stored_spans(sql(svc, f"SELECT {', '.join(STORED_COLUMNS)} FROM spans"))
    return svc, rec, spans


def test_the_corpus_covers_every_library_the_issue_names():
    assert set(corpus.libraries()) >= {
        "otel-openai-v2", "otel-openai-v2-latest", "openllmetry", "traceloop-sdk", "openinference", "openlit",
        "langfuse", "langfuse-grpc", "pydantic-ai", "langchain", "two-instrumentations"}
    for lib in corpus.libraries():
        rec = corpus.load(lib)
        assert rec.manifest["packages"] and rec.requests, lib
        assert any(corpus.served(c) for c in rec.calls), lib


@pytest.mark.parametrize("library", corpus.libraries())
def test_every_call_is_counted_once_with_the_served_usage(make_service, library):
    svc, rec, spans = replay_library(make_service, library)
    results = per_call(rec, spans)
    problems = []
    for r in results:
        name = r.call["call"]
        if r.expected is None:
            if len(r.counted) > 1 or r.stored.input or r.stored.output:
                problems.append(f"{name}: nothing to count, stored {len(r.counted)} spans {r.stored}")
            continue
        if len(r.counted) != 1:
            problems.append(f"{name}: {len(r.counted)} counted spans "
                            f"{[(s.name, s.scope, s.tokens) for s in r.counted]}; others: "
                            f"{[(s.name, s.excluded_reason) for s in spans if covers(s, r.call) and not s.counted]}")
            continue
        got = r.counted[0]
        want = r.expected
        if got.tokens.astuple()[:5] != want.astuple()[:5]:
            problems.append(f"{name}: stored {got.tokens} from {got.scope} {got.name!r}, expected {want}"
                            + (f" ({r.gap.bug})" if r.gap else ""))
        elif got.cost is None or abs(got.cost - r.expected_cost) > 1e-12 + 1e-9 * r.expected_cost:
            problems.append(f"{name}: cost {got.cost} ({got.price_status}), genai-prices says {r.expected_cost}")
    for s in stray(spans, results):
        problems.append(f"counted span outside any call: {s.name!r} {s.scope} {s.tokens} {s.operation}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("library", corpus.libraries())
def test_every_counted_call_is_attributed_to_the_scenarios_tenant(make_service, library):
    """Each scenario tags its trace the library's way (a tagged root span; OpenLLMetry's association
    properties; Langfuse's propagated metadata, JSON-encoded): every counted call resolves to it."""
    svc, rec, spans = replay_library(make_service, library)
    rows = sql(svc, "SELECT name, tenant, feature FROM spans_attributed WHERE counted = 1 AND operation IN "
                    "('chat', 'embeddings') ORDER BY start_time")
    assert rows, library
    assert {(r[1], r[2]) for r in rows} == {("tenant-acme", "conformance")}, rows


def test_content_is_not_stored_unless_captured_and_then_capped(make_service):
    from tokenpulse.enrich.content import is_content

    svc, rec, spans = replay_library(make_service, "openinference")
    keys = {k for (k,) in sql(svc, "SELECT DISTINCT arrayJoin(mapKeys(attributes)) FROM spans")}
    assert keys and not [k for k in keys if is_content(k)]
    assert "llm.token_count.prompt" in keys  # usage stays
    svc2, _, _ = replay_library(make_service, "openllmetry", capture_content=True, content_max_chars=16)
    got = sql(svc2, "SELECT max(length(attributes['gen_ai.input.messages'])), "
                    "countIf(attributes['gen_ai.input.messages'] != '') FROM spans")
    assert got[0][0] == 16 and int(got[0][1]) > 5


def test_late_attribution_reaches_the_rollup_that_budgets_and_alerts_read(make_service):
    """The recorded children are exported before their tagged root (BatchSpanProcessor: they end
    first), so they are stored unattributed; once the root is stored, usage_minute (budgets, tenant
    outliers, rate rules) must show the spend where spans_attributed does."""
    import time

    svc, rec, spans = replay_library(make_service, "openllmetry")
    assert int(sql(svc, "SELECT countIf(tenant = 'unattributed') FROM spans WHERE counted = 1 AND operation = 'chat'"
                   )[0][0]) > 0, "the recording no longer has children stored before their root"
    view = sql(svc, "SELECT tenant, feature, count(), sum(input_tokens), round(sum(ifNull(cost_usd, 0)), 9) "
                    "FROM spans_attributed WHERE counted = 1 AND operation IN ('chat', 'embeddings') "
                    "GROUP BY tenant, feature ORDER BY tenant")
    assert [r[:2] for r in view] == [["tenant-acme", "conformance"]]
    rollup_sql = ("SELECT tenant, feature, sum(calls), sum(input_tokens), round(sum(cost_usd), 9) FROM usage_minute "
                  "GROUP BY tenant, feature HAVING sum(calls) != 0 OR sum(input_tokens) != 0 ORDER BY tenant")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sql(svc, rollup_sql) != view:
        time.sleep(0.2)
    assert sql(svc, rollup_sql) == view
    budget = sql(svc, "SELECT sum(cost_usd) FROM usage_minute WHERE tenant = 'tenant-acme'")[0][0]
    assert float(budget) == pytest.approx(float(view[0][4]))

"""The raw-bytes limit: how fast this machine's chDB stores the benchmark's own requests when
nothing but ClickHouse touches them.

The serialized ExportTraceServiceRequests that bench/ingest.py sends (same template, fresh trace
ids) are inserted as they are, with ClickHouse's ``ProtobufSingle`` input format
(bench/otlp_min.proto), into a Null table. One materialized view flattens them into a MergeTree
table of spans: ids, name, service, start and end, input and output tokens, tenant and the
attribute map. No Python looks at a span. Several requests go into one insert when tokenpulse
wrote that many per insert in the same run (protobuf concatenation merges repeated fields, so
joined bytes are one request).

bench/ingest.py runs this in a separate process after each case, when the service has stopped,
and prints tokenpulse's figure as a share of it: the ratio survives a noisy machine better than
either figure alone. The limit is an upper bound, not a target: it computes no cost, counts
nothing once, attributes nothing and feeds no rollup.

    python bench/rawbytes.py --batch 5000 --per-insert 2 --seconds 10
    python bench/rawbytes.py --batch 5000 --per-insert 2 --enrich-sql   # + stateless enrichment as SQL

``--enrich-sql`` measures one option for the rest of issue 20 (enrichment as SQL inside
ClickHouse): the view also does the stateless half of enrichment over the same requests,
written from tokenpulse's own tables: each normalized field and dimension as the first non-empty
value over its keys in priority order (enrich/normalize.py, enrich/attribute.py DEFAULT_KEYS; the
resource's tags first), provider aliases, Anthropic's input with its cache added, the cost from a
price dictionary of the bench models (enrich/price.py's entries), the user id pseudonymized with a
keyed hash (in its column and in the map), and the lean attribute map. It does not count calls
once or inherit trace tags (those need state across requests) and handles no dialect structure
(Langfuse, LangSmith, Vercel).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "otlp_min.proto")
_KV = "Array(Tuple(key String, value Tuple(string_value String, int_value Int64)))"
_SPAN = (f"Tuple(trace_id String, span_id String, parent_span_id String, name String, kind Int32, "
         f"start_time_unix_nano UInt64, end_time_unix_nano UInt64, attributes {_KV}, status Tuple(code Int32))")
DDL = (
    f"CREATE TABLE raw_in (resource_spans Array(Tuple(resource Tuple(attributes {_KV}), "
    f"scope_spans Array(Tuple(scope Tuple(name String), spans Array({_SPAN})))))) ENGINE = Null",
    "CREATE TABLE raw_spans (trace_id String, span_id String, name String, service String, start DateTime64(9), "
    "end_ns UInt64, input_tokens UInt64, output_tokens UInt64, tenant String, attributes Map(String, String)) "
    "ENGINE = MergeTree ORDER BY start",
    """CREATE MATERIALIZED VIEW raw_view TO raw_spans AS
       WITH arrayJoin(resource_spans) AS rs, arrayJoin(rs.scope_spans) AS ss, arrayJoin(ss.spans) AS sp,
            mapFromArrays(sp.attributes.key, arrayMap(v -> if(v.string_value != '', v.string_value,
                                                                toString(v.int_value)), sp.attributes.value)) AS a
       SELECT hex(sp.trace_id) AS trace_id, hex(sp.span_id) AS span_id, sp.name AS name,
              arrayFirst(kv -> kv.key = 'service.name', rs.resource.attributes).value.string_value AS service,
              fromUnixTimestamp64Nano(toInt64(sp.start_time_unix_nano)) AS start, sp.end_time_unix_nano AS end_ns,
              toUInt64OrZero(a['gen_ai.usage.input_tokens']) AS input_tokens,
              toUInt64OrZero(a['gen_ai.usage.output_tokens']) AS output_tokens,
              a['tenant.id'] AS tenant, a AS attributes
       FROM raw_in""",
)


def _first(keys, m: str = "a") -> str:
    """The first non-empty value of ``keys`` in map ``m`` ('' when none)."""
    return "coalesce(" + ", ".join(f"nullIf({m}['{k}'], '')" for k in keys) + ", '')"


def enrich_ddl() -> tuple[str, ...]:
    """The raw-bytes tables with the stateless half of enrichment in the view (``--enrich-sql``)."""
    from datetime import datetime, timezone

    import tokenpulse.enrich.normalize as n
    from spans import MODELS
    from tokenpulse.enrich.attribute import DEFAULT_KEYS
    from tokenpulse.enrich.price import PriceTable
    from tokenpulse.storage.schema import LEAN_KEYS

    table, now, prices = PriceTable(), datetime.now(timezone.utc), []
    for model in MODELS:
        provider = "anthropic" if "claude" in model else "google" if "gemini" in model else "openai"
        e = table.lookup(provider, model, now) or table.lookup("openai", model, now)
        i, o = e.input.base, e.output.base  # base prices: tiers by context length are not modelled here
        cr, cw = (e.cache_read.base if e.cache_read else i), (e.cache_write.base if e.cache_write else i)
        # The bench spans name openai for every model: each model is priced under both providers.
        prices += [f"('{p}', '{model}', {i}, {o}, {cr}, {cw})" for p in {provider, "openai"}]
    aliases = n.PROVIDER_ALIASES
    # The lean rule per key: an attribute leaves the map when its column (as this view computes it)
    # holds the same text; columns this view does not compute keep their keys.
    computed = {"operation": "operation", "provider": "provider", "model": "model", "request_model": "request_model",
                "input_tokens": "toString(inp)", "output_tokens": "toString(outp)",
                "cache_read_tokens": "toString(cr)", "cache_write_tokens": "toString(cw)", "tenant": "tenant",
                "feature": "feature", "user_id": "user_id", "session_id": "session_id"}
    lean = " OR ".join(f"(k = '{key}' AND v = {computed[column]})" for key, column in LEAN_KEYS if column in computed)
    def pseudonym(expr: str) -> str:  # a keyed hash, as attribute.py pseudonymizes (HMAC there)
        return f"hex(sipHash128Keyed((toUInt64(1), toUInt64(2)), {expr}))"

    dims = {d: f"if({_first(keys, 'r')} != '', {_first(keys, 'r')}, {_first(keys)})" for d, keys in DEFAULT_KEYS.items()}
    return (
        DDL[0],
        "CREATE TABLE prices (provider String, model String, input Float64, output Float64, cache_read Float64, "
        "cache_write Float64) ENGINE = MergeTree ORDER BY (provider, model)",
        "INSERT INTO prices VALUES " + ", ".join(prices),
        "CREATE DICTIONARY price_dict (provider String, model String, input Float64, output Float64, "
        "cache_read Float64, cache_write Float64) PRIMARY KEY provider, model "
        "SOURCE(CLICKHOUSE(TABLE 'prices')) LAYOUT(COMPLEX_KEY_HASHED()) LIFETIME(0)",
        "CREATE TABLE raw_spans (trace_id String, span_id String, name String, service String, start DateTime64(9), "
        "end_ns UInt64, operation LowCardinality(String), provider LowCardinality(String), "
        "model LowCardinality(String), request_model LowCardinality(String), input_tokens UInt64, "
        "output_tokens UInt64, cache_read_tokens UInt64, cache_write_tokens UInt64, cost_usd Float64, "
        "tenant LowCardinality(String), feature LowCardinality(String), user_id String, session_id String, "
        "route LowCardinality(String), agent_role LowCardinality(String), environment LowCardinality(String), "
        "attributes Map(String, String)) ENGINE = MergeTree ORDER BY start",
        f"""CREATE MATERIALIZED VIEW raw_view TO raw_spans AS
       WITH arrayJoin(resource_spans) AS rs, arrayJoin(rs.scope_spans) AS ss, arrayJoin(ss.spans) AS sp,
            mapFromArrays(sp.attributes.key, arrayMap(v -> if(v.string_value != '', v.string_value,
                                                                toString(v.int_value)), sp.attributes.value)) AS a,
            mapFromArrays(rs.resource.attributes.key, arrayMap(v -> v.string_value, rs.resource.attributes.value)) AS r,
            lower({_first(n.PROVIDER_KEYS)}) AS p0,
            transform(p0, {list(aliases)}, {list(aliases.values())}, p0) AS prov,
            {_first(n.MODEL_KEYS)} AS mdl,
            toUInt64OrZero({_first(n.INPUT_KEYS)}) AS inp0,
            toUInt64OrZero({_first(n.CACHE_READ_KEYS)}) AS cr,
            toUInt64OrZero({_first(n.CACHE_WRITE_KEYS)}) AS cw,
            if(prov = 'anthropic', inp0 + cr + cw, inp0) AS inp,
            toUInt64OrZero({_first(n.OUTPUT_KEYS)}) AS outp,
            dictGetOrDefault('price_dict', ('input', 'output', 'cache_read', 'cache_write'), (prov, mdl),
                             (nan, nan, nan, nan)) AS pr
       SELECT hex(sp.trace_id) AS trace_id, hex(sp.span_id) AS span_id, sp.name AS name,
              if(r['service.name'] != '', r['service.name'], 'unknown_service') AS service,
              fromUnixTimestamp64Nano(toInt64(sp.start_time_unix_nano)) AS start, sp.end_time_unix_nano AS end_ns,
              {_first(("gen_ai.operation.name", "llm.request.type"))} AS operation, prov AS provider, mdl AS model,
              {_first(n.REQUEST_MODEL_KEYS)} AS request_model, inp AS input_tokens, outp AS output_tokens,
              cr AS cache_read_tokens, cw AS cache_write_tokens,
              ((inp - cr - cw) * pr.1 + outp * pr.2 + cr * pr.3 + cw * pr.4) / 1e6 AS cost_usd,
              if({dims['tenant']} != '', {dims['tenant']}, 'unattributed') AS tenant,
              if({dims['feature']} != '', {dims['feature']}, 'unattributed') AS feature,
              {pseudonym(dims['user_id'])} AS user_id, {dims['session_id']} AS session_id,
              {dims['route']} AS route, {dims['agent_role']} AS agent_role, {dims['environment']} AS environment,
              mapFilter((k, v) -> NOT ({lean}),
                        mapApply((k, v) -> (k, if(k IN {list(DEFAULT_KEYS["user_id"])}, {pseudonym("v")}, v)), a))
                  AS attributes
       FROM raw_in""",
    )


def measure(batch: int, per_insert: int, seconds: float, enrich_sql: bool = False) -> dict:
    """Insert fresh copies of the benchmark's ``batch``-span request, ``per_insert`` per insert, for
    ``seconds``; spans/s stored and this process's CPU microseconds per span."""
    from chdb import session

    from ingest import Template

    tmp = tempfile.mkdtemp(prefix="tp-raw-")
    try:
        s = session.Session(os.path.join(tmp, "db"))
        for ddl in (enrich_ddl() if enrich_sql else DDL):
            s.query(ddl)
        template = Template(batch)
        path = os.path.join(tmp, "request.bin")
        insert = (f"INSERT INTO raw_in SELECT * FROM file('{path}', 'ProtobufSingle') "
                  f"SETTINGS format_schema = '{PROTO}:ExportTraceServiceRequest'")
        sent = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            body = b"".join(template.next() for _ in range(per_insert))  # not timed apart: cheap next to the insert
            with open(path, "wb") as fh:
                fh.write(body)
            s.query(insert)
            sent += batch * per_insert
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stored = int(s.query("SELECT count() FROM raw_spans", "CSV").bytes().strip())
        s.close()
        if stored != sent:
            raise SystemExit(f"raw-bytes path stored {stored} of {sent} spans")
        return {"spans_per_s": stored / elapsed, "cpu_us": 1e6 * cpu / max(stored, 1), "per_insert": per_insert}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=5000, help="spans per request")
    p.add_argument("--per-insert", type=int, default=1, help="requests joined into one insert")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="print one JSON object (bench/ingest.py reads it)")
    p.add_argument("--enrich-sql", action="store_true", help="the view also does stateless enrichment in SQL")
    args = p.parse_args()
    r = measure(args.batch, max(1, args.per_insert), args.seconds, args.enrich_sql)
    if args.json:
        print(json.dumps(r))
    else:
        what = "raw bytes + enrichment as SQL" if args.enrich_sql else "raw-bytes limit"
        print(f"{what}, {args.batch}-span requests, {r['per_insert']} per insert: "
              f"{r['spans_per_s']:,.0f} spans/s, {r['cpu_us']:.1f} us CPU per span")


if __name__ == "__main__":
    main()

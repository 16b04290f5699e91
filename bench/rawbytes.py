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


def measure(batch: int, per_insert: int, seconds: float) -> dict:
    """Insert fresh copies of the benchmark's ``batch``-span request, ``per_insert`` per insert, for
    ``seconds``; spans/s stored and this process's CPU microseconds per span."""
    from chdb import session

    from ingest import Template

    tmp = tempfile.mkdtemp(prefix="tp-raw-")
    try:
        s = session.Session(os.path.join(tmp, "db"))
        for ddl in DDL:
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
    args = p.parse_args()
    r = measure(args.batch, max(1, args.per_insert), args.seconds)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"raw-bytes limit, {args.batch}-span requests, {r['per_insert']} per insert: "
              f"{r['spans_per_s']:,.0f} spans/s, {r['cpu_us']:.1f} us CPU per span")


if __name__ == "__main__":
    main()

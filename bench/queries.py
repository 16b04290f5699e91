"""Panel latency benchmark: every panel over 1 h, 24 h and 7 d windows on 10M spans.

Data: realistic agent runs generated in SQL (INSERT ... SELECT FROM numbers())
straight into the `spans` table of a fresh embedded database, so the rollup
and attribution views (usage_minute, runs, trace_tags, agent_spans) fill as
they do at ingest. Loading 10M spans through the receiver would take ~15 min
at the measured ingest rate; the panels only see the tables either way.

Each run: one agent root span (planner, worker or critic), 3-8 LLM calls whose
input grows turn by turn, 0-3 tool calls; 200 tenants, 30 features, 10 models
(one unknown to the price table), spread evenly over the last 7 days.

    python bench/queries.py                 # 10M spans
    python bench/queries.py --spans 1000000 --runs 5
    python bench/queries.py --no-rollups    # the panels computed live only

After loading, the scheduled rollups (storage/rollups.py) are brought up to date as the
evaluator would (every hour that ended 15 min ago or more), and that backfill is timed too.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tokenpulse.queries import bind, load_panels  # noqa: E402
from tokenpulse.storage.embedded import EmbeddedBackend  # noqa: E402
from tokenpulse.storage.migrate import migrate  # noqa: E402

SLOTS = 12  # per run: slot 0 root, 1-8 LLM calls, 9-11 tools
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "claude-haiku-4-5", "gemini-2.5-pro", "gemini-2.5-flash",
          "o3", "gpt-4.1", "mistral-large-latest", "in-house-llm"]
# $ per 1M input / output tokens; in-house-llm is unknown (cost NULL).
PRICES = {"gpt-4o": (2.5, 10), "gpt-4o-mini": (0.15, 0.6), "claude-sonnet-4-5": (3, 15), "claude-haiku-4-5": (1, 5),
          "gemini-2.5-pro": (1.25, 10), "gemini-2.5-flash": (0.3, 2.5), "o3": (2, 8), "gpt-4.1": (2, 8),
          "mistral-large-latest": (2, 6)}


def generate_sql(db: str, first_slot: int, slots: int, total_slots: int) -> str:
    models = "[" + ",".join(f"'{m}'" for m in MODELS) + "]"
    in_prices = "[" + ",".join(str(PRICES.get(m, (0, 0))[0]) for m in MODELS) + "]"
    out_prices = "[" + ",".join(str(PRICES.get(m, (0, 0))[1]) for m in MODELS) + "]"
    return f"""
INSERT INTO {db}.spans (trace_id, span_id, parent_span_id, name, kind, service, scope_name, scope_version,
    start_time, end_time, status_code, status_message, operation, provider, model, request_model,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens,
    usage_status, cost_usd, input_cost_usd, cache_read_cost_usd, cache_write_cost_usd, output_cost_usd,
    reasoning_cost_usd, reported_cost_usd, price_status, price_id, counted, excluded_reason, feature, tenant,
    user_id, agent_role, agent_name, agent_id, session_id, route, environment, tool_name, tool_call_id,
    error_type, resource_attributes, attributes)
SETTINGS max_partitions_per_insert_block = 0
SELECT
    lower(hex(reinterpretAsString(cityHash64(run)))) || lower(hex(reinterpretAsString(cityHash64(run, 1)))),
    lower(hex(reinterpretAsString(cityHash64(n)))),
    if(slot = 0, '', lower(hex(reinterpretAsString(cityHash64(run * {SLOTS}))))),
    multiIf(slot = 0, 'invoke_agent ' || role, slot <= 8, 'chat ' || model, 'execute_tool ' || tool),
    if(slot = 0 OR slot > 8, 'internal', 'client'), 'agent-' || toString(run % 7), 'bench', '1',
    start, start + toIntervalMillisecond(if(slot = 0, 30000, 1500)),
    if(slot = 0 AND run % 23 = 0, 'error', 'unset'), '',
    multiIf(slot = 0, 'invoke_agent', slot <= 8, 'chat', 'execute_tool'),
    if(slot BETWEEN 1 AND 8, multiIf(model LIKE 'claude%', 'anthropic', model LIKE 'gemini%', 'gcp.gemini',
                                     model LIKE 'mistral%', 'mistral_ai', 'openai'), ''),
    if(slot BETWEEN 1 AND 8, model, ''), if(slot BETWEEN 1 AND 8, model, ''),
    inp, outp, cache_read, 0, 0, inp + outp,
    if(slot BETWEEN 1 AND 8, 'ok', 'none'),
    if(priced, (inp * in_price + outp * out_price) / 1e6, NULL),
    if(priced, (inp - cache_read) * in_price / 1e6, NULL), if(priced, cache_read * in_price / 1e6, NULL),
    if(priced, 0, NULL), if(priced, outp * out_price / 1e6, NULL), if(priced, 0, NULL), NULL,
    multiIf(slot NOT BETWEEN 1 AND 8, '', priced, 'priced', 'unknown_model'), if(priced, 'bench:' || model, ''),
    1, '',
    'feature-' || toString(run % 30), 'tenant-' || toString(run % 200),
    lower(hex(reinterpretAsString(cityHash64(run % 20000)))),
    role, if(slot = 0, role, ''), '', 'session-' || toString(run % 50000), '/agent', 'bench',
    if(slot > 8, tool, ''), '', '', map('bench', '1'), map('gen_ai.operation.name', 'chat')
FROM
(
    SELECT
        number AS n, intDiv(number, {SLOTS}) AS run, number % {SLOTS} AS slot,
        {models}[1 + run % 10] AS model,
        {in_prices}[1 + run % 10] AS in_price, {out_prices}[1 + run % 10] AS out_price,
        model != 'in-house-llm' AS priced,
        ['planner', 'worker', 'critic'][1 + run % 3] AS role,
        ['search', 'fetch', 'sql', 'browse'][1 + (n % 4)] AS tool,
        now64(9) - toIntervalMillisecond(toUInt64(604800000 * (1 - run / {total_slots // SLOTS})))
            + toIntervalMillisecond(slot * 2000) AS start,
        if(slot BETWEEN 1 AND 8, toUInt64(400 + slot * 900 + cityHash64(n) % 600), 0) AS inp,
        if(slot BETWEEN 1 AND 8, toUInt64(40 + cityHash64(n, 2) % 400), 0) AS outp,
        if(slot BETWEEN 2 AND 8, intDiv(inp, 2), 0) AS cache_read
    FROM numbers({first_slot}, {slots})
)
WHERE slot = 0 OR (slot BETWEEN 1 AND 8 AND slot <= 3 + run % 6) OR (slot > 8 AND slot - 8 <= run % 4)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spans", type=int, default=10_000_000, help="approximate number of spans to load")
    p.add_argument("--runs", type=int, default=10, help="timed runs per panel and window")
    p.add_argument("--no-rollups", action="store_true", help="do not run the scheduled rollups before timing")
    p.add_argument("--panels", help="comma-separated panel names to time (default: all)")
    p.add_argument("--keep", metavar="DIR",
                   help="keep the loaded database in DIR and reuse it when DIR already holds one "
                        "(for iterating on panel SQL; the data ages with the clock)")
    args = p.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="tp-bench-q-")
    reuse = bool(args.keep) and os.path.isdir(os.path.join(tmp, "data"))
    backend = EmbeddedBackend(os.path.join(tmp, "data"))
    db = "bench"
    try:
        migrate(backend, db, 30)
        backend.use_database(db)
        total_slots = int(args.spans * SLOTS / 8.25)  # 8.25 spans per 12 slots on average
        t0 = time.monotonic()
        chunk = 1_200_000
        for first in range(0, total_slots if not reuse else 0, chunk):
            backend.command(generate_sql(db, first, min(chunk, total_slots - first), total_slots))
        load_s = time.monotonic() - t0
        count = backend.query(f"SELECT count() FROM {db}.spans", "TSV").decode().strip()
        runs = backend.query(f"SELECT uniqExact(trace_id) FROM {db}.runs", "TSV").decode().strip()
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"{'reused' if reuse else 'loaded'} {int(count):,} spans in {int(runs):,} runs"
              + ("" if reuse else f" in {load_s:.0f}s (generated in SQL)"))
        if not args.no_rollups:
            from tokenpulse.storage.rollups import RollupJob

            t0 = time.monotonic()
            done = RollupJob(backend, settle_s=900, max_chunks=10_000).run_once()
            print(f"scheduled rollups backfilled in {time.monotonic() - t0:.0f}s "
                  f"({', '.join(f'{k}: {v} hours' for k, v in done.items())})")
        windows = {"1h": "1h", "24h": "24h", "7d": "7d"}
        print(f"{'panel':<34}" + "".join(f"{w + ' p50/p95 ms':>20}" for w in windows))
        wanted = set(args.panels.split(",")) if args.panels else None
        for name, query in load_panels().items():
            if wanted is not None and name not in wanted:
                continue
            cells = []
            for since in windows.values():
                params = bind(query, {"since": since})
                backend.query(query.sql, "JSONCompact", params=params)  # warm
                times = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    backend.query(query.sql, "JSONCompact", params=params)
                    times.append((time.perf_counter() - t) * 1000)
                times.sort()
                p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
                cells.append(f"{statistics.median(times):>9.0f} / {p95:<8.0f}")
            print(f"{name:<34}" + "".join(f"{c:>20}" for c in cells), flush=True)
    finally:
        backend.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""What storing a span costs ClickHouse: enriched Arrow tables inserted straight into embedded chDB.

No receiver and no enrichment in the timed part: inserts of enriched bench spans into a fresh
database with every migration applied, at several insert sizes (5,000 to 50,000 rows: requests
merged as the writer merges them), then 20,000-row inserts with the materialized views dropped,
then with the two attribute maps empty as well. Prints rows/s and the process's CPU time per row (inserts, views, and the merges they
start, waited for), the share of the machine the storage path needs before any Python work.
Single runs vary by about a third on this shared machine: run it more than once.

    python bench/storage.py
    python bench/storage.py --rows 200000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pyarrow as pa  # noqa: E402
from spans import make_request  # noqa: E402

from tokenpulse.enrich import Pipeline  # noqa: E402
from tokenpulse.enrich.attribute import Attributor  # noqa: E402
from tokenpulse.enrich.price import PriceTable  # noqa: E402
from tokenpulse.otlp.decode import decode_protobuf  # noqa: E402
from tokenpulse.storage.embedded import EmbeddedBackend  # noqa: E402
from tokenpulse.storage.migrate import migrate  # noqa: E402
from tokenpulse.storage.schema import batch_to_arrow  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(inserts: list[pa.Table], drop_views: bool, without: tuple[str, ...] = ()) -> tuple[int, float, float]:
    """(views attached, rows/s, us of CPU per row); ``without``: views dropped first."""
    tmp = tempfile.mkdtemp(prefix="tp-bench-storage-")
    backend = EmbeddedBackend(os.path.join(tmp, "data"))
    try:
        migrate(backend, "bench", 30)
        backend.use_database("bench")
        views = backend.query("SELECT name FROM system.tables WHERE database = 'bench' "
                              "AND engine = 'MaterializedView'", "TSV").decode().split()
        for v in (views if drop_views else [v for v in views if v in without]):
            backend.command(f"DROP VIEW bench.{v}")
            if not drop_views:
                views.remove(v)
        cpu0, t0 = _cpu(), time.perf_counter()
        for table in inserts:
            backend.insert_arrow("spans", table)
        wall = time.perf_counter() - t0
        # Count the merges the inserts started too: wait (up to 30 s) until none is running.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and backend.query(
                "SELECT count() FROM system.merges WHERE database = 'bench'", "TSV").decode().strip() != "0":
            time.sleep(0.2)
        cpu = _cpu() - cpu0
        rows = sum(len(t) for t in inserts)
        return (0 if drop_views else len(views)), rows / wall, cpu / rows * 1e6
    finally:
        backend.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--each-view", action="store_true",
                   help="then 20,000-row inserts without each materialized view in turn: what each one costs")
    p.add_argument("--insert-sizes", default="5000,10000,20000,50000",
                   help="rows per insert for the 'as stored' case, comma-separated (multiples of 5,000)")
    args = p.parse_args()
    pipe = Pipeline(PriceTable(), Attributor(user_id_mode="pseudonymize", user_id_key=b"k" * 32))
    requests = [batch_to_arrow(pipe(decode_protobuf(make_request(5000, seed=i).SerializeToString()).batch).batch)
                for i in range(max(4, args.rows // 5000))]

    def inserts_of(rows: int) -> list[pa.Table]:
        k = max(1, rows // 5000)
        return [pa.concat_tables(requests[i:i + k]) for i in range(0, len(requests), k)]

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    # An insert's cost is mostly fixed (the writer's defaults rest on this curve, storage/writer.py).
    for size in (int(x) for x in args.insert_sizes.split(",")):
        views, rate, us = run(inserts_of(size), False)
        print(f"{'as stored, ' + format(size, ',') + ' rows/insert':<40} ({views} views): {rate:>9,.0f} rows/s, "
              f"{us:5.1f} us of CPU per row", flush=True)
    inserts = inserts_of(20_000)
    if args.each_view:
        for view in ("usage_minute_mv", "runs_mv", "sessions_mv", "user_minute_mv", "trace_tags_mv", "agent_spans_mv",
                     "usage_10s_mv", "recent_calls_mv", "session_inputs_mv"):
            views, rate, us = run(inserts, False, (view,))
            print(f"{'without ' + view + ', 20,000':<40} ({views} views): {rate:>9,.0f} rows/s, "
                  f"{us:5.1f} us of CPU per row", flush=True)
    for label, data in (("no views, 20,000 rows/insert", inserts),
                        ("no views, empty attribute maps, 20,000", [_empty_maps(t) for t in inserts])):
        views, rate, us = run(data, True)
        print(f"{label:<40} ({views} views): {rate:>9,.0f} rows/s, {us:5.1f} us of CPU per row", flush=True)


def _empty_maps(table: pa.Table) -> pa.Table:
    for name in ("attributes", "resource_attributes"):
        i = table.column_names.index(name)
        table = table.set_column(i, name, pa.array([[]] * len(table), table.schema.field(name).type))
    return table


if __name__ == "__main__":
    main()

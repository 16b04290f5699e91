"""What storing a span costs ClickHouse: enriched Arrow tables inserted straight into embedded chDB.

No receiver and no enrichment in the timed part: 20,000-row inserts (four 5,000-span requests, as
the writer batches them) of enriched bench spans into a fresh database with every migration
applied, then the same with the materialized views dropped. Prints rows/s and the process's CPU
time per row (inserts, views and the merges that run meanwhile), the share of the machine the
storage path needs before any Python work.

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
from tokenpulse.receiver.decode import decode_protobuf  # noqa: E402
from tokenpulse.storage.embedded import EmbeddedBackend  # noqa: E402
from tokenpulse.storage.migrate import migrate  # noqa: E402
from tokenpulse.storage.schema import batch_to_arrow  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(inserts: list[pa.Table], drop_views: bool) -> tuple[int, float, float]:
    tmp = tempfile.mkdtemp(prefix="tp-bench-storage-")
    backend = EmbeddedBackend(os.path.join(tmp, "data"))
    try:
        migrate(backend, "bench", 30)
        backend.use_database("bench")
        views = backend.query("SELECT name FROM system.tables WHERE database = 'bench' "
                              "AND engine = 'MaterializedView'", "TSV").decode().split()
        if drop_views:
            for v in views:
                backend.command(f"DROP VIEW bench.{v}")
        cpu0, t0 = _cpu(), time.perf_counter()
        for table in inserts:
            backend.insert_arrow("spans", table)
        wall = time.perf_counter() - t0
        time.sleep(3)  # let the merges the inserts started run, and count them
        cpu = _cpu() - cpu0
        rows = sum(len(t) for t in inserts)
        return (0 if drop_views else len(views)), rows / wall, cpu / rows * 1e6
    finally:
        backend.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=400_000)
    args = p.parse_args()
    pipe = Pipeline(PriceTable(), Attributor(user_id_mode="pseudonymize", user_id_key=b"k" * 32))
    requests = [batch_to_arrow(pipe(decode_protobuf(make_request(5000, seed=i).SerializeToString())).batch)
                for i in range(max(4, args.rows // 5000))]
    inserts = [pa.concat_tables(requests[i:i + 4]) for i in range(0, len(requests), 4)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for drop in (False, True):
        views, rate, us = run(inserts, drop)
        print(f"{views} materialized views: {rate:,.0f} rows/s stored, {us:.1f} us of CPU per row "
              f"(inserts, views and merges)", flush=True)


if __name__ == "__main__":
    main()

"""Per-span cost of each step on the receiving thread, at steady state.

Decodes and enriches fresh bench spans (bench/spans.py: new trace and span ids every request)
through the same steps the service runs, in one thread, and prints microseconds per span for
each step and each window of spans. The default runs well past the enrichment memories' bounds
(duplicate calls: 200k entries; trace tags: 100k traces, 500k spans), so a step that slows down
once its memory is full shows up in the later windows. Such a step once did: evicting from a
full plain dict rescanned its deleted slots, and a span cost up to ~370 us in the
duplicate-call step.

    python bench/enrich.py                  # 800k spans in windows of 100k
    python bench/enrich.py --spans 200000 --window 50000
    python bench/enrich.py --reference      # the reference steps (enrich/*.py) instead of enrich/fast/
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from spans import make_request  # noqa: E402

from tokenpulse.enrich import Pipeline, span_shapes  # noqa: E402
from tokenpulse.enrich.attribute import Attributor  # noqa: E402
from tokenpulse.enrich.fast.attribute import ColumnarAttributor  # noqa: E402
from tokenpulse.enrich.price import PriceTable  # noqa: E402
from tokenpulse.otlp import decode  # noqa: E402
from tokenpulse.storage.schema import batch_to_arrow  # noqa: E402

STEPS = ("decode", "normalize", "calls", "price", "attribute", "content", "arrow")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spans", type=int, default=800_000)
    p.add_argument("--window", type=int, default=100_000, help="spans per printed row")
    p.add_argument("--batch", type=int, default=5000, help="spans per request")
    p.add_argument("--python-walk", action="store_true", help="decode with the Python walk, not the C one")
    p.add_argument("--reference", action="store_true", help="time the reference steps, not the fast ones")
    args = p.parse_args()

    attributor = (Attributor if args.reference else ColumnarAttributor)(user_id_mode="pseudonymize",
                                                                         user_id_key=b"k" * 32)
    pipe = Pipeline(PriceTable(), attributor, reference=args.reference)
    gc.set_threshold(50_000, 20, 20)  # as `tokenpulse serve` runs (cli.py)
    gc.freeze()
    # Seconds the cyclic collector paused the timed steps (part of their times), when the last began.
    paused = [0.0, 0.0]
    timing = [False]

    def on_gc(phase, info):
        if phase == "start":
            paused[1] = time.perf_counter()
        elif timing[0]:
            paused[0] += time.perf_counter() - paused[1]
    gc.callbacks.append(on_gc)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"decode walk: {'Python' if args.python_walk or decode._c_walk is None else 'C'}; "
          f"steps: {'reference' if args.reference else 'fast'}")
    print(f"{'spans':>9}" + "".join(f"{s:>11}" for s in STEPS) + f"{'total':>11}{'of it gc':>10}   (us per span)")
    totals = dict.fromkeys(STEPS, 0.0)
    window = dict.fromkeys(STEPS, 0.0)
    done = in_window = 0
    gc_at_window = 0.0
    seed = 0
    while done < args.spans:
        body = make_request(args.batch, seed=seed).SerializeToString()  # fresh ids; not timed
        seed += 1
        timing[0] = True
        t0 = time.perf_counter()
        d = decode.decode_protobuf(body, fast=not args.python_walk)
        t1 = time.perf_counter()
        # Each span's attribute keys, made once for every fast step (the reference steps take none).
        shapes = None if args.reference else span_shapes(d.batch.attributes)
        batch, inferred = pipe._normalize(d.batch, shapes)
        t2 = time.perf_counter()
        batch = pipe.calls(batch, inferred)
        t3 = time.perf_counter()
        batch = pipe._price(batch, shapes)
        t4 = time.perf_counter()
        batch, _ = pipe.attributor(batch, "", None, shapes)
        t5 = time.perf_counter()
        batch = pipe.content(batch)
        t6 = time.perf_counter()
        batch_to_arrow(batch)
        t7 = time.perf_counter()
        timing[0] = False
        for step, dt in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            window[step] += dt
            totals[step] += dt
        n = len(batch)
        done += n
        in_window += n
        if in_window >= args.window or done >= args.spans:
            cells = [window[s] / in_window * 1e6 for s in STEPS]
            print(f"{done:>9,}" + "".join(f"{c:>11.2f}" for c in cells) + f"{sum(cells):>11.2f}"
                  f"{(paused[0] - gc_at_window) / in_window * 1e6:>10.2f}", flush=True)
            window = dict.fromkeys(STEPS, 0.0)
            in_window = 0
            gc_at_window = paused[0]
    cells = [totals[s] / done * 1e6 for s in STEPS]
    print(f"{'all':>9}" + "".join(f"{c:>11.2f}" for c in cells) + f"{sum(cells):>11.2f}"
          f"{paused[0] / done * 1e6:>10.2f}   -> {1e6 / sum(cells):,.0f} spans/s on one thread")


if __name__ == "__main__":
    main()

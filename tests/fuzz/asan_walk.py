"""Mutated and random bodies straight into the C span walk (and keep_first, the span count and cut
on the wire), built with AddressSanitizer and UBSan.

The walk must be memory-safe on any bytes, not only on bodies upb accepted, so this feeds it
without the upb parse in front. Run in a process with the sanitizer runtimes preloaded
(tests/unit/test_decode_fast.py does that):

    LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \\
    ASAN_OPTIONS=detect_leaks=0 python tests/fuzz/asan_walk.py path/to/_otlpwalk.so 200000

A finding aborts the process with the sanitizer's report (non-zero exit).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.otlp import request, span  # noqa: E402
from tokenpulse.otlp.decode import UNKNOWN_SERVICE, _render_raw, walk_columns  # noqa: E402
from tokenpulse.record import SpanBatch  # noqa: E402


def load(path: str):
    loader = importlib.machinery.ExtensionFileLoader("tokenpulse.otlp._otlpwalk", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main() -> None:
    module = load(sys.argv[1])
    walk, keep_first = module.walk, module.keep_first
    runs = int(sys.argv[2])
    from tests.unit.test_decode_fast import CASES

    seeds = [request([span(attrs={"gen_ai.usage.input_tokens": 5, "k": "v", "d": 0.5, "a": b"\x00"})
                      for _ in range(4)]).SerializeToString()]
    seeds += [body for body, _ in CASES.values()]
    rnd = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    walked = declined = 0
    for _ in range(runs):
        body = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 10)):
            if body and rnd.random() < 0.8:
                body[rnd.randrange(len(body))] = rnd.randrange(256)
            else:
                at = rnd.randrange(len(body) + 1)
                body[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 4)))
        if rnd.random() < 0.3:
            del body[rnd.randint(0, len(body)):]
        try:
            ok = walk(bytes(body), walk_columns(SpanBatch()), lambda message: None, _render_raw, UNKNOWN_SERVICE)
        except Exception:  # the render callback may refuse bytes upb would have refused
            ok = False
        walked += 1
        declined += not ok
        limit = rnd.randint(0, 6)
        total, cut = keep_first(bytes(body), limit)
        if cut is not None:  # a cut body is itself well formed, with exactly ``limit`` spans
            assert total > limit and keep_first(cut, 1 << 40) == (limit, None), (bytes(body), limit)
    print(f"walked {walked} bodies ({declined} declined), no sanitizer finding")


if __name__ == "__main__":
    main()

"""Print, per recorded library, what the provider served against what tokenpulse stored.

    python -m tests.conformance.report [LIBRARY ...]

Each library's recording is replayed into a real tokenpulse service (embedded chDB in a temporary
directory, real gRPC and HTTP sockets) with a database of its own. Columns: calls served (answered
200, then refused with 429), counted spans (with usage, then without: a call whose usage never reached
the client, or a refused one), then tokens by kind and cost as ``served / stored`` (semconv meaning: input includes
cache, output includes reasoning). Every difference is listed under the table with the library bug
(``corpus.LIBRARY_GAPS``) or tokenpulse gap (``corpus.TOKENPULSE_GAPS``) that explains it; an
unexplained difference is printed as such and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from tests.conformance import corpus
from tests.conformance.replay import STORED_COLUMNS, per_call, replay, stored_spans
from tests.conformance.fake_provider import RESPONSE_MODELS

KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")


def run(libraries: list[str]) -> int:
    import requests

    from tokenpulse.config import load_settings
    from tokenpulse.service import Service
    from tokenpulse.storage.embedded import EmbeddedBackend

    tmp = tempfile.TemporaryDirectory(prefix="tokenpulse-conformance-")
    backend = EmbeddedBackend(tmp.name + "/chdb")
    rows, notes, unexplained = [], [], 0
    try:
        for n, lib in enumerate(libraries):
            settings = load_settings({
                "listen_host": "127.0.0.1", "admin_host": "127.0.0.1", "grpc_port": 0, "http_port": 0,
                "admin_port": 0, "spool_dir": f"{tmp.name}/spool{n}", "database": f"conformance_{n}",
                "retention_days": 3650, "user_id_key": "conformance-key-0123456789", "shutdown_timeout_s": 10,
            }, env={})
            svc = Service(settings, backend=backend)
            svc.start()
            try:
                rec = corpus.load(lib)
                replay(rec, svc.grpc.port, svc.http.port)
                r = requests.post(f"http://127.0.0.1:{svc.admin.port}/api/sql",
                                  data=f"SELECT {', '.join(STORED_COLUMNS)} FROM spans", timeout=30)
                r.raise_for_status()
                results = per_call(rec, stored_spans(r.json()["data"]))
            finally:
                svc.shutdown()
            served, stored = corpus.Tokens(), corpus.Tokens()
            served_cost = stored_cost = 0.0
            n_served = n_refused = n_usage = n_no_usage = 0
            for res in results:
                truth = corpus.served(res.call)
                n_refused += res.call["status"] != 200
                if truth is not None:
                    n_served += 1
                    served = served + truth
                    model = RESPONSE_MODELS.get(res.call["model"], res.call["model"])
                    served_cost += corpus.expected_cost(res.call, truth, model, one_hour_at_5m=False)
                n_usage += sum(1 for s in res.counted if s.usage_status not in ("missing", "none"))
                n_no_usage += sum(1 for s in res.counted if s.usage_status in ("missing", "none"))
                stored = stored + res.stored
                stored_cost += res.stored_cost
                expected = res.expected or corpus.Tokens()
                got = res.stored
                if truth is not None and (got.astuple()[:5] != truth.astuple()[:5] or len(res.counted) != 1):
                    why = res.gap.bug if res.gap and got.astuple()[:5] == expected.astuple()[:5] else None
                    if why is None:
                        unexplained += 1
                    diff = ", ".join(f"{k} {getattr(truth, k)} -> {getattr(got, k)}" for k in KINDS
                                     if getattr(truth, k) != getattr(got, k)) or f"{len(res.counted)} counted spans"
                    notes.append(f"  {lib} / {res.call['call']}: {diff}: {why or 'UNEXPLAINED'}")
            rows.append([lib, f"{n_served} / {n_refused}", f"{n_usage} / {n_no_usage}"] + [f"{getattr(served, k)} / {getattr(stored, k)}" for k in KINDS]
                        + [f"{served_cost:.6f} / {stored_cost:.6f}"])
    finally:
        backend.close()
        tmp.cleanup()
    head = ["library", "served 200/429", "counted usage/none", *KINDS, "cost $ served / stored"]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for line in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(line, widths))))
    print("\nDifferences (served -> stored), each with its cause:" if notes else "\nNo differences.")
    print("\n".join(notes))
    return 1 if unexplained else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("libraries", nargs="*", help=f"default: all ({', '.join(corpus.libraries())})")
    args = ap.parse_args(argv)
    unknown = set(args.libraries) - set(corpus.libraries())
    if unknown:
        ap.error(f"no recording for: {', '.join(sorted(unknown))}")
    return run(args.libraries or corpus.libraries())


if __name__ == "__main__":
    sys.exit(main())

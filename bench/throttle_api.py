"""Decision API latency: GET /v1/throttle/{tenant} on the OTLP/HTTP port of a real `tokenpulse serve`.

Throttles 100 tenants by hand, then asks for 1,000 tenants (a tenth of them
throttled) over one keep-alive connection (http.client) and prints p50 / p99 / max in ms, measured at the client
(so it includes the client's own HTTP work).

    python bench/throttle_api.py [--requests 5000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import time

import requests

sys.path.insert(0, os.path.dirname(__file__))
from faults import Server  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--server-arg", action="append", default=[], help="extra `tokenpulse serve` flag (repeatable)")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="tp-throttle-")
    server = Server(os.path.join(tmp, "data"), extra=tuple(args.server_arg)).start()
    admin, ports = server.admin, server.ports
    try:
        for i in range(0, 1000, 10):
            r = requests.post(f"{admin}/api/throttle/tenant-{i}", json={"for": "1h", "reason": "bench"}, timeout=10)
            if r.status_code != 200 or not r.json()["throttled"]:
                raise SystemExit(f"could not throttle tenant-{i}: {r.status_code} {r.text}")
        # http.client on one keep-alive connection: less client overhead than requests
        conn = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=5)

        def get(tenant: str) -> dict:
            conn.request("GET", f"/v1/throttle/{tenant}")
            return json.loads(conn.getresponse().read())

        for i in range(200):  # warm-up
            get(f"tenant-{i}")
        times, throttled = [], 0
        for i in range(args.requests):
            t0 = time.perf_counter()
            doc = get(f"tenant-{i % 1000}")
            times.append(time.perf_counter() - t0)
            throttled += doc["throttled"]
        times.sort()
        ms = [1000 * times[int(q * (len(times) - 1))] for q in (0.5, 0.99, 1.0)]
        print(f"{args.requests} decisions ({throttled} throttled): p50 {ms[0]:.2f} ms, p99 {ms[1]:.2f} ms, "
              f"max {ms[2]:.2f} ms")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

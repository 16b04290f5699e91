"""Decision API latency: GET /v1/throttle/{tenant} on the OTLP/HTTP port of a real `tokenpulse serve`.

Throttles 100 tenants by hand, then asks for 1,000 tenants (a tenth of them
throttled) over one keep-alive connection and prints p50 / p99 / max in ms,
measured at the client (so it includes the client's own HTTP work).

    python bench/throttle_api.py [--requests 5000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import requests

sys.path.insert(0, os.path.dirname(__file__))
from detection import free_port  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=5000)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="tp-throttle-")
    ports = {k: free_port() for k in ("grpc", "http", "admin")}
    server = subprocess.Popen([sys.executable, "-m", "tokenpulse.cli", "serve", "--listen-host", "127.0.0.1",
                               "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
                               "--admin-port", str(ports["admin"]), "--data-dir", os.path.join(tmp, "data"),
                               "--log-level", "error"])
    admin = f"http://127.0.0.1:{ports['admin']}"
    try:
        for _ in range(600):
            try:
                if requests.get(admin + "/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        for i in range(0, 1000, 10):
            r = requests.post(f"{admin}/api/throttle/tenant-{i}", json={"for": "1h", "reason": "bench"}, timeout=10)
            if r.status_code != 200 or not r.json()["throttled"]:
                raise SystemExit(f"could not throttle tenant-{i}: {r.status_code} {r.text}")
        session = requests.Session()
        base = f"http://127.0.0.1:{ports['http']}/v1/throttle/"
        for i in range(200):  # warm-up
            session.get(base + f"tenant-{i}", timeout=5)
        times, throttled = [], 0
        for i in range(args.requests):
            t0 = time.perf_counter()
            r = session.get(base + f"tenant-{i % 1000}", timeout=5)
            times.append(time.perf_counter() - t0)
            throttled += r.json()["throttled"]
        times.sort()
        ms = [1000 * times[int(q * (len(times) - 1))] for q in (0.5, 0.99, 1.0)]
        print(f"{args.requests} decisions ({throttled} throttled): p50 {ms[0]:.2f} ms, p99 {ms[1]:.2f} ms, "
              f"max {ms[2]:.2f} ms")
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

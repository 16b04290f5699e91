"""Fault benchmark: spans sent / acknowledged / stored through faults, with peak RSS.

Each scenario runs a real `tokenpulse serve` (embedded chDB, fresh directory) and
load generators that send unique spans over OTLP/HTTP, remember which were
acknowledged (200), and retry nothing (so "acked" is exactly what tokenpulse
promised to keep). At the end it counts what is in ClickHouse.

* outage:   steady load; storage fails for --outage-s seconds in the middle
            (the server's failpoint TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE)
* kill-9:   steady load; the server is killed with SIGKILL, then restarted
* webhook-down: steady load; an alert fires while its webhook endpoint refuses connections
            for --outage-s seconds; reports when the notification arrived after it came back
* overload: --overload-senders (120) senders of 5,000-span requests, more in flight than the
            writer queue holds (500k spans by default)
* stall:    60 clients start a chunked 15 MiB upload, send 1 MiB and stall, beside 2 honest senders
* bombs:    4 clients send gzip bombs (4M empty spans from ~8 kB) for 20 s, beside 2 honest senders
* mixed:    40 gRPC and 40 HTTP senders of 5,000-span requests for 30 s (gRPC outcomes counted)

    python bench/faults.py [--outage-s 60] [--scenario outage,kill-9,overload,stall,bombs,mixed]
    python bench/faults.py --scenario disk-full,disk-full-kill-9     # as root: mounts a 16 MiB tmpfs
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import requests

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from detection import free_port  # noqa: E402
from spans import make_request  # noqa: E402

from tests.otlp import empty_spans_request  # noqa: E402


SERVE_EXTRA: tuple = ()  # flags for every `tokenpulse serve` started here (--serve-flag)


class Server:
    def __init__(self, data_dir: str, env: dict | None = None, extra: tuple = ()):
        self.extra = extra + SERVE_EXTRA
        self.data_dir = data_dir
        self.env = env or {}
        self.ports = {k: free_port() for k in ("grpc", "http", "admin")}
        self.peak_rss_mb = 0.0
        self.proc = None

    def start(self) -> "Server":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokenpulse.cli", "serve", "--listen-host", "127.0.0.1",
             "--grpc-port", str(self.ports["grpc"]), "--http-port", str(self.ports["http"]),
             "--admin-port", str(self.ports["admin"]), "--data-dir", self.data_dir, "--log-level", "error",
             *self.extra],
            env={**os.environ, **self.env})
        for _ in range(600):
            try:
                if requests.get(self.admin + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        threading.Thread(target=self._watch_rss, daemon=True).start()
        return self

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    def _watch_rss(self) -> None:
        proc = self.proc
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmRSS:"):
                            self.peak_rss_mb = max(self.peak_rss_mb, int(line.split()[1]) / 1024)
            except OSError:
                return
            time.sleep(0.2)

    def count(self, service: str) -> int:
        """-1 while the server is too busy to answer (overload)."""
        try:
            r = requests.post(self.admin + "/api/sql",
                              data=f"SELECT count() FROM spans FINAL WHERE service = '{service}'", timeout=120)
            return int(r.json()["data"][0][0])
        except requests.RequestException:
            return -1

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)


class Load:
    def __init__(self, server: Server, service: str, senders: int, spans_per_request: int, pause_s: float):
        self.server, self.service = server, service
        self.senders, self.n, self.pause_s = senders, spans_per_request, pause_s
        self.sent = self.acked = self.retry = self.errors = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def _run(self, seed: int) -> None:
        session = requests.Session()
        url = f"http://127.0.0.1:{self.server.ports['http']}/v1/traces"
        i = 0
        while not self.stop.is_set():
            body = make_request(self.n, service=self.service, seed=seed * 1_000_000 + i).SerializeToString()
            i += 1
            try:
                r = session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=30)
                status = r.status_code
            except requests.RequestException:
                status = 0
            with self.lock:
                self.sent += self.n
                if status == 200:
                    self.acked += self.n
                elif status in (429, 503):
                    self.retry += self.n
                else:
                    self.errors += self.n
            if status != 200:
                time.sleep(0.5)  # an exporter's back-off
                if status == 0:
                    return
            elif self.pause_s:
                time.sleep(self.pause_s)

    def start(self) -> "Load":
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(self.senders)]
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def wait_count(server: Server, service: str, want: int, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    got = server.count(service)
    while got < want and time.time() < deadline:
        time.sleep(1)
        got = server.count(service)
    return got


def outage(tmp: str, outage_s: float) -> dict:
    flag = os.path.join(tmp, "storage-down")
    server = Server(os.path.join(tmp, "outage"), {"TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE": flag}).start()
    load = Load(server, "outage", senders=4, spans_per_request=200, pause_s=0.05).start()
    time.sleep(15)
    open(flag, "w").close()
    time.sleep(outage_s)
    health = requests.get(server.admin + "/healthz", timeout=5).json()
    os.remove(flag)
    spooled = health["spool"]["bytes"] / 1e6 if health.get("spool") else 0.0
    time.sleep(15)
    load.finish()
    stored = wait_count(server, "outage", load.acked)
    server.stop()
    return {"scenario": f"storage outage {outage_s:g} s", "sent": load.sent, "acked": load.acked,
            "retry": load.retry, "stored": stored, "rss": server.peak_rss_mb,
            "note": f"/healthz during the outage: {health['status']}; spool at its end: {spooled:.0f} MB"}


def kill9(tmp: str) -> dict:
    data = os.path.join(tmp, "kill")
    server = Server(data).start()
    load = Load(server, "kill", senders=4, spans_per_request=200, pause_s=0.0).start()
    time.sleep(10)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    load.finish()
    rss = server.peak_rss_mb
    again = Server(data).start()
    stored = wait_count(again, "kill", load.acked, timeout=60)
    again.stop()
    return {"scenario": "kill -9 mid-load, restart", "sent": load.sent, "acked": load.acked, "retry": load.retry,
            "stored": stored, "rss": max(rss, again.peak_rss_mb), "note": "stored counts the acked requests"}


class Tmpfs:
    """A small real filesystem that fills up (root only); unmounted on exit."""

    def __init__(self, path: str, size: str):
        self.path, self.size = path, size

    def __enter__(self) -> str:
        os.makedirs(self.path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", self.path], check=True)
        return self.path

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", "-l", self.path], check=False)


def disk_full(tmp: str, kill: bool) -> dict:
    """Storage down and the spool's disk (16 MiB tmpfs) filled: appends fail midway with ENOSPC.
    Then storage comes back (with ``kill``: after a kill -9 and a restart on the full disk)."""
    flag = os.path.join(tmp, "storage-down-full")
    env = {"TOKENPULSE_FAILPOINT_STORAGE_DOWN_FILE": flag}
    name = "disk-full-kill" if kill else "disk-full"
    with Tmpfs(os.path.join(tmp, f"spoolfs-{name}"), "16m") as spool:
        data, extra = os.path.join(tmp, name), ("--spool-dir", spool)
        open(flag, "w").close()
        server = Server(data, env, extra).start()
        load = Load(server, name, senders=4, spans_per_request=200, pause_s=0.0).start()
        while load.retry < 20_000:  # until the full disk has refused plenty
            time.sleep(0.5)
        time.sleep(5)
        load.finish()
        rss = server.peak_rss_mb
        if kill:
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(30)
            os.remove(flag)
            server = Server(data, env, extra).start()
        else:
            os.remove(flag)
        stored = wait_count(server, name, load.acked, timeout=120)
        health = requests.get(server.admin + "/healthz", timeout=5).json()
        corrupt = len([f for f in os.listdir(spool) if f.startswith("corrupt-")])
        server.stop()
    return {"scenario": f"spool disk full (16 MiB tmpfs), storage down{', kill -9 on the full disk' if kill else ''}",
            "sent": load.sent, "acked": load.acked, "retry": load.retry, "stored": stored,
            "rss": max(rss, server.peak_rss_mb),
            "note": f"spool after: {health['spool']['batches']} batches, broken={health['spool'].get('broken')}, "
                    f"{corrupt} corrupt files"}


def overload(tmp: str, senders: int) -> dict:
    server = Server(os.path.join(tmp, "overload")).start()
    try:
        load = Load(server, "overload", senders=senders, spans_per_request=5000, pause_s=0.0).start()
        time.sleep(30)
        load.finish()
        stored = wait_count(server, "overload", load.acked, timeout=300)
    finally:
        server.stop()
    return {"scenario": f"overload: {senders} x 5,000-span senders", "sent": load.sent, "acked": load.acked,
            "retry": load.retry, "stored": stored, "rss": server.peak_rss_mb, "note": ""}


def _empty_spans_gzip(n: int) -> bytes:
    """A gzip bomb: an ExportTraceServiceRequest of ``n`` empty spans (2 bytes each on the wire)."""
    import gzip

    return gzip.compress(empty_spans_request(n))


def stalled_uploads(tmp: str, clients: int = 60) -> dict:
    """Clients that start a chunked 15 MiB upload, send 1 MiB of it and stall, beside an honest sender."""
    import socket

    server = Server(os.path.join(tmp, "stall"), extra=("--body-timeout-s", "10")).start()
    outcomes: dict[str, int] = {}
    try:
        load = Load(server, "stall-honest", senders=2, spans_per_request=512, pause_s=0.1).start()

        def stall():
            try:
                sock = socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=60)
                sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                chunk = b"\x00" * (1 << 20)
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                status = sock.recv(64).split(b" ")[1].decode()
            except (OSError, IndexError):
                status = "closed"
            outcomes[status] = outcomes.get(status, 0) + 1

        threads = [threading.Thread(target=stall) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        load.finish()
        stored = wait_count(server, "stall-honest", load.acked, timeout=120)
    finally:
        server.stop()
    return {"scenario": f"{clients} stalled chunked uploads + 2 honest senders", "sent": load.sent,
            "acked": load.acked, "retry": load.retry, "stored": stored, "rss": server.peak_rss_mb,
            "note": "stalled uploads answered: " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))}


def bombs(tmp: str, clients: int = 4) -> dict:
    """Clients sending gzip bombs (4M empty spans from ~8 kB) for 20 s, beside an honest sender."""
    server = Server(os.path.join(tmp, "bombs")).start()
    bomb = _empty_spans_gzip(4_000_000)
    answered: dict[int, int] = {}
    stop = threading.Event()
    try:
        load = Load(server, "bomb-honest", senders=2, spans_per_request=512, pause_s=0.1).start()

        def send():
            s = requests.Session()
            while not stop.is_set():
                try:
                    code = s.post(f"http://127.0.0.1:{server.ports['http']}/v1/traces", data=bomb, timeout=60,
                                  headers={"Content-Type": "application/x-protobuf",
                                           "Content-Encoding": "gzip"}).status_code
                except requests.RequestException:
                    code = 0
                answered[code] = answered.get(code, 0) + 1

        threads = [threading.Thread(target=send) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(20)
        stop.set()
        for t in threads:
            t.join(90)
        load.finish()
        stored = wait_count(server, "bomb-honest", load.acked, timeout=120)
    finally:
        server.stop()
    return {"scenario": f"{clients} gzip-bomb senders + 2 honest senders", "sent": load.sent, "acked": load.acked,
            "retry": load.retry, "stored": stored, "rss": server.peak_rss_mb,
            "note": "bombs answered: " + ", ".join(f"{k}: {v}" for k, v in sorted(answered.items()))}


def mixed(tmp: str, each: int = 40) -> dict:
    """``each`` gRPC and ``each`` HTTP senders of 5,000-span requests for 30 s."""
    import grpc

    server = Server(os.path.join(tmp, "mixed")).start()
    codes: dict[str, int] = {}
    stop = threading.Event()
    try:
        load = Load(server, "mixed", senders=each, spans_per_request=5000, pause_s=0.0).start()

        def grpc_sender(seed: int):
            with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as ch:
                export = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                        request_serializer=None, response_deserializer=None)
                i = 0
                while not stop.is_set():
                    body = make_request(5000, service="mixed-grpc", seed=seed * 1_000_000 + i).SerializeToString()
                    i += 1
                    try:
                        export(body, timeout=30)
                        code = "OK"
                    except grpc.RpcError as e:
                        retry = dict(e.trailing_metadata() or ()).get("google.rpc.retryinfo-bin")
                        code = e.code().name + ("+RetryInfo" if retry else "")
                        time.sleep(0.5)
                    codes[code] = codes.get(code, 0) + 1

        threads = [threading.Thread(target=grpc_sender, args=(k + 1000,), daemon=True) for k in range(each)]
        for t in threads:
            t.start()
        time.sleep(30)
        stop.set()
        load.finish()
        for t in threads:
            t.join(90)
        stored = wait_count(server, "mixed", load.acked, timeout=300)
    finally:
        server.stop()
    return {"scenario": f"{each} gRPC + {each} HTTP senders of 5,000-span requests", "sent": load.sent,
            "acked": load.acked, "retry": load.retry, "stored": stored, "rss": server.peak_rss_mb,
            "note": "HTTP columns; gRPC calls: " + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))}


def webhook_down(tmp: str, down_s: float) -> dict:
    """An alert fires while its webhook endpoint refuses connections; ingestion must not notice,
    and the notification must arrive once the endpoint is back."""
    import json as jsonlib
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span
    from spans import _kv

    hook_port = free_port()
    config = os.path.join(tmp, "hook.yaml")
    with open(config, "w") as fh:
        jsonlib.dump({"alert_channels": {"default": {"type": "webhook",
                                                     "url": f"http://127.0.0.1:{hook_port}/hook"}}}, fh)
    server = Server(os.path.join(tmp, "hook"), extra=("--config", config)).start()
    load = Load(server, "hookdown", senders=4, spans_per_request=200, pause_s=0.05).start()
    time.sleep(5)
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for i in range(6):  # the same tool with the same arguments: agent_loop fires
        sp = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="execute_tool search",
                  start_time_unix_nano=now + i, end_time_unix_nano=now + i + 1000)
        sp.attributes.extend([_kv("gen_ai.operation.name", "execute_tool"), _kv("gen_ai.tool.name", "search"),
                              _kv("gen_ai.tool.call.arguments", '{"q": 1}'), _kv("gen_ai.conversation.id", "loop")])
        ss.spans.append(sp)
    requests.post(f"http://127.0.0.1:{server.ports['http']}/v1/traces", data=req.SerializeToString(),
                  headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    time.sleep(down_s)
    got: list[float] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            got.append(time.time())
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    back = time.time()
    hook = ThreadingHTTPServer(("127.0.0.1", hook_port), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    deadline = time.time() + 360
    while not got and time.time() < deadline:
        time.sleep(0.5)
    load.finish()
    stored = wait_count(server, "hookdown", load.acked)
    failures = requests.get(server.admin + "/metrics", timeout=5).text.count('result="failed"')
    hook.shutdown()
    server.stop()
    return {"scenario": f"webhook endpoint down {down_s:g} s during an alert", "sent": load.sent, "acked": load.acked,
            "retry": load.retry, "stored": stored, "rss": server.peak_rss_mb,
            "note": (f"notification delivered {got[0] - back:.0f} s after the endpoint came back"
                     if got else "notification NOT delivered within 6 min") + f"; failed-delivery series: {failures}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outage-s", type=float, default=60.0)
    p.add_argument("--scenario", default="outage,kill-9,webhook-down,overload")
    p.add_argument("--overload-senders", type=int, default=120,
                   help="concurrent senders of 5,000-span requests (120 keep 600k spans in flight, over the "
                        "500k queue bound)")
    p.add_argument("--serve-flag", action="append", default=[],
                   help="a flag for every server, e.g. --serve-flag=--memory-budget=1536MiB")
    args = p.parse_args()
    global SERVE_EXTRA
    SERVE_EXTRA = tuple(args.serve_flag)
    tmp = tempfile.mkdtemp(prefix="tp-faults-")
    rows = []
    try:
        for name in args.scenario.split(","):
            row = {"outage": lambda: outage(tmp, args.outage_s), "kill-9": lambda: kill9(tmp),
                   "webhook-down": lambda: webhook_down(tmp, args.outage_s),
                   "overload": lambda: overload(tmp, args.overload_senders),
                   "stall": lambda: stalled_uploads(tmp), "bombs": lambda: bombs(tmp),
                   "mixed": lambda: mixed(tmp), "disk-full": lambda: disk_full(tmp, kill=False),
                   "disk-full-kill-9": lambda: disk_full(tmp, kill=True)}[name]()
            rows.append(row)
            print(row, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| scenario | sent | acked | answered retry | stored | lost (acked - stored) | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['sent']:,} | {r['acked']:,} | {r['retry']:,} | {r['stored']:,} | "
              f"{max(0, r['acked'] - r['stored']):,} | {r['rss']:,.0f} MB |")
        if r["note"]:
            print(f"  ({r['note']})")


if __name__ == "__main__":
    main()

"""Ingest benchmark: raw OTLP protobuf into a real `tokenpulse serve`, counted in ClickHouse.

Starts `tokenpulse serve` (embedded chDB in a temporary directory, or
--clickhouse-url) as a subprocess, then drives it from this separate process
with pre-serialized ExportTraceServiceRequests (the OTel SDK exporter tops out
near 9k spans/s per process, docs/sources.md#platform, so it cannot be the load). Each
request gets fresh trace ids patched into its bytes, so no span repeats and
the dedup cache drops nothing.

Prints, per transport and batch size: spans/s durably stored (acknowledged
spans / elapsed, checked against count() in ClickHouse), MB/s, p50/p99 Export
latency, the server's peak RSS, the mean spans per insert, and the server's CPU time per
stored span during the load, split between its Python threads (receiving, decoding,
enriching, all under one GIL) and its other threads (ClickHouse's inserts, views and
merges; gRPC's I/O), and how much of the Python part was the garbage collector's pauses.

    python bench/ingest.py                       # grpc+http, batches 512 and 5000
    python bench/ingest.py --transport grpc --batch 5000 --concurrency 4 --seconds 20
    python bench/ingest.py --forward both        # each case without, then with forwarding
    python bench/ingest.py --transport grpc --batch 5000 --rate 20000 --seconds 300 --rules
                                                 # alert evaluation time per rule under 20k spans/s

With --forward, the service forwards every stored span, enriched, over OTLP/gRPC to a
sink in this process (a real gRPC server that counts bytes without parsing them), and the
table adds the spans forwarded (from the service's tokenpulse_forward_spans_total, after
up to 30 s for its queue to drain) and those it dropped.

After each case, a line gives the raw-bytes limit for the same requests (bench/rawbytes.py: chDB's
Protobuf input and one view, no Python per span, in its own process once the service has stopped)
and the case's spans/s as a share of it (--no-raw-limit skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spans import make_request  # noqa: E402

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MARK = b"\xfe\xed\xfa\xce"
SERVER_ARGS: list[str] = []  # extra `tokenpulse serve` flags (--server-arg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Template:
    """A serialized request whose 16-byte trace ids can be rewritten in place."""

    def __init__(self, n_spans: int):
        req = make_request(n_spans, seed=n_spans)
        for i, sp in enumerate(req.resource_spans[0].scope_spans[0].spans):
            sp.trace_id = MARK + struct.pack(">I", i // 8) + bytes(8)
        self.body = bytearray(req.SerializeToString())
        self.offsets = []
        start = 0
        while (pos := self.body.find(MARK, start)) >= 0:
            self.offsets.append(pos + 8)  # the last 8 bytes of each trace id
            start = pos + 16
        self.n_spans = n_spans
        self._lock = threading.Lock()
        self._counter = 0

    def next(self) -> bytes:
        with self._lock:
            self._counter += 1
            tag = struct.pack(">Q", self._counter | (os.getpid() << 40))
        body = bytearray(self.body)
        for off in self.offsets:
            body[off:off + 8] = tag
        return bytes(body)


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds on the server's Python threads, on its other threads: ClickHouse's pools, gRPC's).

    Python threads keep the process's own thread name; chDB and gRPC name theirs (MergeMutate,
    ThreadPool, event_engine, ...)."""
    tick = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/comm") as fh:
        main_name = fh.read().strip()
    python = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                name = fh.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        used = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        if name == main_name:
            python += used
        else:
            other += used
    return python, other


class Sink:
    """A downstream OTLP/gRPC TraceService that accepts everything and counts requests and bytes."""

    def __init__(self):
        from concurrent import futures

        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()

        def export(body, context):
            with self._lock:
                self.requests += 1
                self.bytes += len(body)
            return b""  # an empty ExportTraceServiceResponse: full success

        handler = grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService", {
            "Export": grpc.unary_unary_rpc_method_handler(export)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                                  options=[("grpc.max_receive_message_length", 64 << 20)])
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(0)


def metric_sum(admin: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(admin + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())


def rule_stats(admin: str) -> dict[str, list[float]]:
    """rule -> [evaluation seconds sum, count, ticks missed] from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[float]] = {}
    text = requests.get(admin + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            rule = s.labels.get("rule")
            if rule is None:
                continue
            row = out.setdefault(rule, [0.0, 0.0, 0.0])
            if s.name == "tokenpulse_alert_evaluation_seconds_sum":
                row[0] = s.value
            elif s.name == "tokenpulse_alert_evaluation_seconds_count":
                row[1] = s.value
            elif s.name == "tokenpulse_alert_ticks_missed_total":
                row[2] = s.value
    return out


def bucket_max(admin: str) -> dict[str, float]:
    """rule -> the smallest histogram bound that holds every evaluation (an upper bound of the slowest)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(requests.get(admin + "/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == "tokenpulse_alert_evaluation_seconds_bucket":
                counts.setdefault(s.labels["rule"], []).append((float(s.labels["le"]), s.value))
    out = {}
    for rule, bs in counts.items():
        bs.sort()
        total = bs[-1][1]
        out[rule] = next(le for le, c in bs if c >= total)
    return out


def run_case(transport: str, batch: int, concurrency: int, seconds: float, clickhouse_url: str | None,
             forward: bool = False, rate: float = 0.0) -> dict:
    tmp = tempfile.mkdtemp(prefix="tp-bench-")
    sink = Sink() if forward else None
    env = dict(os.environ)
    if sink is not None:
        env["TOKENPULSE_FORWARD"] = json.dumps({"sink": {"endpoint": f"127.0.0.1:{sink.port}",
                                                         "queue_spans": 2_000_000}})
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    cmd = [sys.executable, "-m", "tokenpulse.cli", "serve", "--listen-host", "127.0.0.1", *SERVER_ARGS,
           "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
           "--admin-port", str(ports["admin"]), "--data-dir", os.path.join(tmp, "data"), "--log-level", "warning"]
    if clickhouse_url:
        cmd += ["--clickhouse-url", clickhouse_url, "--database", f"bench_{os.getpid()}"]
    server = subprocess.Popen(cmd, env=env)
    admin = f"http://127.0.0.1:{ports['admin']}"
    try:
        for _ in range(300):
            try:
                if requests.get(admin + "/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        template = Template(batch)
        latencies: list[float] = []
        counts = {"acked": 0, "bytes": 0, "retry": 0}
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def worker():
            if transport == "grpc":
                channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}",
                                                options=[("grpc.max_send_message_length", 64 << 20)])
                call = channel.unary_unary(EXPORT)
            else:
                session = requests.Session()
                url = f"http://127.0.0.1:{ports['http']}/v1/traces"
            # --rate: each worker paces its requests so that all together send ``rate`` spans/s
            interval = batch * concurrency / rate if rate else 0.0
            next_at = time.monotonic()
            while time.monotonic() < stop_at:
                if interval:
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.monotonic()))
                body = template.next()
                t0 = time.perf_counter()
                try:
                    if transport == "grpc":
                        call(body, timeout=60)
                        ok = True
                    else:
                        r = session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"},
                                         timeout=60)
                        ok = r.status_code == 200
                except grpc.RpcError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        counts["acked"] += batch
                        counts["bytes"] += len(body)
                        latencies.append(dt)
                    else:
                        counts["retry"] += 1
                if not ok:
                    time.sleep(0.2)  # as an exporter would, on a retryable answer

        t_start = time.monotonic()
        cpu0 = cpu_seconds(server.pid)
        stored0 = metric_sum(admin, "tokenpulse_spans_stored_total")
        inserts0 = metric_sum(admin, "tokenpulse_storage_insert_rows_count")
        gc0 = metric_sum(admin, "tokenpulse_gc_pause_seconds_total")
        rules0 = rule_stats(admin)
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t_start
        # CPU per span over the load (merges it started may still run after it: not counted).
        cpu1 = cpu_seconds(server.pid)
        stored_in_load = metric_sum(admin, "tokenpulse_spans_stored_total") - stored0
        inserts = metric_sum(admin, "tokenpulse_storage_insert_rows_count") - inserts0
        gc_paused = metric_sum(admin, "tokenpulse_gc_pause_seconds_total") - gc0
        per_span = 1e6 / max(stored_in_load, 1)
        stored = int(requests.post(admin + "/api/sql", data="SELECT count() FROM spans", timeout=60)
                     .json()["data"][0][0])
        latencies.sort()
        forwarded = dropped = 0.0
        if sink is not None:  # let the forward queue drain, then read the service's own counts
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                forwarded = metric_sum(admin, "tokenpulse_forward_spans_total")
                dropped = metric_sum(admin, "tokenpulse_forward_dropped_spans_total")
                if forwarded + dropped >= stored:
                    break
                time.sleep(0.5)
        rss = peak_rss_mb(server.pid)
        rules1 = rule_stats(admin)
        rules = {}
        for r, (total, count, missed) in rules1.items():
            total0, count0, missed0 = rules0.get(r, (0.0, 0.0, 0.0))
            rules[r] = {"evaluations": count - count0, "mean_ms": 1000 * (total - total0) / max(count - count0, 1),
                        "missed_ticks": missed - missed0}
        slowest = bucket_max(admin)
        for r in rules:
            rules[r]["max_ms_bound"] = 1000 * slowest.get(r, float("nan"))
        return {"rules": rules,"forward": forward, "forwarded": forwarded, "forward_dropped": dropped,
                "sink_mb": sink.bytes / 1e6 if sink else 0.0,
            "transport": transport, "batch": batch, "concurrency": concurrency,
            "acked": counts["acked"], "stored": stored, "retries": counts["retry"],
            "spans_per_s": stored / elapsed, "mb_per_s": counts["bytes"] / elapsed / 1e6,
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
            "peak_rss_mb": rss,
            "cpu_python_us": (cpu1[0] - cpu0[0]) * per_span, "cpu_other_us": (cpu1[1] - cpu0[1]) * per_span,
            "rows_per_insert": stored_in_load / max(inserts, 1), "gc_us": gc_paused * per_span,
        }
    finally:
        server.terminate()
        server.wait(60)
        if sink is not None:
            sink.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transport", choices=("grpc", "http", "both"), default="both")
    p.add_argument("--batch", default="512,5000", help="spans per request, comma-separated")
    p.add_argument("--concurrency", type=int, default=8,
                   help="requests in flight (a Collector sending queue runs 10 consumers by default)")
    p.add_argument("--seconds", type=float, default=15.0, help="load duration per case")
    p.add_argument("--clickhouse-url", default=None, help="benchmark a ClickHouse server instead of chDB")
    p.add_argument("--server-arg", action="append", default=[], help="extra flag for `tokenpulse serve`, "
                   "e.g. --server-arg=--batch-eager-spans=20000 (repeatable)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="total spans/s to send, paced (default 0: as fast as the service acknowledges)")
    p.add_argument("--rules", action="store_true",
                   help="also print each alert rule's evaluation time during the load (the service runs every rule)")
    p.add_argument("--forward", choices=("off", "on", "both"), default="off",
                   help="forward every stored span to an OTLP/gRPC sink (both: each case without, then with)")
    p.add_argument("--no-raw-limit", dest="raw_limit", action="store_false",
                   help="skip the raw-bytes limit measured after each case (bench/rawbytes.py)")
    args = p.parse_args()
    SERVER_ARGS.extend(args.server_arg)
    transports = ("grpc", "http") if args.transport == "both" else (args.transport,)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}")
    forwards = {"off": (False,), "on": (True,), "both": (False, True)}[args.forward]
    print(f"{'transport':<9} {'batch':>6} {'conc':>4} {'forward':>7} {'spans/s stored':>15} {'MB/s':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'peak RSS MB':>11} {'acked=stored':>12} {'retries':>7} "
          f"{'forwarded':>10} {'fwd dropped':>11} {'rows/insert':>11} {'CPU us/span: python+other':>26} "
          f"{'of it gc':>8}")
    for transport in transports:
        for batch in (int(b) for b in args.batch.split(",")):
            for forward in forwards:
                r = run_case(transport, batch, args.concurrency, args.seconds, args.clickhouse_url, forward,
                             args.rate)
                fwd = f"{r['forwarded']:,.0f}" if forward else "-"
                fwd_dropped = f"{r['forward_dropped']:,.0f}" if forward else "-"
                print(f"{r['transport']:<9} {r['batch']:>6} {r['concurrency']:>4} {'on' if forward else 'off':>7} "
                      f"{r['spans_per_s']:>15,.0f} {r['mb_per_s']:>6.1f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
                      f"{r['peak_rss_mb']:>11.0f} {str(r['acked'] == r['stored']):>12} {r['retries']:>7} "
                      f"{fwd:>10} {fwd_dropped:>11} {r['rows_per_insert']:>11,.0f} "
                      f"{r['cpu_python_us'] + r['cpu_other_us']:>9.0f} = {r['cpu_python_us']:.0f} + "
                      f"{r['cpu_other_us']:.0f}{r['gc_us']:>15.1f}",
                      flush=True)
                if args.raw_limit:
                    print_raw_limit(r, min(args.seconds, 10.0))
                if args.rules:
                    print_rules(r["rules"])


def print_raw_limit(r: dict, seconds: float) -> None:
    """The raw-bytes limit for this case's requests (bench/rawbytes.py, its own process, run now that
    the service has stopped) and the case's figure as a share of it."""
    per_insert = max(1, round(r["rows_per_insert"] / r["batch"]))
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "rawbytes.py"),
                          "--json", "--batch", str(r["batch"]), "--per-insert", str(per_insert),
                          "--seconds", str(seconds)], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  raw-bytes limit: not measured ({(out.stderr.strip().splitlines() or ['?'])[-1]})")
        return
    raw = json.loads(out.stdout)
    print(f"  raw-bytes limit (chDB Protobuf input + one view, same requests, {per_insert} per insert): "
          f"{raw['spans_per_s']:,.0f} spans/s at {raw['cpu_us']:.1f} us CPU/span; "
          f"this case: {100 * r['spans_per_s'] / raw['spans_per_s']:.1f} % of it", flush=True)


def print_rules(rules: dict) -> None:
    print(f"  {'rule':<28} {'evaluations':>11} {'mean ms':>8} {'max ms <=':>9} {'ticks missed':>12}")
    for name, v in sorted(rules.items(), key=lambda kv: -kv[1]["mean_ms"]):
        print(f"  {name:<28} {v['evaluations']:>11.0f} {v['mean_ms']:>8.1f} {v['max_ms_bound']:>9.0f} "
              f"{v['missed_ticks']:>12.0f}")


if __name__ == "__main__":
    main()

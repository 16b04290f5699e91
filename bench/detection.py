"""Detection benchmark: time from the first anomalous span received to the webhook received.

Starts `tokenpulse serve` (embedded chDB, fresh directory, default rules, one
webhook channel pointing at a receiver in this process), then:

1. seeds 62 minutes of history at the steady rate (spans with past start
   times, through the real OTLP/HTTP receiver), so the baselines exist;
2. sends steady agent traffic in real time: several tenants, features and
   agent roles, sessions of a few turns with growing context, tools with
   varied arguments, known models, everything attributed;
3. a calm period (--calm-minutes): every alert that fires is a false alert;
4. incidents, each --repeats times, a new session or tenant each time:
   * loop:      one session calls the same tool with the same arguments over and over
   * explosion: one session's prompt doubles every turn (prompt-size explosion)
   * spike:     a stuck integration: one tenant sends 500k tokens at once (a steady tenant
                 sends ~15k a minute)
   and measures, for each, the time from the moment its first span was
   acknowledged by the receiver to the webhook carrying its alert.

Prints p50/p95 per incident kind and the false alerts of the calm period.

    python bench/detection.py [--calm-minutes 10] [--repeats 5] [--server-arg=--log-level=info]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

sys.path.insert(0, os.path.dirname(__file__))
from spans import _kv  # noqa: E402  (the shared attribute encoder)

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import Span  # noqa: E402

TENANTS = ["acme", "globex", "initech", "umbrella", "hooli"]
FEATURES = ["search", "support", "summarize"]
ROLES = ["planner", "worker"]
CALLS_PER_MINUTE = 60  # steady rate, all tenants together (~1,500 tokens per call)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hook:
    """The webhook receiver: records (arrival time, payload)."""

    def __init__(self):
        self.events: list[tuple[float, dict]] = []
        self.cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.cond:
                    hook.events.append((time.time(), body))
                    hook.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def firing_since(self, t: float) -> list[tuple[float, dict]]:
        with self.cond:
            return [(at, a) for at, body in self.events if at >= t for a in body["alerts"] if a["status"] == "firing"]

    def wait(self, match, since: float, timeout: float) -> float | None:
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for at, body in self.events:
                    if at >= since and any(a["status"] == "firing" and match(a["labels"]) for a in body["alerts"]):
                        return at
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(left)


def chat_span(start_ns: int, tenant: str, feature: str, role: str, session: str, inp: int, out: int,
              model: str = "gpt-4o-mini", trace: bytes | None = None, prompt: str = "") -> Span:
    s = Span(trace_id=trace or os.urandom(16), span_id=os.urandom(8), name=f"chat {model}",
             kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + 800_000_000)
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": model,
             "gen_ai.response.model": model, "gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out,
             "tenant.id": tenant, "app.feature": feature, "gen_ai.agent.name": role,
             "gen_ai.conversation.id": session}
    if prompt:
        attrs["gen_ai.input.messages"] = prompt
    s.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return s


def tool_span(start_ns: int, tenant: str, feature: str, session: str, tool: str, args: str) -> Span:
    s = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"execute_tool {tool}",
             kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + 50_000_000)
    attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "gen_ai.tool.call.arguments": args,
             "tenant.id": tenant, "app.feature": feature, "gen_ai.conversation.id": session}
    s.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return s


def body(spans: list[Span]) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", "bench-agents")])
    rs.scope_spans.add().spans.extend(spans)
    return req.SerializeToString()


class Traffic:
    """Steady traffic: sessions of 3-6 turns with slowly growing context, a tool call between turns."""

    def __init__(self, rnd: random.Random):
        self.rnd = rnd

    def calls(self, n: int, start_ns: int, span_ns: int) -> list[Span]:
        out = []
        while len(out) < n:
            tenant, feature = self.rnd.choice(TENANTS), self.rnd.choice(FEATURES)
            session = os.urandom(6).hex()
            base = self.rnd.randint(800, 1400)
            for turn in range(self.rnd.randint(3, 6)):
                t = start_ns + self.rnd.randrange(span_ns)
                out.append(chat_span(t, tenant, feature, ROLES[turn % 2], session, base + 150 * turn,
                                     self.rnd.randint(80, 200)))
                out.append(tool_span(t + 1, tenant, feature, session, self.rnd.choice(["search", "fetch", "sql"]),
                                     json.dumps({"q": os.urandom(4).hex()})))
        return out


def post(url: str, data: bytes) -> None:
    r = requests.post(url, data=data, headers={"Content-Type": "application/x-protobuf"}, timeout=30)
    r.raise_for_status()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calm-minutes", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gap-s", type=float, default=20.0, help="pause between incidents")
    p.add_argument("--server-arg", action="append", default=[])
    args = p.parse_args()

    hook = Hook()
    tmp = tempfile.mkdtemp(prefix="tp-detect-")
    ports = {k: free_port() for k in ("grpc", "http", "admin")}
    config = os.path.join(tmp, "config.yaml")
    with open(config, "w") as fh:
        json.dump({"alert_channels": {"default": {"type": "webhook", "url": hook.url}}}, fh)  # JSON is YAML
    cmd = [sys.executable, "-m", "tokenpulse.cli", "serve", "--config", config, "--listen-host", "127.0.0.1",
           "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]), "--admin-port", str(ports["admin"]),
           "--data-dir", os.path.join(tmp, "data"), "--log-level", "warning", *args.server_arg]
    server = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{ports['http']}/v1/traces"
    admin = f"http://127.0.0.1:{ports['admin']}"
    rnd = random.Random(7)
    traffic = Traffic(rnd)
    stop = threading.Event()
    try:
        for _ in range(600):
            try:
                if requests.get(admin + "/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        # 1. history: 62 minutes at the steady rate
        now = time.time()
        minute0 = int(now // 60 * 60)
        for m in range(62, 0, -1):
            post(url, body(traffic.calls(CALLS_PER_MINUTE, (minute0 - m * 60) * 10**9, 60 * 10**9)))
        print(f"seeded 62 minutes of history ({CALLS_PER_MINUTE} calls/min)", flush=True)

        # 2. steady traffic in real time: one session at a time, paced to CALLS_PER_MINUTE
        def steady():
            next_at = time.time()
            while not stop.is_set():
                spans = traffic.calls(1, int(time.time() * 1e9), 10**9)  # one session, 3-6 calls
                post(url, body(spans))
                next_at += (len(spans) // 2) * 60 / CALLS_PER_MINUTE
                stop.wait(max(0.0, next_at - time.time()))

        threading.Thread(target=steady, daemon=True).start()

        # 3. calm
        calm_start = time.time()
        print(f"calm period: {args.calm_minutes:g} minutes", flush=True)
        time.sleep(args.calm_minutes * 60)
        false_alerts = hook.firing_since(calm_start)

        # 4. incidents
        results: dict[str, list[float]] = {"loop": [], "explosion": [], "spike": []}
        missed: dict[str, int] = {k: 0 for k in results}
        for i in range(args.repeats):
            for kind in results:
                ns = time.time_ns()
                if kind == "loop":
                    session = f"loop-{i}"
                    spans = [tool_span(ns + j, "acme", "support", session, "search", '{"q": "status of order 42"}')
                             for j in range(5)]
                    match = lambda labels, s=session: labels.get("alertname") == "agent_loop" and labels.get("session") == s  # noqa: E731
                elif kind == "explosion":
                    session = f"explosion-{i}"
                    trace = os.urandom(16)
                    spans = [chat_span(ns + j * 1000, "globex", "summarize", "worker", session, 1000 * 2 ** j, 200,
                                       trace=trace) for j in range(12)]
                    match = lambda labels, s=session: labels.get("session") == s or labels.get("alertname") in (  # noqa: E731
                        "run_size_rate", "token_rate_anomaly", "token_rate_anomaly_by_role")
                else:
                    tenant = f"stuck-{i}"
                    spans = [chat_span(ns + j, tenant, "support", "worker", os.urandom(6).hex(), 12_000, 500)
                             for j in range(40)]
                    match = lambda labels, t=tenant: labels.get("alertname") == "tenant_outlier" and labels.get("tenant") == t  # noqa: E731
                post(url, body(spans))
                received = time.time()  # acknowledged: stored and visible to the rules
                at = hook.wait(match, received - 1, timeout=60)
                if at is None:
                    missed[kind] += 1
                    print(f"{kind} #{i}: no alert within 60 s", flush=True)
                else:
                    results[kind].append(at - received)
                    print(f"{kind} #{i}: webhook after {at - received:.2f} s", flush=True)
                # a random phase against the 5 s ticks: a fixed gap would always land just after one
                time.sleep(args.gap_s + rnd.uniform(0, 5))
        stop.set()

        print(f"\ncalm period {args.calm_minutes:g} min: {len(false_alerts)} false alerts"
              + "".join(f"\n  {a['labels'].get('alertname')} {a['annotations'].get('summary', '')}"
                        for _, a in false_alerts))
        print("incident    n  p50 s  p95 s  max s  missed")
        for kind, xs in results.items():
            xs.sort()
            if xs:
                p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
                print(f"{kind:<10} {len(xs):>2}  {xs[len(xs) // 2]:5.2f}  {p95:5.2f}  {xs[-1]:5.2f}  {missed[kind]}")
            else:
                print(f"{kind:<10}  0      -      -      -  {missed[kind]}")
        sums: dict[str, list[float]] = {}
        for line in requests.get(admin + "/metrics", timeout=10).text.splitlines():
            for suffix, i in (("_sum{", 0), ("_count{", 1)):
                if line.startswith("tokenpulse_alert_evaluation_seconds" + suffix):
                    rule = line.split('rule="', 1)[1].split('"', 1)[0]
                    sums.setdefault(rule, [0.0, 0.0])[i] = float(line.rsplit(" ", 1)[1])
        print("mean evaluation ms per rule: " + ", ".join(
            f"{r} {1000 * s / c:.0f}" for r, (s, c) in sorted(sums.items()) if c))
    finally:
        stop.set()
        server.terminate()
        server.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Detection benchmark: how fast incidents page, how often calm pages, how many pages one incident makes.

Starts `tokenpulse serve` (embedded chDB, fresh directory, the built-in rules) with three channels,
each a real local HTTP server speaking the vendor's side of the wire: Slack (incoming webhook),
PagerDuty (Events API v2) and an Alertmanager-style webhook; a routing tree sends every alert to
all three (PagerDuty takes critical ones, its default). Then:

1. seeds 62 minutes of history (spans with past start times, through the real OTLP/HTTP receiver):
   16 tenants with a heavy-tailed mix (the largest ~12x the median; each minute +-30 % noise);
2. sends the same traffic live, once a second;
3. a calm period (--calm-minutes): every page then is a false page;
4. incidents, each --repeats times, on a tenant at or near the median:
   * burst:    a stuck integration, 500k tokens at once;
   * rise3/10/20: the tenant's own rate rises 3x, 10x, 20x and stays there (--rise-seconds);
   * loop:     one session calls the same tool with the same arguments 5 times;
   * forecast: a tenant with a daily budget spends a quarter of it at once: at that rate the
               budget goes within hours (rule budget_forecast);
   and measures, for each, the time from its first span acknowledged to the first page on the
   webhook naming it, then waits until it is over and counts the messages each channel got for it
   (Slack and webhook: firing messages; PagerDuty: incidents opened, i.e. distinct dedup keys).

Prints p50/p95 per incident kind, the false pages of the calm period, pages per incident per channel.

    python bench/detection.py [--calm-minutes 5] [--repeats 3] [--server-arg=--log-level=info]

Alert evaluation time under load (`--evaluation-load 20000`): instead of the above, every rule's
evaluation time while the service stores that many spans/s (bench/ingest.py's paced gRPC load of
5,000-span requests for --evaluation-seconds): evaluations, mean ms, an upper bound of the slowest
(its histogram bucket), and ticks missed.

    python bench/detection.py --evaluation-load 20000 --evaluation-seconds 300
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

N_TENANTS = 16
MEDIAN_CALLS_PER_MIN = 12  # ~1,500 tokens a call: the median tenant burns ~18k tokens/min
TOKENS_PER_CALL = 1500
FEATURES = ["search", "support", "summarize"]
BUDGET_USD = 20.0  # the forecast tenants' daily budget


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A channel's receiving end: records (arrival time, JSON body); answers as the vendor does."""

    def __init__(self, kind: str):
        self.kind = kind
        self.events: list[tuple[float, dict]] = []
        self.cond = threading.Condition()
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with me.cond:
                    me.events.append((time.time(), json.loads(raw)))
                    me.cond.notify_all()
                status, text = {"slack": (200, "ok"), "pagerduty": (202, '{"status":"success"}')}.get(me.kind, (200, ""))
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def since(self, t: float) -> list[tuple[float, dict]]:
        with self.cond:
            return [(at, b) for at, b in self.events if at >= t]

    def pages(self, t0: float, t1: float, match) -> int:
        """Messages that told of a new firing alert about ``match`` in [t0, t1] (Slack, webhook), or
        incidents opened (PagerDuty: distinct dedup keys triggered)."""
        got = [(at, b) for at, b in self.since(t0) if at <= t1]
        if self.kind == "pagerduty":
            return len({b["dedup_key"] for _, b in got if b.get("event_action") == "trigger"
                        and match(b["payload"].get("custom_details", {}), b["payload"].get("class", ""))})
        if self.kind == "slack":
            return sum(1 for _, b in got if b["text"].startswith("[FIRING") and match_text(b, match))
        seen: set[str] = set()
        count = 0
        for _, b in got:  # the webhook carries the whole group: a message counts when it brings news
            new = {a["fingerprint"] for a in b["alerts"] if a["status"] == "firing"
                   and match(a["labels"], a["labels"]["alertname"]) and a["fingerprint"] not in seen}
            if new:
                count += 1
                seen |= new
        return count

    def first(self, since: float, match, timeout: float) -> float | None:
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for at, b in self.events:
                    if at >= since and any(a["status"] == "firing" and match(a["labels"], a["labels"]["alertname"])
                                           for a in b.get("alerts", [])):
                        return at
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(left)


def match_text(body: dict, match) -> bool:
    """A Slack message is about ``match`` when its text names the tenant/session the matcher wants."""
    return any(match({"tenant": word, "session": word, "key": word}, "") for word in
               body["text"].replace(",", " ").replace(":", " ").replace("(", " ").replace(")", " ").split())


def chat(start_ns: int, tenant: str, tokens: int, session: str = "", model: str = "gpt-4o-mini") -> Span:
    s = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"chat {model}", kind=Span.SPAN_KIND_CLIENT,
             start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + 800_000_000)
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": model,
             "gen_ai.response.model": model, "gen_ai.usage.input_tokens": tokens - tokens // 10,
             "gen_ai.usage.output_tokens": tokens // 10, "tenant.id": tenant, "app.feature": random.choice(FEATURES),
             "gen_ai.conversation.id": session or os.urandom(6).hex()}
    s.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return s


def tool(start_ns: int, tenant: str, session: str, name: str, args: str) -> Span:
    s = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"execute_tool {name}",
             kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + 50_000_000)
    attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name, "gen_ai.tool.call.arguments": args,
             "tenant.id": tenant, "app.feature": "support", "gen_ai.conversation.id": session}
    s.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return s


def body(spans: list[Span]) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", "bench-agents")])
    rs.scope_spans.add().spans.extend(spans)
    return req.SerializeToString()


class Mix:
    """16 tenants, heavy-tailed: tenant k sends ~ MEDIAN x (8.5 / (k + 1)) ** 1.2 calls/min (tenant-00 ~12x
    the median), each minute +-30 %; ``boost`` multiplies one tenant's rate (a sustained rise)."""

    def __init__(self, rnd: random.Random):
        self.rnd = rnd
        self.tenants = [f"tenant-{k:02d}" for k in range(N_TENANTS)]
        self.rate = {t: MEDIAN_CALLS_PER_MIN * (8.5 / (k + 1)) ** 1.2 for k, t in enumerate(self.tenants)}
        self.boost: dict[str, float] = {}
        self._noise: dict[tuple[str, int], float] = {}

    def median_tenants(self) -> list[str]:
        return self.tenants[6:11]  # around the middle of the mix

    def noise(self, tenant: str, minute: int) -> float:
        key = (tenant, minute)
        if key not in self._noise:
            self._noise[key] = self.rnd.uniform(0.7, 1.3)
        return self._noise[key]

    def second(self, t_ns: int) -> list[Span]:
        """One second of traffic starting at ``t_ns``."""
        minute = t_ns // (60 * 10**9)
        out = []
        for tenant in self.tenants:
            mean = self.rate[tenant] * self.noise(tenant, minute) * self.boost.get(tenant, 1.0) / 60
            n = int(mean) + (1 if self.rnd.random() < mean - int(mean) else 0)
            out += [chat(t_ns + self.rnd.randrange(10**9), tenant, int(TOKENS_PER_CALL * self.rnd.uniform(0.8, 1.2)))
                    for _ in range(n)]
        return out


def post(url: str, data: bytes) -> None:
    r = requests.post(url, data=data, headers={"Content-Type": "application/x-protobuf"}, timeout=30)
    r.raise_for_status()


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calm-minutes", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rise-seconds", type=float, default=45.0, help="how long a rise lasts")
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument("--evaluation-load", type=float, default=0.0, help="spans/s: measure rule evaluation time under it")
    p.add_argument("--evaluation-seconds", type=float, default=300.0)
    args = p.parse_args()
    if args.evaluation_load:
        import ingest

        ingest.SERVER_ARGS.extend(args.server_arg)
        r = ingest.run_case("grpc", 5000, 4, args.evaluation_seconds, None, False, args.evaluation_load)
        print(f"{r['spans_per_s']:,.0f} spans/s stored for {args.evaluation_seconds:g} s (asked {args.evaluation_load:,.0f}); "
              f"CPU {r['cpu_python_us'] + r['cpu_other_us']:.0f} us/span; every rule evaluated meanwhile:")
        ingest.print_rules(r["rules"])
        return

    slack, pd, hook = Receiver("slack"), Receiver("pagerduty"), Receiver("webhook")
    receivers = {"slack": slack, "pagerduty": pd, "webhook": hook}
    rnd = random.Random(7)
    mix = Mix(rnd)
    forecast_tenants = [f"budget-{i}" for i in range(args.repeats)]
    tmp = tempfile.mkdtemp(prefix="tp-detect-")
    ports = {k: free_port() for k in ("grpc", "http", "admin")}
    config = os.path.join(tmp, "config.yaml")
    with open(config, "w") as fh:
        json.dump({  # JSON is YAML
            "alert_channels": {"slack": {"type": "slack", "url": slack.url},
                               "pd": {"type": "pagerduty", "url": pd.url, "routing_key": "k" * 32},
                               "hook": {"type": "webhook", "url": hook.url}},
            "alert_route": {"routes": [{"match": {}, "channels": ["slack", "pd", "hook"]}]},
            "budgets": {t: {"dimension": "tenant", "value": t, "period": "day", "limit_usd": BUDGET_USD}
                        for t in forecast_tenants},
            "throttle_cooldown_s": 30,  # compressed: an incident is over 30 s after its alerts resolve
        }, fh)
    cmd = [sys.executable, "-m", "tokenpulse.cli", "serve", "--config", config, "--listen-host", "127.0.0.1",
           "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]), "--admin-port", str(ports["admin"]),
           "--data-dir", os.path.join(tmp, "data"), "--log-level", "warning", *args.server_arg]
    server = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{ports['http']}/v1/traces"
    admin = f"http://127.0.0.1:{ports['admin']}"
    stop = threading.Event()
    try:
        for _ in range(600):
            try:
                if requests.get(admin + "/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        # 1. history: 62 minutes of the mix, a minute per request
        now = int(time.time())
        for m in range(62 * 60, 0, -60):
            post(url, body([sp for s in range(60) for sp in mix.second((now - m + s) * 10**9)]))
        print(f"seeded 62 minutes of history: {N_TENANTS} tenants, median ~{MEDIAN_CALLS_PER_MIN} calls/min, "
              f"largest ~{mix.rate[mix.tenants[0]] / MEDIAN_CALLS_PER_MIN:.0f}x the median", flush=True)

        # 2. live, once a second
        def live():
            next_at = time.time()
            while not stop.is_set():
                post(url, body(mix.second(int(time.time() * 1e9) - 10**9)))
                next_at += 1.0
                stop.wait(max(0.0, next_at - time.time()))

        threading.Thread(target=live, daemon=True).start()

        # 3. calm
        calm_start = time.time()
        print(f"calm period: {args.calm_minutes:g} minutes", flush=True)
        time.sleep(args.calm_minutes * 60)
        false_pages = {name: r.pages(calm_start, time.time(), lambda labels, rule: True) for name, r in receivers.items()}

        # 4. incidents
        kinds = ("burst", "rise3", "rise10", "rise20", "loop", "forecast")
        latency: dict[str, list[float]] = {k: [] for k in kinds}
        missed = dict.fromkeys(kinds, 0)
        pages: dict[str, dict[str, list[int]]] = {k: {c: [] for c in receivers} for k in kinds}
        medians = mix.median_tenants()
        n = 0
        for i in range(args.repeats):
            for kind in kinds:
                n += 1
                tenant = medians[n % len(medians)]
                t0 = time.time()
                if kind == "burst":
                    post(url, body([chat(time.time_ns() + j, tenant, 12_500) for j in range(40)]))
                elif kind.startswith("rise"):
                    mix.boost[tenant] = float(kind[4:])
                elif kind == "loop":
                    tenant = f"loop-{i}"
                    post(url, body([tool(time.time_ns() + j, "tenant-00", tenant, "search", '{"q": "order 42"}')
                                    for j in range(5)]))
                else:
                    tenant = forecast_tenants[i]
                    # gpt-4o-mini at $0.15/M input: $5 (a quarter of the budget) in a few seconds
                    post(url, body([chat(time.time_ns() + j, tenant, 1_000_000) for j in range(37)]))

                def about(labels, rule, t=tenant):
                    return t in (labels.get("tenant"), labels.get("session"), labels.get("key"))

                at = hook.first(t0, about, timeout=90)
                if at is None:
                    missed[kind] += 1
                    print(f"{kind} #{i} ({tenant}): no page within 90 s", flush=True)
                else:
                    latency[kind].append(at - t0)
                    print(f"{kind} #{i} ({tenant}): paged after {at - t0:.1f} s", flush=True)
                if kind.startswith("rise"):
                    stop.wait(max(0.0, t0 + args.rise_seconds - time.time()))
                    mix.boost.pop(tenant, None)
                # over: nothing about it firing for 10 s (resolved, throttle released), at most 4 min
                deadline = time.time() + 240
                quiet_since = time.time()
                while time.time() < deadline:
                    firing = [a for a in requests.get(admin + "/api/alerts", timeout=10).json()["alerts"]
                              if a["state"] in ("pending", "firing") and about(a["labels"], a["rule"])]
                    if firing:
                        quiet_since = time.time()
                    elif time.time() - quiet_since > 10:
                        break
                    time.sleep(2)
                for name, r in receivers.items():
                    pages[kind][name].append(r.pages(t0, time.time(), about))
                time.sleep(rnd.uniform(0, 5))  # a random phase against the ticks
        stop.set()

        print(f"\ncalm period {args.calm_minutes:g} min, {N_TENANTS} tenants (heavy-tailed): false pages "
              + ", ".join(f"{c} {v}" for c, v in false_pages.items()))
        print(f"{'incident':<9} {'n':>2} {'p50 s':>6} {'p95 s':>6} {'max s':>6} {'missed':>6}   pages per incident "
              f"(mean, max): slack / pagerduty / webhook")
        for kind in kinds:
            xs = latency[kind]
            per = " / ".join(f"{sum(v) / max(len(v), 1):.1f}, {max(v, default=0)}" for v in pages[kind].values())
            if xs:
                print(f"{kind:<9} {len(xs):>2} {quantile(xs, .5):>6.1f} {quantile(xs, .95):>6.1f} {max(xs):>6.1f} "
                      f"{missed[kind]:>6}   {per}")
            else:
                print(f"{kind:<9}  0      -      -      - {missed[kind]:>6}   {per}")
    finally:
        stop.set()
        server.terminate()
        server.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`tokenpulse demo`: the point of tokenpulse in two minutes, without Grafana.

It starts the service on the embedded backend (or uses a running one, with
``--otlp-endpoint`` and ``--admin-url``) and drives agent traffic through the
real OTLP/gRPC receiver with the OpenTelemetry SDK:

* five tenants and their features, plus a few calls with no tenant or feature
  (the ``unattributed`` bucket) and a self-hosted model with no price;
* agent runs: a planner agent calls its model (with a cached system prompt),
  then a worker agent makes a few calls with growing context and calls tools;
* an hour of that history first (spans with past start times, sent in a few
  seconds), so the dashboard has something to show at once;
* then, live, three incidents: a tool loop in one session, a prompt-size
  explosion in another, and one tenant's stuck integration that gets it
  throttled; the steady traffic asks ``ThrottleGuard`` before each run, as an
  agent service would, so the throttled tenant's runs are refused until it is
  released.

A progress display prints each alert as it fires and resolves and each throttle
decision. At the end: the ``tokenpulse report`` overview, and what to try next.
The service then keeps serving (the dashboard is at the admin URL) until Ctrl-C,
unless ``--exit``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import urllib.request
import uuid
from typing import Callable

TENANTS = {"acme": 1.0, "globex": 0.9, "initech": 0.7, "umbrella": 0.6, "hooli": 0.5}  # relative traffic
FEATURES = {"acme": ["support-bot", "search"], "globex": ["research", "search"], "initech": ["crm-sync", "summarize"],
            "umbrella": ["codegen", "summarize"], "hooli": ["search", "support-bot"]}
MODELS = [("openai", "gpt-4o", 0.35), ("openai", "gpt-4o-mini", 0.35), ("anthropic", "claude-sonnet-4-5", 0.2),
          ("google", "gemini-2.5-flash", 0.07), ("selfhosted", "acme-llm-7b", 0.03)]  # the last one has no price
TOOLS = ["web_search", "crm_lookup", "code_exec", "vector_search"]

# Demo timings: fast rules, so the story fits in minutes (the defaults are in queries/rules/*.sql).
DEMO_RULES = {
    "agent_loop": {"interval": "2s", "keep_firing_for": "20s", "window": 60},
    "context_bloat": {"interval": "2s", "keep_firing_for": "20s", "window": 60},
    "tenant_outlier": {"interval": "2s", "keep_firing_for": "10s"},
    "tenant_spike": {"keep_firing_for": "10s"},
    "token_rate_anomaly": {"interval": "5s", "keep_firing_for": "20s"},
    "token_rate_anomaly_by_role": {"interval": "5s", "keep_firing_for": "20s"},
}
INCIDENT_RULES = ("agent_loop", "context_bloat", "tenant_outlier")
# --quick, a shorter story (the test runs it): windows of 20 s, alerts and throttles that let go sooner.
# tenant_outlier's sliding minute cannot shrink, so the story still takes about a minute and a half.
QUICK_RULES = {name: {**rule, "keep_firing_for": "5s", **({"window": 20} if "window" in rule else {})}
               for name, rule in DEMO_RULES.items()}


class Traffic:
    """Agent runs as OpenTelemetry spans, sent with the SDK's OTLP/gRPC exporter."""

    def __init__(self, endpoint: str, speed: float = 1.0, seed: int = 7, throttle_url: str | None = None):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.speed = speed
        self.rnd = random.Random(seed)
        self._lock = threading.Lock()  # random.Random and the counters are shared by threads
        self.provider = TracerProvider(resource=Resource.create({"service.name": "demo-agents",
                                                                 "deployment.environment.name": "demo"}))
        self.provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, insecure=True), max_queue_size=200_000,
            schedule_delay_millis=200, max_export_batch_size=2048))
        self.tracer = self.provider.get_tracer("tokenpulse.demo")
        self.guard = None
        if throttle_url:
            from tokenpulse.client import ThrottleGuard

            self.guard = ThrottleGuard(throttle_url, cache_s=1.0)
        self.runs = 0
        self.refused: dict[str, int] = {}

    # ------------------------------------------------------------ spans
    def _span(self, name, parent, start_ns, end_ns, attrs, kind=None, error=False):
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        ctx = trace.set_span_in_context(parent) if parent is not None else None
        s = self.tracer.start_span(name, context=ctx, kind=kind or SpanKind.INTERNAL, attributes=attrs,
                                   start_time=start_ns)
        if error:
            s.set_status(Status(StatusCode.ERROR, "run failed"))
        if end_ns is not None:
            s.end(end_time=end_ns)
        return s

    def _chat(self, parent, t: int, provider: str, model: str, inp: int, out: int, cached: int = 0,
              extra: dict | None = None) -> int:
        from opentelemetry.trace import SpanKind

        dur = int((0.4 + out / 400) * 1e9)
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model,
                 "gen_ai.response.model": model, "gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out}
        if cached:
            attrs["gen_ai.usage.cache_read.input_tokens"] = cached
        self._span(f"chat {model}", parent, t, t + dur, {**attrs, **(extra or {})}, SpanKind.CLIENT)
        return t + dur + 2_000_000

    def _tool(self, parent, t: int, tool: str, args: str) -> int:
        dur = int(self.rnd.uniform(0.05, 0.6) * 1e9)
        self._span(f"execute_tool {tool}", parent, t, t + dur,
                   {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                    "gen_ai.tool.call.arguments": args})
        return t + dur + 1_000_000

    def _model(self) -> tuple[str, str]:
        x, acc = self.rnd.random(), 0.0
        for provider, model, share in MODELS:
            acc += share
            if x < acc:
                return provider, model
        return MODELS[0][:2]

    def agent_run(self, t: int, tenant: str | None, feature: str | None, turns: int | None = None) -> int:
        """One planner -> worker run starting at ``t`` (ns); returns its end."""
        rnd = self.rnd
        session = f"sess-{uuid.uuid4().hex[:12]}"
        root_attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner", "session.id": session}
        if tenant:
            root_attrs["tenant.id"] = tenant
            root_attrs["user.id"] = f"user-{rnd.randint(1, 40)}@{tenant}.example"
        if feature:
            root_attrs["app.feature"] = feature
        root = self._span("invoke_agent planner", None, t, None, root_attrs)
        provider, model = self._model()
        system = rnd.choice((1800, 2400, 3200))
        t = self._chat(root, t + 3_000_000, provider, model, system + rnd.randint(200, 900), rnd.randint(80, 300),
                       cached=system if provider != "selfhosted" else 0)
        worker = self._span("invoke_agent worker", root, t, None,
                            {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "worker"})
        context = rnd.randint(1500, 4000)
        for _ in range(turns if turns is not None else rnd.randint(2, 4)):
            out = rnd.randint(150, 700)
            t = self._chat(worker, t, provider, model, context, out)
            context += out
            if rnd.random() < 0.7:
                tool = rnd.choice(TOOLS)
                t = self._tool(worker, t, tool, json.dumps({"q": f"{tool} {rnd.randint(1, 10**6)}"}))
                context += rnd.randint(300, 2500)  # the tool's result goes into the next prompt
        worker.end(end_time=t)
        root.set_status(_status(rnd.random() >= 0.06))
        root.end(end_time=t + 1_000_000)
        return t

    def pick(self) -> tuple[str | None, str | None]:
        if self.rnd.random() < 0.05:  # an integration nobody tagged: the unattributed bucket
            return None, None
        tenant = self.rnd.choices(list(TENANTS), weights=list(TENANTS.values()))[0]
        return tenant, self.rnd.choice(FEATURES[tenant])

    # ------------------------------------------------------------ traffic
    def seed_history(self, minutes: int = 60, runs_per_minute: int = 40) -> int:
        """Past traffic, sent now: start times spread over the last ``minutes``."""
        now = time.time_ns()
        n = 0
        with self._lock:
            for m in range(minutes, 0, -1):
                for _ in range(int(runs_per_minute * self.speed)):
                    start = now - m * 60 * 10**9 + self.rnd.randint(0, 59 * 10**9)
                    self.agent_run(start, *self.pick())
                    n += 1
        self.provider.force_flush()
        return n

    def steady(self, stop: threading.Event, runs_per_second: float = 0.7) -> None:
        """Live traffic until ``stop``; asks ThrottleGuard first, as an agent service would."""
        from tokenpulse.client import TenantThrottled

        while not stop.wait(self.rnd.expovariate(runs_per_second * self.speed)):
            with self._lock:
                tenant, feature = self.pick()
            if self.guard is not None and tenant:
                try:
                    self.guard.check(tenant)
                except TenantThrottled:
                    self.refused[tenant] = self.refused.get(tenant, 0) + 1
                    continue
            with self._lock:
                self.agent_run(time.time_ns(), tenant, feature)
                self.runs += 1

    # ------------------------------------------------------------ incidents
    def tool_loop(self, tenant: str = "globex", feature: str = "research", repeats: int = 8) -> None:
        """One session calls the same tool with the same arguments again and again."""
        with self._lock:
            t = time.time_ns()
            root = self._span("invoke_agent researcher", None, t, None, {
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "researcher",
                "tenant.id": tenant, "app.feature": feature, "session.id": "sess-stuck-in-a-loop"})
            context = 3000
            for _ in range(repeats):
                t = self._chat(root, t, "openai", "gpt-4o", context, 120)
                t = self._tool(root, t, "web_search", '{"q": "latest pricing page", "page": 1}')
                context += 900
            root.set_status(_status(False))
            root.end(end_time=t)
        self.provider.force_flush()

    def prompt_explosion(self, tenant: str = "acme", feature: str = "support-bot", turns: int = 14) -> None:
        """One session's prompt grows by 40 % every turn: the whole history is resent each time."""
        with self._lock:
            t = time.time_ns()
            root = self._span("invoke_agent support", None, t, None, {
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support",
                "tenant.id": tenant, "app.feature": feature, "session.id": "sess-ever-growing-prompt"})
            context = 2000.0
            for _ in range(turns):
                t = self._chat(root, t, "anthropic", "claude-sonnet-4-5", int(context), 400)
                context *= 1.4
            root.end(end_time=t)
        self.provider.force_flush()

    def stuck_integration(self, stop: threading.Event, tenant: str = "initech", feature: str = "crm-sync",
                          seconds: float = 20.0) -> None:
        """A tenant's integration retries the same huge request in a tight loop."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop.is_set():
            with self._lock:
                for _ in range(2):
                    t = time.time_ns()
                    root = self._span("crm sync batch", None, t, None, {"tenant.id": tenant, "app.feature": feature})
                    self._chat(root, t, "openai", "gpt-4o", 28_000, 50)
                    root.end(end_time=t + 10**9)
            time.sleep(0.1)
        self.provider.force_flush()

    def close(self) -> None:
        self.provider.shutdown()


def _status(ok: bool):
    from opentelemetry.trace import Status, StatusCode

    return Status(StatusCode.OK if ok else StatusCode.ERROR)


# ---------------------------------------------------------------- the show


class Watcher:
    """Polls the admin API and prints what changed: alerts firing and resolving, throttles."""

    def __init__(self, admin_url: str, started: float, out=sys.stdout):
        self.admin_url = admin_url.rstrip("/")
        self.started = started
        self.out = out
        self.states: dict[str, str] = {}
        self.throttled: set[str] = set()
        self.seen: dict[str, set[str]] = {"firing": set(), "resolved": set()}  # rules
        self.throttled_ever: set[str] = set()
        self.released: set[str] = set()

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.admin_url + path, timeout=5) as r:
            return json.loads(r.read())

    def say(self, text: str) -> None:
        t = time.monotonic() - self.started
        print(f"  [{int(t) // 60:02d}:{int(t) % 60:02d}] {text}", file=self.out, flush=True)

    def poll(self) -> None:
        try:
            alerts = self._get("/api/alerts")["alerts"]
            throttled = self._get("/v1/throttle")["throttled"]
        except Exception as e:  # the service is busy: try again next second
            self.say(f"(admin API: {e})")
            return
        for a in alerts:
            if a["rule"] == "tenant_throttled":
                continue  # the throttle has its own lines (THROTTLE, released) below
            before = self.states.get(a["fingerprint"])
            if a["state"] != before and a["state"] in ("firing", "resolved"):
                what = a["annotations"].get("summary") or a["rule"]
                mark = "FIRING  " if a["state"] == "firing" else "resolved"
                if a["state"] == "firing" or before == "firing":
                    self.say(f"{mark} {a['rule']}: {what}")
                self.seen[a["state"]].add(a["rule"])
            self.states[a["fingerprint"]] = a["state"]
        now = {d["tenant"] for d in throttled}
        for d in throttled:
            if d["tenant"] not in self.throttled:
                self.say(f"THROTTLE {d['tenant']}: {d.get('reason') or d.get('message', '')}")
                self.throttled_ever.add(d["tenant"])
        for tenant in self.throttled - now:
            self.say(f"released {tenant}: calm again, its agents may run")
            self.released.add(tenant)
        self.throttled = now

    def story_done(self) -> bool:
        """Every incident alert fired and resolved, and every throttled tenant was released."""
        fired = {r for r in INCIDENT_RULES if r in self.seen["firing"]}
        return bool(fired) and fired <= self.seen["resolved"] and not self.throttled \
            and self.throttled_ever <= self.released


def _serve_in_process(args):
    from tokenpulse.config import load_settings
    from tokenpulse.service import Service

    settings = load_settings({
        "data_dir": args.data_dir, "grpc_port": args.grpc_port, "http_port": args.http_port,
        "admin_port": args.admin_port, "alert_rules": QUICK_RULES if args.quick else DEMO_RULES,
        "throttle_cooldown_s": 5 if args.quick else 20,
        "log_level": "error",  # the progress display tells the story
    })
    svc = Service(settings).start()
    return svc, f"127.0.0.1:{svc.grpc.port}", f"http://127.0.0.1:{svc.admin.port}", \
        f"http://127.0.0.1:{svc.http.port}"


def _ignore_interrupts() -> None:
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (a test driving the demo): nothing to protect
        pass


def run(args: argparse.Namespace, cli: Callable[[list[str]], int]) -> int:
    """``cli``: the command line's entry point, for the closing report."""
    svc = None
    if args.otlp_endpoint:
        endpoint, admin = args.otlp_endpoint, args.admin_url
        throttle_url = args.throttle_url or admin
    else:
        print(f"Starting tokenpulse (embedded ClickHouse in {args.data_dir}) ...", flush=True)
        svc, endpoint, admin, throttle_url = _serve_in_process(args)
    timings = "the demo's own alert timings: fast" if svc is not None else "that service's own alert timings"
    print(f"  OTLP/gRPC {endpoint}   dashboard {admin}/   ({timings})\n", flush=True)
    traffic = Traffic(endpoint, args.speed, throttle_url=throttle_url)
    stop = threading.Event()
    started = time.monotonic()
    watcher = Watcher(admin, started)
    try:
        watcher.say("sending an hour of agent history: 5 tenants, planner/worker agents, tools ...")
        n = traffic.seed_history()
        watcher.say(f"{n} past agent runs sent; live traffic starts now (open the dashboard: {admin}/)")
        live = threading.Thread(target=traffic.steady, args=(stop,), daemon=True)
        live.start()
        total = max(args.minutes, 1.0) * 60
        plan = [(0.10, "a tool loop: one globex session calls web_search with the same arguments, over and over",
                 traffic.tool_loop),
                (0.20, "a prompt-size explosion: one acme session resends its whole history every turn",
                 traffic.prompt_explosion),
                (0.30, "initech's CRM integration gets stuck, retrying a 28k-token request 20 times a second",
                 lambda: threading.Thread(target=traffic.stuck_integration, args=(stop,),
                                          kwargs={"seconds": 10.0 if args.quick else 20.0}, daemon=True).start())]
        if args.quick:  # the incidents at 2, 4 and 6 s
            plan = [(i * 2 / total, what, act) for i, (_, what, act) in enumerate(plan, 1)]
        deadline = started + total
        while time.monotonic() < deadline or (not watcher.story_done() and time.monotonic() < deadline + 240):
            elapsed = time.monotonic() - started
            while plan and elapsed >= plan[0][0] * total:
                _, text, act = plan.pop(0)
                watcher.say(f"INCIDENT {text}")
                act()
            watcher.poll()
            time.sleep(1.0)
        watcher.poll()
        stop.set()
        live.join(5)
        refused = ", ".join(f"{t}: {n}" for t, n in traffic.refused.items()) or "none"
        print(f"\n{traffic.runs} live agent runs; runs refused by ThrottleGuard while throttled: {refused}\n")
        cli(["report", "--since", "1h", "--admin-url", admin])
        print(f"""
What to try next:
  dashboard            {admin}/
  one panel            tokenpulse report tokens_per_run --since 1h --admin-url {admin}
  your own SQL         tokenpulse sql "SELECT tenant, round(sum(cost_usd), 4) FROM spans GROUP BY tenant" --admin-url {admin}
  alerts and history   tokenpulse alerts list --admin-url {admin}; tokenpulse alerts history --admin-url {admin}
  your own agents      OTEL_EXPORTER_OTLP_ENDPOINT=http://{endpoint} python my_agent.py
""", flush=True)
        if svc is not None and not args.exit:
            print("Serving until Ctrl-C (the data stays in " + args.data_dir + ").", flush=True)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        _ignore_interrupts()  # a second Ctrl-C must not cut the shutdown short (the engine left open crashes)
        stop.set()
        traffic.close()
        if svc is not None:
            svc.shutdown()

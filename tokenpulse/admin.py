"""The admin API, bound to 127.0.0.1 by default.

GET /healthz   JSON; 200 when storage accepts writes, 503 (status "degraded") while it fails
GET /metrics   Prometheus text format
GET|POST /api/sql   a read-only query (``q`` parameter or POST body); ``format`` is
               json (ClickHouse JSONCompact: meta, data, rows), csv or tsv (with a header row); a
               statement with its own FORMAT clause is answered in that format, as ClickHouse produces it.
               One statement that only reads (queries/user_sql.py), on the users' own
               connection, one at a time: 503 + Retry-After when another has run 5 s
GET /api/panels     the dashboard panels and their parameters
GET /api/panels/{name}?since=1h&by=feature&tenant=...   one panel:
               {"panel", "title", "params", "columns", "rows"}
GET /api/alerts     alert instances now (pending, firing, recently resolved) and rules that failed to load
GET /api/alerts/rules   the loaded rules with their settings
GET /runbooks           each loaded rule's runbook (what it means, what to do first; rules link here)
GET /api/alerts/history?since=1d&rule=NAME&limit=200   state changes, newest first
POST /api/alerts/rules/{name}/test[?send=1]   evaluate a rule now (state untouched); send=1 also
               delivers the result as a test notification
GET /v1/throttle[/{tenant}]   throttle decisions (also on the OTLP/HTTP port, for agent services)
POST /api/throttle/{tenant}   {"for": "30m", "reason": "...", "actor": "..."}: throttle by hand
DELETE /api/throttle/{tenant}?actor=NAME   release by hand
POST /api/prices/reload   re-read the price file now (422 and the prices in force kept when it is invalid)
POST /api/prices/reprice  {"since": "7d", "until": "1h", "model", "provider", "tenant", "dry_run", "actor"}:
               re-price stored spans with the prices in force (enrich/reprice.py)
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from tokenpulse.errors import QueryBusy, StorageError
from tokenpulse.alerts.rules import RuleError
from tokenpulse.queries import QueryError, load_panels, parse_duration, run as run_panel, user_sql

SQL_FORMATS = {"json": ("JSONCompact", "application/json"),
               "csv": ("CSVWithNames", "text/csv"),
               "tsv": ("TSVWithNames", "text/tab-separated-values")}


@dataclass(frozen=True)
class AdminView:
    """What the admin API may see of the service: narrow, read-only views. Getters, because the
    evaluator and the throttler start after the admin port (which answers /healthz meanwhile)."""

    settings: Any  # tokenpulse.config.Settings (the admin token, the role, the throttle list setting)
    health: Callable[[], dict]
    metrics_text: Callable[[], bytes]
    backend: Callable[[], Any]  # storage.backend.Backend: query, user_query
    evaluator: Callable[[], Any]  # alerts.engine.Evaluator | None
    rule_errors: Callable[[], list]
    throttler: Callable[[], Any]  # alerts.throttle.Throttler | None
    prices: Callable[[], Any] = lambda: None  # enrich.reload.PriceReloader | None
    reprice: Callable[[Any], Any] | None = None  # RepriceRequest -> RepriceReport (enrich/reprice.py)


class AdminServer:
    def __init__(self, view: AdminView, host: str, port: int, ssl_context=None):
        self.view = view
        self.ssl_context = ssl_context  # admin_tls: the OTLP receivers' certificate
        self.host = host
        self.port = port
        self.runner: web.AppRunner | None = None
        self.panels = load_panels()
        self.user_query_wait_s = 5.0  # a user query waits this long for the one before it, then 503

    async def start(self) -> int:
        app = web.Application(client_max_size=1024 * 1024, middlewares=[self._auth])
        from tokenpulse.dashboard import STATIC_DIR

        app.router.add_get("/", self._dashboard)
        app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/sql", self._sql)
        app.router.add_post("/api/sql", self._sql)
        app.router.add_get("/api/panels", self._panels)
        app.router.add_get("/api/panels/{name}", self._panel)
        app.router.add_get("/api/alerts", self._alerts)
        app.router.add_get("/api/alerts/rules", self._alert_rules)
        app.router.add_get("/runbooks", self._runbooks)
        app.router.add_get("/api/alerts/history", self._alert_history)
        app.router.add_post("/api/alerts/rules/{name}/test", self._alert_test)
        add_throttle_routes(app.router, self.view)
        app.router.add_post("/api/throttle/{tenant}", self._throttle_set)
        app.router.add_delete("/api/throttle/{tenant}", self._throttle_clear)
        app.router.add_post("/api/prices/reload", self._prices_reload)
        app.router.add_post("/api/prices/reprice", self._prices_reprice)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self.port

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        """With admin_token_sha256 set, every route but /healthz needs ``Authorization: Bearer TOKEN``."""
        digest = self.view.settings.admin_token_sha256
        # The page and its static files hold no data: the page asks for the token for its API calls.
        # /runbooks: rule texts and thresholds, no data; linked from messages opened in a browser
        public = request.path in ("/healthz", "/", "/runbooks") or request.path.startswith("/static/")
        if digest and not public:
            import hashlib
            import hmac

            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            given = hashlib.sha256(token.strip().encode()).hexdigest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, digest):
                return web.json_response({"error": "admin API: missing or wrong token (Authorization: Bearer)"},
                                         status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _dashboard(self, request: web.Request) -> web.Response:
        from tokenpulse.dashboard import STATIC_DIR

        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _healthz(self, request: web.Request) -> web.Response:
        health = self.view.health()
        return web.json_response(health, status=200 if health["status"] == "ok" else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.view.metrics_text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _sql(self, request: web.Request) -> web.Response:
        sql = request.query.get("q")
        if sql is None and request.method == "POST":
            sql = (await request.text()).strip()
        if not sql:
            return web.json_response({"error": "no query: pass q=... or a POST body"}, status=400)
        fmt = request.query.get("format", "json")
        if fmt not in SQL_FORMATS:
            return web.json_response({"error": f"format must be one of {', '.join(SQL_FORMATS)}"}, status=400)
        ch_format, ctype = SQL_FORMATS[fmt]
        try:
            user_sql.check(sql)
            own = user_sql.output_format(sql)
        except QueryError as e:
            return web.json_response({"error": f"refused: {e}"}, status=400)
        if own is not None:  # the statement's FORMAT wins in ClickHouse: answer what it produces, labelled so
            ch_format, ctype = own, user_sql.content_type(own)
        loop = asyncio.get_running_loop()
        try:
            body = await loop.run_in_executor(None, self.view.backend().user_query, sql, ch_format,
                                              self.user_query_wait_s)
        except QueryBusy as e:
            return web.json_response({"error": str(e)}, status=503,
                                      headers={"Retry-After": str(max(1, round(self.user_query_wait_s)))})
        except StorageError as e:
            return web.json_response({"error": str(e), "code": e.code}, status=400)
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def _panels(self, request: web.Request) -> web.Response:
        return web.json_response([q.describe() for q in self.panels.values()])

    async def _panel(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        query = self.panels.get(name)
        if query is None:
            return web.json_response({"error": f"no panel {name!r}; see /api/panels"}, status=404)
        values = dict(request.query)
        loop = asyncio.get_running_loop()
        try:
            columns, rows = await loop.run_in_executor(None, run_panel, self.view.backend(), query, values)
        except QueryError as e:
            return web.json_response({"error": str(e)}, status=400)
        except StorageError as e:
            return web.json_response({"error": str(e), "code": e.code}, status=500)
        return web.json_response({"panel": name, "title": query.title, "params": values, "columns": columns,
                                  "rows": rows})


    # ------------------------------------------------------------ alerts
    def _evaluator(self):
        ev = self.view.evaluator()
        if ev is None:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": f"alerts are not evaluated by this process (role "
                                          f"{self.view.settings.role})"}), content_type="application/json")
        return ev

    async def _alerts(self, request: web.Request) -> web.Response:
        ev = self._evaluator()
        rule = request.query.get("rule")
        alerts = [alert_json(a) for a in ev.active() if rule in (None, a.rule)]
        return web.json_response({"alerts": alerts,
                                  "rule_errors": [str(e) for e in self.view.rule_errors()] + list(ev.errors.values())})

    async def _alert_rules(self, request: web.Request) -> web.Response:
        ev = self._evaluator()
        return web.json_response({"rules": [r.describe() for r in ev.rules.values()],
                                  "rule_errors": [str(e) for e in self.view.rule_errors()]})

    async def _runbooks(self, request: web.Request) -> web.Response:
        from tokenpulse.alerts.runbook import render

        return web.Response(text=render(self._evaluator().rules.values()), content_type="text/html")

    async def _alert_history(self, request: web.Request) -> web.Response:
        try:
            since = parse_duration(request.query.get("since", "1d"))
            limit = int(request.query.get("limit", "200"))
        except (QueryError, ValueError):
            return web.json_response({"error": "since must be a duration (e.g. 1h, 7d), limit a number"}, status=400)
        params = {"since": since, "limit": max(1, min(limit, 10_000)), "rule": request.query.get("rule", "")}
        sql = ("SELECT at, rule, state, previous, severity, value, summary, labels, fingerprint FROM alerts "
               "WHERE at >= now64(3) - toIntervalSecond({since:UInt32}) AND ({rule:String} = '' OR rule = {rule:String}) "
               "ORDER BY at DESC, rule LIMIT {limit:UInt32}")
        loop = asyncio.get_running_loop()
        try:
            body = await loop.run_in_executor(None, lambda: self.view.backend().query(sql, "JSONCompact", True, params))
        except StorageError as e:
            return web.json_response({"error": str(e), "code": e.code}, status=500)
        columns, rows = parse_sql_json(body)
        return web.json_response({"columns": columns, "rows": rows})

    async def _alert_test(self, request: web.Request) -> web.Response:
        import time

        ev = self._evaluator()
        name = request.match_info["name"]
        if name not in ev.rules:
            return web.json_response({"error": f"no rule {name!r}; see /api/alerts/rules"}, status=404)
        send = request.query.get("send", "0") in ("1", "true", "yes")
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, ev.test, name, time.time(), send)
        except (RuleError, StorageError) as e:
            return web.json_response({"error": str(e)}, status=500)
        return web.json_response(result)


    async def _prices_reload(self, request: web.Request) -> web.Response:
        reloader = self.view.prices()
        if reloader is None:
            return web.json_response({"error": "this process does not price spans (role evaluator) or is starting"},
                                     status=503)
        got = await asyncio.get_running_loop().run_in_executor(None, reloader.reload, "POST /api/prices/reload")
        body = {"ok": got.ok, "message": got.message, "overrides": got.overrides}
        return web.json_response(body if got.ok else {**body, "error": got.message}, status=200 if got.ok else 422)

    async def _prices_reprice(self, request: web.Request) -> web.Response:
        import time

        from tokenpulse.enrich.reprice import RepriceRequest
        from tokenpulse.errors import ConfigError

        if self.view.reprice is None:
            return web.json_response({"error": "re-pricing is not available in this process"}, status=503)
        try:
            doc = await request.json() if request.can_read_body else {}
            if not isinstance(doc, dict):
                raise ValueError(doc)
            now = time.time()
            req = RepriceRequest(since_s=_moment(str(doc.get("since", "")), now),
                                 until_s=_moment(str(doc.get("until") or "0s"), now),
                                 model=str(doc.get("model") or ""), provider=str(doc.get("provider") or ""),
                                 tenant=str(doc.get("tenant") or ""), dry_run=bool(doc.get("dry_run")),
                                 actor=str(doc.get("actor") or "operator"))
        except (ValueError, QueryError) as e:
            return web.json_response({"error": 'body must be JSON {"since": "7d" or an ISO time, "until": ..., '
                                               f'"model", "provider", "tenant", "dry_run", "actor"}}: {e}'}, status=400)
        try:
            report = await asyncio.get_running_loop().run_in_executor(None, self.view.reprice, req)
        except ConfigError as e:
            return web.json_response({"error": str(e)}, status=409)
        except StorageError as e:
            return web.json_response({"error": str(e), "code": e.code}, status=500)
        return web.json_response(report.as_json())

    def _deciding_throttler(self):
        throttler = self.view.throttler()
        if throttler is None or self.view.settings.role == "receiver":
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "throttle decisions are made by the evaluator process"}),
                content_type="application/json")
        return throttler

    async def _throttle_set(self, request: web.Request) -> web.Response:
        import time

        throttler = self._deciding_throttler()
        try:
            doc = await request.json() if request.can_read_body else {}
            if not isinstance(doc, dict):
                raise ValueError(doc)
        except ValueError:
            return web.json_response({"error": 'body must be JSON {"for": "30m", "reason": "...", "actor": "..."}'},
                                     status=400)
        try:
            for_s = parse_duration(str(doc.get("for", "30m")))
        except QueryError as e:  # name the bad duration ("for": "banana")
            return web.json_response({"error": f'"for": {e}'}, status=400)
        tenant = request.match_info["tenant"]
        reason = str(doc.get("reason") or "throttled by hand")
        actor = str(doc.get("actor") or "operator")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, throttler.set, tenant, for_s, reason, actor, time.time())
        return web.json_response(throttler.book.decision(tenant, time.time()))

    async def _throttle_clear(self, request: web.Request) -> web.Response:
        import time

        throttler = self._deciding_throttler()
        tenant = request.match_info["tenant"]
        actor = request.query.get("actor", "operator")
        loop = asyncio.get_running_loop()
        events = await loop.run_in_executor(None, throttler.clear, tenant, actor, time.time())
        return web.json_response({**throttler.book.decision(tenant, time.time()), "released": bool(events)})


def add_throttle_routes(router, view: AdminView, auth=None, otlp_port: bool = False) -> None:
    """The decision API agent services call: ``GET /v1/throttle`` and ``GET /v1/throttle/{tenant}``.
    Served from memory, on the OTLP/HTTP port and the admin port alike. On the OTLP port with API
    keys configured, a key is needed, and a key bound to a tenant sees only that tenant. Without
    keys, the OTLP port (often public) serves the list of every throttled tenant only with the admin
    token, unless ``throttle_list_open``; a tenant's own decision stays readable for its agents."""
    import hashlib
    import hmac
    import time

    def list_allowed(request: web.Request) -> web.Response | None:
        s = view.settings
        if not otlp_port or (auth is not None and auth.enabled) or s.throttle_list_open:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if s.admin_token_sha256 and scheme.lower() == "bearer" and hmac.compare_digest(
                hashlib.sha256(token.strip().encode()).hexdigest(), s.admin_token_sha256):
            return None
        return web.json_response({"error": "the list of throttled tenants is not served on the OTLP port without "
                                           "an API key or the admin token; read it on the admin port, or set "
                                           "throttle_list_open"}, status=403)

    def allowed(request: web.Request, tenant: str | None) -> web.Response | None:
        if auth is None or not auth.enabled:
            return None
        key = auth.check(request.headers.get("Authorization"))
        if key is None:
            return web.json_response({"error": "missing or unknown API key"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        if key.tenant and tenant != key.tenant:
            return web.json_response({"error": f"this key may only read tenant {key.tenant}"}, status=403)
        return None

    async def one(request: web.Request) -> web.Response:
        throttler = view.throttler()
        if throttler is None:
            return web.json_response({"error": "throttling is not available in this process"}, status=503)
        tenant = request.match_info["tenant"]
        refused = allowed(request, tenant)
        return refused or web.json_response(throttler.book.decision(tenant, time.time()))

    async def every(request: web.Request) -> web.Response:
        throttler = view.throttler()
        if throttler is None:
            return web.json_response({"error": "throttling is not available in this process"}, status=503)
        key = auth.check(request.headers.get("Authorization")) if auth is not None and auth.enabled else None
        refused = list_allowed(request) or allowed(request, key.tenant if key and key.tenant else None)
        if refused:
            return refused
        decisions = throttler.book.all(time.time())
        if key is not None and key.tenant:
            decisions = [d for d in decisions if d["tenant"] == key.tenant]
        return web.json_response({"throttled": decisions})

    router.add_get("/v1/throttle", every)
    router.add_get("/v1/throttle/{tenant}", one)


def _moment(text: str, now: float) -> float:
    """A time given as a duration back from now ("7d", "90m") or an ISO date/time (UTC if no zone)."""
    from datetime import datetime, timezone

    if not text:
        raise ValueError("since is required")
    try:
        return now - parse_duration(text)
    except QueryError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (7d, 90m) nor an ISO time") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def alert_json(a) -> dict:
    return {"fingerprint": a.fingerprint, "rule": a.rule, "state": a.state, "value": a.value,
            "labels": dict(a.labels), "annotations": dict(a.annotations),
            "active_at": a.active_at, "fired_at": a.fired_at, "resolved_at": a.resolved_at,
            "deliveries": {ch: d.__dict__ for ch, d in a.deliveries.items()}}


def parse_sql_json(body: bytes) -> tuple[list[str], list[list]]:
    doc = json.loads(body)
    return [m["name"] for m in doc["meta"]], doc["data"]

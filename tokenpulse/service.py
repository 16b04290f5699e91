"""The tokenpulse service: receivers -> enrich -> writer -> ClickHouse, plus the admin API.

Lifecycle (STYLE habit 8): ``start()`` opens storage, applies migrations, warms
the dedup cache, starts the writer and then the servers on an asyncio loop in a
thread of their own. ``shutdown()`` stops the receivers accepting (gRPC refuses
new calls, HTTP stops listening), lets requests in flight finish (their writes
included), drains the writer, stops the admin API and closes storage, each
step getting what is left of the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time

from tokenpulse.admin import AdminServer, AdminView, add_throttle_routes
from tokenpulse.alerts.throttle import DEFAULT_MESSAGE, THROTTLE_RULE, ThrottleBook, Throttler, throttle_rule
from tokenpulse.alerts.engine import Evaluator, backend_query, check_rule
from tokenpulse.alerts.incidents import parse_inhibit
from tokenpulse.alerts.routing import channels_of, parse_tree
from tokenpulse.alerts.notify import Context, build_notifiers, parse_channels
from tokenpulse.alerts.rules import RuleError, load_rules
from tokenpulse.alerts.store import AlertStore
from tokenpulse.config import Settings
from tokenpulse.enrich import Pipeline
from tokenpulse.enrich.content import Content
from tokenpulse.storage.late_attribution import LateAttribution
from tokenpulse.enrich.fast.attribute import ColumnarAttributor, TraceMemory
from tokenpulse.enrich.fast.calls import TraceCalls
from tokenpulse.enrich.price import PriceTable, load_overrides
from tokenpulse.enrich.reload import PriceReloader
from tokenpulse.enrich.reprice import Repricer, RepriceReport, RepriceRequest
from tokenpulse.errors import ConfigError
from tokenpulse.forward.config import parse_destinations
from tokenpulse.forward.forwarder import Forwarder
from tokenpulse.metrics import Metrics
from tokenpulse.receiver.auth import Authenticator, load_keys_file, parse_keys
from tokenpulse.receiver.ingest import Ingest
from tokenpulse.receiver.limits import Limits
from tokenpulse.receiver.otlp_grpc import OtlpGrpcReceiver
from tokenpulse.receiver.otlp_http import OtlpHttpReceiver
from tokenpulse.otlp.reencode import Reencoder
from tokenpulse.storage.backend import Backend, with_password
from tokenpulse.storage.connect import open_backend
from tokenpulse.storage.migrate import apply_insert_fsync, migrate
from tokenpulse.storage.sink import Sink, SpanTable
from tokenpulse.storage.writer import ShutdownReport, Writer, WriterSettings
from tokenpulse.supervise import Supervisor
from tokenpulse.telemetry import Telemetry, parse_telemetry

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings, backend: Backend | None = None, sink: Sink | None = None,
                 enrich: Pipeline | None = None):
        self.settings = settings
        self._own_backend = backend is None
        self.backend = backend
        self._sink = sink
        self.metrics = Metrics()
        self.enrich = enrich
        self.writer: Writer | None = None
        self.grpc: OtlpGrpcReceiver | None = None
        self.late: LateAttribution | None = None
        self._ingest: Ingest | None = None
        self.http: OtlpHttpReceiver | None = None
        self.admin: AdminServer | None = None
        self.evaluator: Evaluator | None = None
        self.spool = None
        self.throttler: Throttler | None = None
        self.forwarder: Forwarder | None = None
        self.rollup_job = None
        self.telemetry = Telemetry(None)
        self.rule_errors: list[RuleError] = []
        self._alert_stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._auth: Authenticator | None = None
        self._tls_pair = None
        self._deadline = 0.0  # shutdown: the one deadline every step shares
        self.supervisor = Supervisor(lambda name: self.metrics.worker_restarts.labels(name).inc())
        self.shutdown_report: ShutdownReport | None = None
        self.prices: PriceReloader | None = None
        self.repricer: Repricer | None = None
        self._stopped = False
        self.drained = False
        self.ready = False  # /healthz says "starting" (503) until every part has started

    # ------------------------------------------------------------ start
    def _pipeline(self) -> Pipeline:
        s = self.settings
        overrides = load_overrides(s.price_file) if s.price_file else []
        key = s.user_id_key.encode() if s.user_id_key else None
        if s.user_id_mode == "pseudonymize" and key is None:
            key = self._local_user_id_key()
        scale = s.memory_scale  # the bounded memories shrink with a memory_budget under the 2 GiB default
        attributor = ColumnarAttributor(keys=s.attribute_keys, user_id_mode=s.user_id_mode, user_id_key=key,
                                memory=TraceMemory(int(100_000 * scale), int(500_000 * scale)),
                                require=s.required_tags, outcome_attribute=s.outcome_attribute,
                                outcome_success_values=tuple(s.outcome_success_values.split(",")),
                                personal_keys=tuple(k.strip() for k in s.personal_keys.split(",") if k.strip()))
        return Pipeline(PriceTable(overrides), attributor,
                        on_unknown_model=lambda model: self.metrics.unknown_model.labels(self.metrics.model_label(model)).inc(),
                        on_excluded=lambda reason, n: self.metrics.excluded.labels(reason).inc(n),
                        content=Content(s.capture_content, s.content_max_chars),
                        calls=TraceCalls(int(200_000 * scale)))

    def _local_user_id_key(self) -> bytes:
        """Embedded storage only: a key generated once and kept beside the data (mode 0600)."""
        s = self.settings
        if s.clickhouse_url:
            raise ConfigError("user_id_mode is pseudonymize but no user_id_key is set: set TOKENPULSE_USER_ID_KEY "
                              "(the same on every receiver), or choose user_id_mode raw or drop")
        import secrets

        path = os.path.join(s.data_dir, "user-id.key")
        try:
            os.makedirs(s.data_dir, exist_ok=True)
            if not os.path.exists(path):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32))
                log.warning("generated a user-id pseudonymization key at %s; keep it to keep pseudonyms stable", path)
        except OSError as e:
            raise ConfigError(f"cannot use data_dir {s.data_dir}: {e.strerror or e}") from None
        with open(path, encoding="ascii") as fh:
            return fh.read().strip().encode()

    def start(self) -> "Service":
        """Start every part in order; on any error close what started (the engine last) and raise."""
        try:
            return self._start()
        except OSError as e:  # a file or directory the settings name cannot be used: one line, not a traceback
            self._abort_start()
            raise ConfigError(f"cannot start: {e.strerror or e}" + (f": {e.filename}" if e.filename else "")) from None
        except BaseException:
            self._abort_start()
            raise

    def _abort_start(self) -> None:
        # An embedded engine left open at interpreter exit crashed it (exit 139).
        deadline = time.monotonic() + 2.0
        if self._loop is not None and self._stop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(2.0)
        self._alert_stop.set()
        if self.writer is not None:
            self.writer.close(deadline)
        if self.late is not None:
            self.late.stop()
        if self.forwarder is not None:
            self.forwarder.shutdown(0.1)
        if self.spool is not None:
            self.spool.close()
        if self._own_backend and self.backend is not None:
            self.backend.close()
        self._stopped = True

    def _open_storage(self) -> None:
        s = self.settings
        if self.backend is None:
            url = s.clickhouse_url
            if url and s.clickhouse_password_file:
                url = with_password(url, s.clickhouse_password_file)
            try:
                self.backend = open_backend(s.data_dir, url or None, s.clickhouse_cluster)
            except OSError as e:  # e.g. a read-only or missing parent directory
                raise ConfigError(f"cannot use data_dir {s.data_dir}: {e.strerror or e}") from None
        applied = migrate(self.backend, s.database, s.retention_days, s.clickhouse_cluster)
        if applied:
            log.info("applied schema migrations %s", applied)
        self.backend.use_database(s.database)
        if s.role != "evaluator":
            changed = apply_insert_fsync(self.backend, s.database, s.insert_fsync, s.clickhouse_cluster)
            if changed:
                log.info("insert_fsync %s: set on %s", "on" if s.insert_fsync else "off", ", ".join(changed))

    def _start(self) -> "Service":
        s = self.settings
        # Settings that can be wrong are read before anything opens: one clear line, nothing to undo.
        self._auth = self._authenticator()
        self._tls_pair = self._tls()
        self._rules = self._load_rules() if s.role != "receiver" else None
        if self.enrich is None:
            self.enrich = self._pipeline()
        self.telemetry = Telemetry(parse_telemetry(s.telemetry), self.metrics.registry,
                                   instance_id=f"{socket.gethostname()}:{os.getpid()}")
        self._open_storage()
        self._span_table = SpanTable(self.backend, s.database)
        sink = self._sink or self._span_table
        if s.spool_max_bytes > 0 and s.role != "evaluator":  # an evaluator stores no spans
            from tokenpulse.storage.spool import Spool, SpoolInUse

            spool_dir = s.spool_dir or os.path.join(s.data_dir, "spool")
            try:
                self.spool = Spool(spool_dir, s.spool_max_bytes)
            except SpoolInUse as e:
                raise ConfigError(str(e)) from None
            except OSError as e:
                raise ConfigError(f"cannot use spool_dir {spool_dir}: {e.strerror or e}") from None
            if not self.spool.empty():
                log.warning("spool holds %d batches from before; replaying them", self.spool.records)
        self.writer = Writer(sink, WriterSettings(
            max_rows=s.batch_max_spans, eager_rows=s.batch_eager_spans, max_bytes=s.batch_max_bytes, max_age_s=s.batch_max_age_s,
            max_queue_spans=s.memory_limits[1], retry_after_s=s.retry_after_s,
            dedup_window_s=s.dedup_window_s, dedup_max_keys=int(s.dedup_max_keys * s.memory_scale),
            dedup_storage_check=s.dedup_storage_check,
            replay_max_attempts=s.spool_replay_max_attempts,
            bound_tenants=tuple(sorted({k.tenant for k in self._auth.keys.values() if k.tenant})),
        ), self.metrics, spool=self.spool)
        self.writer.telemetry = self.telemetry
        self._warm_dedup()
        self.writer.start()
        if s.role != "evaluator":
            self.late = LateAttribution(self.backend, s.database, self.metrics)
            self.late.start()
        if s.forward and s.role != "evaluator":
            self._start_forwarder()
        self._thread = threading.Thread(target=self._run_loop, name="tokenpulse-loop", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error
        if s.role != "receiver":
            self._start_alerts()
        else:
            self._start_throttle_refresh()
        if s.role != "evaluator":
            self.prices = PriceReloader(s.price_file, self.enrich.set_price_table, self._price_reloaded)
            self.supervisor.start("price-reload",
                                  lambda stop: self.prices.run(stop, s.price_reload_interval_s), self._alert_stop)
        if self.grpc is not None:
            log.info("tokenpulse serving: OTLP/gRPC %s:%d, OTLP/HTTP %s:%d, admin http://%s:%d, storage %s",
                     s.listen_host, self.grpc.port, s.listen_host, self.http.port, s.admin_host, self.admin.port,
                     self.backend.description)
        log.info("role %s; admin http://%s:%d; alert rules: %s", s.role, s.admin_host, self.admin.port,
                 ", ".join(self.evaluator.rules) if self.evaluator else "not evaluated here")
        self.ready = True
        return self

    def _start_forwarder(self) -> None:
        """Processor mode: stored spans go on, enriched, to the configured OTLP destinations."""
        destinations = parse_destinations(self.settings.forward)
        attributor = self.enrich.attributor
        self.forwarder = Forwarder(destinations, Reencoder(attributor.user_keys, attributor.scrub_user()),
                                   self.metrics)
        self.forwarder.start()
        log.info("forwarding enriched spans to %s", ", ".join(
            f"{d.name} ({d.protocol}, {d.spans} spans)" for d in destinations.values()))

    def _load_rules(self):
        """The rules, before anything opens. A setting that is wrong ends the start in one line: an
        alert_rules_dir that cannot be read silently disabled every rule, built-ins too, and a typo
        in an alert_rules override silently removed that rule and its throttle action. A rule file
        of your own that does not parse is logged with file:line and skipped, as before."""
        s = self.settings
        rules, errors = load_rules(s.alert_rules_dir, s.alert_rules)
        wrong = [e for e in errors if (s.alert_rules_dir and e.where == s.alert_rules_dir) or e.where.startswith("alert_rules")]
        if wrong:
            raise ConfigError("; ".join(str(e) for e in wrong))
        unknown = sorted(channels_of(parse_tree(s.alert_route)) - set(s.alert_channels))
        if unknown:
            raise ConfigError(f"alert_route names channels that alert_channels does not define: {', '.join(unknown)}")
        return rules, errors

    def _start_alerts(self) -> None:
        """Check the loaded rules against storage (a failing one is logged and skipped), then evaluate on ticks."""
        s = self.settings
        rules, self.rule_errors = self._rules
        now = time.time()
        for name, rule in list(rules.items()):
            try:
                check_rule(self.backend, rule, now)
            except RuleError as e:
                self.rule_errors.append(e)
                del rules[name]
        for e in self.rule_errors:
            log.error("alert rule not loaded: %s", e)
        external = s.external_url or f"http://{s.admin_host}:{self.admin.port}"
        notifiers = build_notifiers(parse_channels(s.alert_channels), Context(external_url=external))
        store = AlertStore(self.backend, s.database)
        store.replace_budgets(list(s.budgets.values()))
        book = ThrottleBook([n for n, r in rules.items() if r.action == "throttle"], s.throttle_cooldown_s,
                            s.throttle_message or DEFAULT_MESSAGE)
        self.throttler = Throttler(book, store)
        # Throttle notices are an alert rule over the book: delivered, retried and recorded as alerts are.
        channels = tuple(c.strip() for c in s.throttle_channels.split(",") if c.strip() in notifiers)
        rules = {**rules, THROTTLE_RULE: throttle_rule(channels or ("default",))}
        query = self.throttler.query(backend_query(self.backend))

        def traced_query(rule, now):
            with self.telemetry.span("tokenpulse.alert.evaluate", rule=rule.name):
                return query(rule, now)

        self.evaluator = Evaluator(rules, traced_query, notifiers, store, metrics=self.metrics,
                                   on_change=self.throttler.on_alerts, inhibit=parse_inhibit(s.alert_inhibit),
                                   routes=parse_tree(s.alert_route))
        self.supervisor.start("alerts", self.evaluator.run, self._alert_stop)

        def expire(stop: threading.Event) -> None:  # manual throttles end on time, rules evaluated or not
            while not stop.wait(1.0):
                self.throttler.advance(time.time())

        self.supervisor.start("throttle-expiry", expire, self._alert_stop)
        self._start_rollups()

    def _start_rollups(self) -> None:
        """The evaluator also rolls up settled hours for the panels that read rollups (storage/rollups.py)."""
        s = self.settings
        if not s.rollups:
            return
        if s.clickhouse_cluster:  # not tried on a cluster yet: the panels compute live there
            log.info("scheduled rollups are off in cluster mode; the panels compute live")
            return
        from tokenpulse.storage.rollups import RollupJob

        self.rollup_job = RollupJob(self.backend, s.rollup_settle_s)
        self.supervisor.start("rollups", self.rollup_job.run, self._alert_stop)

    def _warm_dedup(self) -> None:
        """Remember spans stored in the last dedup window, so a restart does not forget them."""
        s = self.settings
        if s.dedup_max_keys <= 0 or s.dedup_window_s <= 0:
            return
        raw = self.backend.query(
            f"SELECT tenant, trace_id, span_id FROM {s.database}.spans "
            f"WHERE ingested_at > now64(3) - toIntervalMillisecond({int(s.dedup_window_s * 1000)}) "
            f"ORDER BY ingested_at DESC LIMIT {int(s.dedup_max_keys * s.memory_scale) // 2}", "TSV", readonly=False)
        rows = []
        for line in raw.decode().splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and len(parts[1]) == 32 and len(parts[2]) == 16:
                rows.append(parts)
        self.writer.warm_dedup(rows)
        self.metrics.dedup_keys.set(len(self.writer.dedup))

    def _authenticator(self) -> Authenticator:
        s = self.settings
        keys = parse_keys(s.api_keys, "api_keys")
        if s.api_keys_file:
            keys.update(load_keys_file(s.api_keys_file))
        if keys:
            log.info("OTLP receivers require API keys (%d configured)", len(keys))
        return Authenticator(keys)

    def _tls(self):
        """((cert PEM, key PEM) for gRPC, ssl.SSLContext for HTTP), or None."""
        s = self.settings
        if not s.tls_cert_file:
            return None
        import ssl

        try:
            with open(s.tls_cert_file, "rb") as fh:
                cert = fh.read()
            with open(s.tls_key_file, "rb") as fh:
                key = fh.read()
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(s.tls_cert_file, s.tls_key_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load TLS certificate/key ({s.tls_cert_file}, key file): {e}") from None
        return (cert, key), ctx

    def _start_throttle_refresh(self, every_s: float = 2.0) -> None:
        """Receiver role: serve the evaluator's decisions, re-read from storage every ``every_s``."""
        s = self.settings
        self.throttler = Throttler(ThrottleBook(cooldown_s=s.throttle_cooldown_s,
                                                message=s.throttle_message or DEFAULT_MESSAGE),
                                   AlertStore(self.backend, s.database))

        def loop(stop: threading.Event) -> None:
            while not stop.wait(every_s):
                try:
                    self.throttler.refresh()
                except Exception as e:  # storage down: keep serving the last decisions
                    log.warning("could not refresh throttle decisions: %s", e)

        self.supervisor.start("throttle-refresh", loop, self._alert_stop)

    def _run_loop(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        auth, tls = self._auth, self._tls_pair
        view = self.admin_view()
        if s.role != "evaluator":
            ingest = Ingest(self.writer, self.enrich, self.metrics, s.ack_timeout_s, s.retention_days,
                            Limits(s.max_spans_per_request, s.max_attributes_per_span, s.max_attribute_value_chars),
                            s.memory_limits[0],
                            trace_tags_lookup=self._span_table.trace_tags if s.trace_tags_lookup else None,
                            forward=self.forwarder.offer if self.forwarder else None, telemetry=self.telemetry,
                            late=self.late.offer if self.late else None)
            self._ingest = ingest
            self.grpc = OtlpGrpcReceiver(ingest, s.listen_host, s.grpc_port, s.max_request_bytes, auth,
                                         tls[0] if tls else None)
            self.http = OtlpHttpReceiver(ingest, s.listen_host, s.http_port, s.max_request_bytes,
                                         s.shutdown_timeout_s,
                                         extra_routes=lambda router: add_throttle_routes(router, view, auth, otlp_port=True),
                                         auth=auth, ssl_context=tls[1] if tls else None,
                                         body_timeout_s=s.body_timeout_s)
        self.admin = AdminServer(view, s.admin_host, s.admin_port, ssl_context=tls[1] if tls and s.admin_tls else None)
        try:
            for server, what, host, flag in (
                    (self.grpc, "OTLP/gRPC", s.listen_host, "--grpc-port (grpc_port)"),
                    (self.http, "OTLP/HTTP", s.listen_host, "--http-port (http_port)"),
                    (self.admin, "the admin API", s.admin_host, "--admin-port (admin_port)")):
                if server is None:
                    continue
                try:
                    await server.start()
                except (OSError, RuntimeError) as e:  # grpc raises RuntimeError when it cannot bind
                    raise ConfigError(f"cannot listen on {host}:{server.port} for {what}: "
                                      f"{getattr(e, 'strerror', None) or e}; choose another with {flag}") from None
        except BaseException as e:  # e.g. port in use: report to start()
            self._start_error = e
            self._ready.set()
            await self._close_servers(1.0)
            return
        self._ready.set()
        await self._stop.wait()
        await self._drain()

    async def _close_servers(self, grace: float) -> None:
        closers = [self.admin.stop]
        if self.grpc is not None:
            closers = [lambda: self.grpc.stop(grace), self.http.stop] + closers
        for closer in closers:
            try:
                await closer()
            except Exception:
                pass

    async def _drain(self) -> None:
        deadline = self._deadline or time.monotonic() + self.settings.shutdown_timeout_s
        left = lambda: max(deadline - time.monotonic(), 0.0)  # noqa: E731
        # 1. Receivers: refuse new requests, finish those in flight (they wait for their writes).
        if self.grpc is not None:
            await asyncio.gather(self.grpc.stop(left()), self.http.stop())
        if self._ingest is not None:  # no request is in flight any more: its decode thread can go
            self._ingest.close()
        # 2. Writer: write whatever is still queued (to storage, or to the spool).
        loop = asyncio.get_running_loop()
        self.shutdown_report = await loop.run_in_executor(None, self.writer.close, max(deadline, time.monotonic() + 0.1))
        self.drained = self.shutdown_report.drained
        # 3. Forwarding: what was stored goes on, for what time is left (at most 5 s; counted if not).
        if self.forwarder is not None:
            await loop.run_in_executor(None, self.forwarder.shutdown, min(5.0, max(left(), 0.1)))
        # 4. Admin last, so /healthz answers while draining.
        await self.admin.stop()

    # ------------------------------------------------------------ stop
    def shutdown(self) -> bool:
        """Idempotent. Stop accepting, drain receivers -> writer -> spool, then the schedulers and
        storage, all within ``shutdown_timeout_s``. True when everything accepted was written."""
        if self._stopped:
            return self.drained
        self._stopped = True
        self._deadline = deadline = time.monotonic() + self.settings.shutdown_timeout_s
        self._alert_stop.set()  # the schedulers start no new tick; a tick in progress finishes below
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 0.0) + 5)
        for name in ("alerts", "rollups", "throttle-refresh", "throttle-expiry", "price-reload"):
            if not self.supervisor.join(name, deadline - time.monotonic()):
                log.warning("shutdown: the %s worker did not finish in time", name)
        if self.evaluator is not None:
            self.evaluator.close(max(deadline - time.monotonic(), 0.1))
        if self.late is not None:  # after the writer: moves for the last stored roots are made
            self.late.stop()
        if self.spool is not None:
            self.spool.close()  # what is left stays on disk for the next start; the lock is released
        if self._own_backend and self.backend is not None:
            self.backend.close()
        self.telemetry.shutdown()
        r = self.shutdown_report
        if r is None or r.drained:
            log.info("tokenpulse stopped: drained%s", f"; {r.spooled_records} batches stay in the spool "
                     f"({self.spool.dir}) and are replayed at the next start" if r and r.spooled_records else "")
        else:
            log.error("tokenpulse stopped: NOT drained: %d accepted spans were neither stored nor spooled "
                      "(their clients were answered retry)%s", r.unwritten_spans,
                      f"; {r.spooled_records} batches stay in the spool ({self.spool.dir})" if r.spooled_records else "")
        return self.drained

    def reprice(self, req: RepriceRequest) -> RepriceReport:
        """Re-price stored spans with the price table in force (enrich/reprice.py)."""
        if self.repricer is None:
            self.repricer = Repricer(self.backend, self.settings.database, self.settings.clickhouse_cluster)
        return self.repricer.run(self.enrich.price_table, req)

    def _price_reloaded(self, r) -> None:
        self.metrics.price_reloads.labels("ok" if r.ok else "failed").inc()

    # ------------------------------------------------------------ state
    def admin_view(self) -> AdminView:
        return AdminView(settings=self.settings, health=self.health, metrics_text=self.metrics.render,
                         backend=lambda: self.backend, evaluator=lambda: self.evaluator,
                         rule_errors=lambda: self.rule_errors, throttler=lambda: self.throttler,
                         prices=lambda: self.prices, reprice=self.reprice)

    def health(self) -> dict:
        w = self.writer
        writable = w is not None and w.last_error is None
        workers_ok, workers = self.supervisor.health()
        if w is not None:
            writer_ok, writer_workers = w.supervisor.health()
            workers_ok, workers = workers_ok and writer_ok, {**writer_workers, **workers}
        broken = self.spool.broken if self.spool is not None else ""
        ok = writable and workers_ok and not broken
        return {
            "status": ("ok" if ok else "degraded") if self.ready else "starting",
            "storage": {"backend": self.backend.description if self.backend else None,
                        "writable": writable, "last_error": w.last_error if w else None,
                        "mode": w.mode.value if w else None},
            "queue": {"spans": w.queued_spans if w else 0, "capacity": self.settings.memory_limits[1]},
            "spool": ({"batches": self.spool.records, "bytes": self.spool.bytes,
                       "capacity_bytes": self.settings.spool_max_bytes, "broken": broken or None}
                      if self.spool else None),
            "workers": workers,
        }

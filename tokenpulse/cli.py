"""The ``tokenpulse`` command.

    tokenpulse serve [--grpc-port N] [--http-port N] [--admin-port N] [--data-dir DIR]
                     [--clickhouse-url URL] [--config FILE] [... every setting as a flag]
    tokenpulse sql "SELECT ..." [--admin-url URL | --clickhouse-url URL] [--format table|json|csv]
    tokenpulse report [PANEL] [--since 1h] [--by feature] [--tenant X] [--format table|json|csv]
    tokenpulse alerts list | test RULE [--send] | history [--since 1d] [--rule NAME]
    tokenpulse throttle list | set TENANT --for 30m --reason TEXT | clear TENANT
    tokenpulse prices lookup MODEL | check FILE
    tokenpulse keys new [--tenant T] | hash KEY
    tokenpulse [--admin-token TOKEN] ...   (admin API calls; or TOKENPULSE_ADMIN_TOKEN)
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import fields

from tokenpulse import __version__
from tokenpulse.config import Settings, load_settings
from tokenpulse.errors import ConfigError, StorageError

log = logging.getLogger("tokenpulse")


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        default = "{}" if f.type in (dict, "dict") else repr(f.default)
        # argparse %-formats help texts: a literal % in a setting's doc must be doubled
        text = f"{f.metadata['doc']} (default: {default}; env TOKENPULSE_{f.name.upper()})".replace("%", "%%")
        p.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=text)


def _add_admin_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--admin-url", default="http://127.0.0.1:4319",
                   help="admin API of a running `tokenpulse serve` (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0)


def _serve(args: argparse.Namespace) -> int:
    flags = {f.name: getattr(args, f.name) for f in fields(Settings)}
    settings = load_settings(flags, config_file=args.config)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Decoding allocates many short-lived dicts: fewer young-generation
    # collections is worth ~20% of decode throughput (measured in bench/).
    gc.set_threshold(50_000, 20, 20)

    from tokenpulse.service import Service

    service = Service(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    if service.prices is not None:  # SIGHUP: re-read the price file (done by its worker, not in the handler)
        signal.signal(signal.SIGHUP, lambda *_: service.prices.requested.set())
    gc.freeze()
    while not stop.wait(1.0):
        pass
    log.info("stopping: finishing requests in flight and flushing")
    return 0 if service.shutdown() else 1


def _demo(args: argparse.Namespace) -> int:
    from tokenpulse.demo import run

    # errors only: the demo's progress display tells what happens
    logging.basicConfig(level="ERROR", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args, main)
    except KeyboardInterrupt:  # Ctrl-C: the demo's own shutdown has run (its finally); one line, no traceback
        print(f"\ndemo interrupted; tokenpulse stopped (the data stays in {args.data_dir})", flush=True)
        return 130


def _render(columns: list[str], rows: list[list], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([dict(zip(columns, r)) for r in rows], indent=2, ensure_ascii=False)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[json.dumps(v) if isinstance(v, (dict, list)) else v for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    cells = [[("" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for v in r]
             for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _numeric(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _sql(args: argparse.Namespace) -> int:
    from tokenpulse.admin import parse_sql_json
    from tokenpulse.queries import QueryError, user_sql

    try:
        own = user_sql.output_format(args.query)  # the statement's FORMAT: printed as ClickHouse writes it
    except QueryError as e:
        print(f"error: refused: {e}", file=sys.stderr)
        return 1
    if args.clickhouse_url:
        from tokenpulse.storage.server import ServerBackend

        backend = ServerBackend(args.clickhouse_url)
        backend.use_database(args.database)
        body = backend.query(args.query, own or "JSONCompact", readonly=True)
    else:
        url = args.admin_url.rstrip("/") + "/api/sql?" + urllib.parse.urlencode({"format": "json"})
        req = urllib.request.Request(url, data=args.query.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=args.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError):
                pass
            print(f"error: {detail}", file=sys.stderr)
            return 1
        except urllib.error.URLError as e:
            print(f"error: cannot reach the tokenpulse admin API at {args.admin_url} ({e.reason}); "
                  "is `tokenpulse serve` running? (or pass --clickhouse-url)", file=sys.stderr)
            return 1
    if own is not None:
        sys.stdout.buffer.write(body if body.endswith(b"\n") else body + b"\n")
        sys.stdout.flush()
        return 0
    columns, rows = parse_sql_json(body)
    print(_render(columns, rows, args.format))
    return 0


class _PanelSource:
    """Runs panels through a service's admin API, or directly on a ClickHouse server."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.backend = None
        if args.clickhouse_url:
            from tokenpulse.storage.server import ServerBackend

            self.backend = ServerBackend(args.clickhouse_url)
            self.backend.use_database(args.database)

    def run(self, name: str, values: dict) -> tuple[list[str], list[list]]:
        if self.backend is not None:
            from tokenpulse.queries import QueryError, load_panels, run

            panels = load_panels()
            if name not in panels:
                raise QueryError(f"no panel {name!r} (panels: {', '.join(panels)})")
            return run(self.backend, panels[name], values)
        doc = _admin(self.args, f"/api/panels/{urllib.parse.quote(name)}?" + urllib.parse.urlencode(values))
        return doc["columns"], doc["rows"]


class ReportError(Exception):
    pass


def _report(args: argparse.Namespace) -> int:
    from tokenpulse.queries import QueryError

    source = _PanelSource(args)
    common = {"since": args.since}
    if args.tenant:
        common["tenant"] = args.tenant
    try:
        if args.panel:
            values = dict(common)
            for name in ("by", "feature", "model", "limit"):
                if getattr(args, name) is not None:
                    values[name] = getattr(args, name)
            columns, rows = source.run(args.panel, values)
            if args.format == "table":
                rows = _unpriced_shown(columns, rows)
            print(_render(columns, rows, args.format))
            return 0
        sections = [
            ("Spend by feature", "cost_by_dimension", {**common, "by": "feature", "limit": "8"}),
            ("Top tenants", "cost_by_dimension", {**common, "by": "tenant", "limit": "5"}),
            ("Top models", "cost_by_dimension", {**common, "by": "model", "limit": "5"}),
            ("Tokens per run", "tokens_per_run", common),
            ("Price coverage", "price_coverage", common),
        ]
        out = {}
        _, every = source.run("cost_by_dimension", {**common, "by": "provider", "limit": "1000"})
        total = sum(r[6] or 0 for r in every)
        unpriced, unpriced_tokens = sum(r[8] for r in every), sum(r[9] for r in every)
        spend = f"${total:,.6f}" + (f" + {unpriced:,} unpriced calls ({unpriced_tokens:,} tokens)" if unpriced else "")
        for title, panel, values in sections:
            columns, rows = source.run(panel, values)
            if panel == "tokens_per_run":
                columns = ["runs", "p50_tokens", "p95_tokens", "p99_tokens"]
                rows = [[rows[0][3], rows[0][4], rows[0][5], rows[0][6]]] if rows else []
            out[title] = (columns, rows)
        if source.backend is None:
            try:
                firing = [a for a in _admin(args, "/api/alerts")["alerts"] if a["state"] == "firing"]
                out["Alerts firing"] = (["rule", "severity", "labels", "value", "since"], [
                    [a["rule"], a["labels"].get("severity", ""), _labels_text(a["labels"]), a["value"],
                     _since(a["fired_at"])] for a in firing])
            except ReportError as e:  # e.g. a receiver-only process: say so, keep the rest
                out["Alerts firing"] = (["note"], [[str(e)]])
    except (QueryError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({t: [dict(zip(c, r)) for r in rows] for t, (c, rows) in out.items()}, indent=2))
        return 0
    print(f"tokenpulse overview, last {args.since}" + (f", tenant {args.tenant}" if args.tenant else ""))
    print(f"spend: {spend}")
    for title, (columns, rows) in out.items():
        print(f"\n{title}")
        table = args.format != "csv"
        print(_render(columns, _unpriced_shown(columns, rows) if table else rows, "table" if table else "csv"))
    return 0


def _unpriced_shown(columns: list[str], rows: list[list]) -> list[list]:
    """Spend of calls without a price is unknown, never $0: the cost cell says "unpriced" with the
    tokens, or "+ N unpriced" beside the priced spend."""
    if "cost_usd" not in columns or "unpriced_calls" not in columns:
        return rows
    c, n, t = columns.index("cost_usd"), columns.index("unpriced_calls"), columns.index("unpriced_tokens")
    out = []
    for r in rows:
        r = list(r)
        if r[c] is None:
            r[c] = f"unpriced ({r[t]:,} tokens)"
        elif r[n]:
            r[c] = f"{r[c]} + {r[n]:,} unpriced"
        out.append(r)
    return out


def _admin(args: argparse.Namespace, path: str, method: str = "GET", body: dict | None = None) -> dict:
    """JSON from the admin API of a running service; ReportError with its message otherwise."""
    url = args.admin_url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else (b"" if method in ("POST", "DELETE") else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]
        except (ValueError, KeyError):
            message = f"HTTP {e.code}"
        raise ReportError(message) from None
    except urllib.error.URLError as e:
        raise ReportError(f"cannot reach the tokenpulse admin API at {args.admin_url} ({e.reason}); "
                          "is `tokenpulse serve` running? (report and sql also take --clickhouse-url)") from None


def _labels_text(labels: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())
                     if k not in ("alertname", "severity") and v != "")


def _since(ts) -> str:
    from datetime import datetime, timezone

    return "" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _alerts(args: argparse.Namespace) -> int:
    try:
        if args.alerts_command == "list":
            rules = _admin(args, "/api/alerts/rules")
            now = _admin(args, "/api/alerts")
            if args.format == "json":
                print(json.dumps({**rules, **now}, indent=2))
                return 0
            print("Rules")
            print(_render(["rule", "interval_s", "for_s", "severity", "channels", "action"],
                          [[r["name"], r["interval_s"], r["for_s"], r["severity"], ",".join(r["channels"]) or "-",
                            r["action"] or "-"] for r in rules["rules"]], "table"))
            print("\nAlerts")
            print(_render(["state", "rule", "severity", "labels", "value", "since"],
                          [[a["state"], a["rule"], a["labels"].get("severity", ""), _labels_text(a["labels"]),
                            a["value"], _since(a["fired_at"] or a["active_at"])] for a in now["alerts"]], "table"))
            for err in now["rule_errors"]:
                print(f"rule error: {err}", file=sys.stderr)
            return 0
        if args.alerts_command == "test":
            path = f"/api/alerts/rules/{urllib.parse.quote(args.rule)}/test" + ("?send=1" if args.send else "")
            doc = _admin(args, path, "POST")
            if args.format == "json":
                print(json.dumps(doc, indent=2))
                return 0
            print(f"rule {args.rule}: {len(doc['alerts'])} instance(s) would fire now")
            for a in doc["alerts"]:
                print(f"  {a['annotations'].get('summary', '')}   [{_labels_text(a['labels'])}]")
            for channel, res in doc.get("sent", {}).items():
                print(f"sent to {channel}: " + ("ok" if res["ok"] else f"FAILED ({res['error']})"))
            return 0 if all(r["ok"] for r in doc.get("sent", {}).values()) else 1
        query = urllib.parse.urlencode({"since": args.since, "limit": args.limit,
                                        **({"rule": args.rule} if args.rule else {})})
        doc = _admin(args, f"/api/alerts/history?{query}")
        rows = [[r[0], r[1], f"{r[3] or '-'} -> {r[2]}", r[4], r[5], r[6]] for r in doc["rows"]]
        print(_render(["at", "rule", "change", "severity", "value", "summary"], rows, args.format))
        return 0
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _throttle(args: argparse.Namespace) -> int:
    import getpass

    try:
        if args.throttle_command == "list":
            doc = _admin(args, "/v1/throttle")
            rows = [[d["tenant"], d.get("source", ""), _since(d["since"]), d["retry_after_s"], d["reason"]]
                    for d in doc["throttled"]]
            print(_render(["tenant", "source", "since", "retry_after_s", "reason"], rows, args.format))
            return 0
        tenant = urllib.parse.quote(args.tenant, safe="")
        actor = args.actor or getpass.getuser()
        if args.throttle_command == "set":
            doc = _admin(args, f"/api/throttle/{tenant}", "POST",
                         {"for": args.for_, "reason": args.reason, "actor": actor})
            print(f"{args.tenant} throttled for {doc['retry_after_s']} s: {doc['reason']}")
            print(f"customers see: {doc['message']}")
            return 0
        doc = _admin(args, f"/api/throttle/{tenant}?actor={urllib.parse.quote(actor)}", "DELETE")
        print(f"{args.tenant} released" if doc["released"] else f"{args.tenant} was not throttled")
        return 0
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _keys(args: argparse.Namespace) -> int:
    from tokenpulse.receiver.auth import hash_key, new_key

    if args.keys_command == "hash":
        print(hash_key(args.key))
        return 0
    key = new_key()
    spec = {"name": args.name or key[3:11]} | ({"tenant": args.tenant} if args.tenant else {})
    print(f"key (give it to the sender; it is not stored anywhere): {key}")
    print("config (api_keys, in the YAML config or api_keys_file):")
    print(f"  {hash_key(key)}: {json.dumps(spec)}")
    return 0


def _prices_lookup(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from tokenpulse.enrich.normalize import normalize_provider
    from tokenpulse.enrich.price import PRICE_KINDS, PriceTable, load_overrides

    at = datetime.now(timezone.utc)
    if args.at:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            print(f"error: --at {args.at!r} is not a date (YYYY-MM-DD[THH:MM])", file=sys.stderr)
            return 2
        at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    table = PriceTable(load_overrides(args.price_file) if args.price_file else [])
    provider = normalize_provider(args.provider) if args.provider else ""
    got = table.price(provider, args.model, at, (args.tier or "").lower(), args.server_address or "")
    entry = got.entry if got else None
    if entry is None:
        print(f"no price for model {args.model!r}" + (f" (provider {provider})" if provider else "")
              + f" at {at.date()}: spans with it are stored with price_status 'unknown_model' and cost NULL")
        return 1
    print(f"model     {args.model}" + (f"  (provider {provider})" if provider else ""))
    print(f"at        {at.isoformat()}")
    print(f"entry     {entry.id}")
    if got.status != "priced":
        print(f"status    {got.status} (the provider does not list this model: matched by its name alone)")
    print("prices    $ per 1M tokens")
    fallbacks = {"reasoning": "output", "cache_write_1h": "cache_write"}
    for kind in PRICE_KINDS:
        t = getattr(entry, kind)
        if t is None:
            print(f"  {kind:<14} (the {fallbacks.get(kind, 'input')} price)")
            continue
        tiers = "".join(f", {p:g} above {start:,} input tokens" for start, p in t.tiers)
        print(f"  {kind:<14} {t.base:g}{tiers}")
    if entry.per_request:
        print(f"  {'per request':<14} ${entry.per_request:g} per call")
    return 0


def _prices_reprice(args: argparse.Namespace) -> int:
    body = {"since": args.since, "until": args.until, "model": args.model or "", "provider": args.provider or "",
            "tenant": args.tenant or "", "dry_run": args.dry_run, "actor": args.actor}
    try:
        got = _admin(args, "/api/prices/reprice", "POST", body)
    except ReportError as e:
        print(f"tokenpulse: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(got, indent=2))
        return 0
    verb = "would change" if got["dry_run"] else "changed"
    print(f"{got['spans_checked']:,} priced calls checked; {verb} {got['spans_changed']:,}: "
          f"${got['cost_before_usd']:.6f} -> ${got['cost_after_usd']:.6f}"
          + ("" if got["dry_run"] else f" (scheduled rollup hours rebuilt: {got['rollup_hours_rebuilt']})"))
    rows = [[m["model"], m["spans_changed"], f"{m['cost_before_usd']:.6f}", f"{m['cost_after_usd']:.6f}"]
            for m in got["by_model"]]
    if rows:
        print(_render(["model", "spans_changed", "cost_before_usd", "cost_after_usd"], rows,
                      "csv" if args.format == "csv" else "table"))
    return 0


def _prices_reload(args: argparse.Namespace) -> int:
    try:
        got = _admin(args, "/api/prices/reload", "POST")
    except ReportError as e:
        print(f"tokenpulse: {e}", file=sys.stderr)
        return 1
    print(got["message"])
    return 0


def _prices_check(args: argparse.Namespace) -> int:
    from tokenpulse.enrich.price import PriceFileError, load_overrides

    try:
        entries = load_overrides(args.file)
    except PriceFileError as e:
        for line, message in e.errors:
            print(f"{args.file}:{line}: {message}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok, {len(entries)} price entr{'y' if len(entries) == 1 else 'ies'}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from tokenpulse.importer import import_files

    def progress(r) -> None:
        if args.verbose:
            print(f"  {r.requests:,} requests, {r.spans:,} spans", file=sys.stderr)

    got = import_files(args.files, args.endpoint, api_key=args.api_key or os.environ.get("TOKENPULSE_API_KEY", ""),
                       timeout_s=args.timeout, max_wait_s=args.max_wait, progress=progress)
    for error in got.errors:
        print(f"tokenpulse: {error}", file=sys.stderr)
    print(f"imported {got.spans:,} spans in {got.requests:,} requests"
          + (f"; {got.rejected:,} spans refused by the service" if got.rejected else "")
          + (f"; {got.retries:,} retries" if got.retries else "")
          + (f"; {len(got.errors):,} documents not imported" if got.errors else ""))
    return 1 if got.errors else 0


def build_parser() -> argparse.ArgumentParser:
    """Every command and its flags (main parses with it; the tests walk it)."""
    parser = argparse.ArgumentParser(prog="tokenpulse", description="Token and cost observability for LLM agents.")
    parser.add_argument("--version", action="version", version=f"tokenpulse {__version__}")
    parser.add_argument("--admin-token", default=None,
                        help="admin API token, when the service sets admin_token_sha256 (env TOKENPULSE_ADMIN_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OTLP receivers, the writer and the admin API")
    serve.add_argument("--config", default=None, help="YAML config file (env TOKENPULSE_CONFIG)")
    _add_setting_flags(serve)
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="two minutes of agent traffic with incidents, alerts and a throttle",
                          description="Runs tokenpulse (embedded) and drives realistic agent traffic through it "
                                      "with the OpenTelemetry SDK, then injects a tool loop, a prompt-size "
                                      "explosion and one tenant's stuck integration, and shows each alert and "
                                      "the throttle as they happen (README 'Two-minute demo').")
    demo.add_argument("--minutes", type=float, default=2.0, help="length of the live part (default: %(default)s); "
                      "it runs on until every incident has resolved (at most 4 minutes more)")
    demo.add_argument("--speed", type=float, default=1.0, help="traffic volume multiplier (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="a shorter story (about 1.5 minutes; what the test runs): "
                      "incidents at once, 20-s windows, alerts and the throttle let go sooner")
    demo.add_argument("--data-dir", default="./tokenpulse-demo", help="embedded data directory (default: %(default)s)")
    demo.add_argument("--grpc-port", type=int, default=4317)
    demo.add_argument("--http-port", type=int, default=4318)
    demo.add_argument("--admin-port", type=int, default=4319)
    demo.add_argument("--otlp-endpoint", default=None,
                      help="use a running tokenpulse instead: its OTLP/gRPC host:port (with --admin-url)")
    demo.add_argument("--admin-url", default="http://127.0.0.1:4319", help="the running service's admin API")
    demo.add_argument("--throttle-url", default=None, help="its throttle API (default: the admin URL)")
    demo.add_argument("--exit", action="store_true", help="stop at the end instead of serving until Ctrl-C")
    demo.set_defaults(func=_demo)

    sql = sub.add_parser("sql", help="run a read-only SQL query")
    sql.add_argument("query")
    sql.add_argument("--admin-url", default="http://127.0.0.1:4319",
                     help="admin API of a running `tokenpulse serve` (default: %(default)s)")
    sql.add_argument("--clickhouse-url", default=None, help="query a ClickHouse server directly instead")
    sql.add_argument("--database", default="tokenpulse", help="database with --clickhouse-url (default: %(default)s)")
    sql.add_argument("--format", choices=("table", "json", "csv"), default="table")
    sql.add_argument("--timeout", type=float, default=60.0)
    sql.set_defaults(func=_sql)

    report = sub.add_parser("report", help="print a dashboard panel, or an overview of spend and tokens")
    report.add_argument("panel", nargs="?", default=None,
                        help="panel name (see GET /api/panels); omitted: a one-screen overview")
    report.add_argument("--since", default="1h", help="window: 15m, 1h, 24h, 7d (default: %(default)s)")
    report.add_argument("--by", default=None, help="dimension for panels that group by one")
    report.add_argument("--tenant", default=None)
    report.add_argument("--feature", default=None)
    report.add_argument("--model", default=None)
    report.add_argument("--limit", default=None)
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.add_argument("--admin-url", default="http://127.0.0.1:4319",
                        help="admin API of a running `tokenpulse serve` (default: %(default)s)")
    report.add_argument("--clickhouse-url", default=None, help="run the panels on a ClickHouse server instead")
    report.add_argument("--database", default="tokenpulse")
    report.add_argument("--timeout", type=float, default=60.0)
    report.set_defaults(func=_report)

    alerts = sub.add_parser("alerts", help="alert rules, alerts now, and their history")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    a_list = alerts_sub.add_parser("list", help="the loaded rules and the alerts pending, firing or resolved")
    a_test = alerts_sub.add_parser("test", help="evaluate RULE now and show what would fire")
    a_test.add_argument("rule")
    a_test.add_argument("--send", action="store_true", help="also send it to the rule's channels as a test")
    a_hist = alerts_sub.add_parser("history", help="alert state changes, newest first")
    a_hist.add_argument("--since", default="1d", help="window (default: %(default)s)")
    a_hist.add_argument("--rule", default=None)
    a_hist.add_argument("--limit", default="200")
    for p in (a_list, a_test, a_hist):
        _add_admin_flags(p)
    alerts.set_defaults(func=_alerts)

    throttle = sub.add_parser("throttle", help="tenants throttled now; throttle or release one by hand")
    t_sub = throttle.add_subparsers(dest="throttle_command", required=True)
    t_list = t_sub.add_parser("list", help="the tenants throttled now")
    t_set = t_sub.add_parser("set", help="throttle TENANT for a while (wins over the rules until it ends)")
    t_set.add_argument("tenant")
    t_set.add_argument("--for", dest="for_", default="30m", help="how long (default: %(default)s)")
    t_set.add_argument("--reason", default="throttled by hand")
    t_clear = t_sub.add_parser("clear", help="release TENANT now (its current alerts will not throttle it again)")
    t_clear.add_argument("tenant")
    for p in (t_list, t_set, t_clear):
        _add_admin_flags(p)
        if p is not t_list:
            p.add_argument("--actor", default=None, help="who is doing this, for the audit log (default: $USER)")
    throttle.set_defaults(func=_throttle)

    keys = sub.add_parser("keys", help="make an API key, or hash a key or admin token for the config")
    k_sub = keys.add_subparsers(dest="keys_command", required=True)
    k_new = k_sub.add_parser("new", help="a new random API key and its config line")
    k_new.add_argument("--tenant", default=None, help="bind the key to this tenant (its spans are stamped with it)")
    k_new.add_argument("--name", default=None)
    k_hash = k_sub.add_parser("hash", help="SHA-256 of KEY, as api_keys and admin_token_sha256 expect")
    k_hash.add_argument("key")
    keys.set_defaults(func=_keys)

    imp = sub.add_parser("import", help="send past spans (OTLP/JSON files) through a running service, "
                                        "so that alert baselines exist at once")
    imp.add_argument("files", nargs="+", help="OTLP/JSON files: one ExportTraceServiceRequest per line (the "
                                              "Collector file exporter's format) or per file; .gz read compressed")
    imp.add_argument("--endpoint", default="http://127.0.0.1:4318", help="OTLP/HTTP of the service (default: %(default)s)")
    imp.add_argument("--api-key", default=None, help="API key, when the service requires one (env TOKENPULSE_API_KEY)")
    imp.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    imp.add_argument("--max-wait", type=float, default=300.0, help="seconds to keep retrying one request the "
                                                                   "service asks to retry (default: %(default)s)")
    imp.add_argument("--verbose", action="store_true", help="print progress to stderr")
    imp.set_defaults(func=_import)
    prices = sub.add_parser("prices", help="look up prices, check a price file")
    prices_sub = prices.add_subparsers(dest="prices_command", required=True)
    lookup = prices_sub.add_parser("lookup", help="the price entry that would price MODEL")
    lookup.add_argument("model")
    lookup.add_argument("--provider", default=None, help="gen_ai.provider.name, e.g. openai, anthropic, aws.bedrock")
    lookup.add_argument("--at", default=None, help="date (YYYY-MM-DD) the span started; default now")
    lookup.add_argument("--price-file", default=None, help="price overrides to apply (YAML)")
    lookup.add_argument("--tier", default=None, help="service tier: priority, flex, batch (default: standard)")
    lookup.add_argument("--server-address", default=None,
                        help="where the call went (server.address), e.g. api.deepseek.com for the OpenAI SDK on DeepSeek")
    lookup.set_defaults(func=_prices_lookup)
    reload_ = prices_sub.add_parser("reload", help="make a running service re-read its price file now (as SIGHUP)")
    _add_admin_flags(reload_)
    reload_.set_defaults(func=_prices_reload)
    reprice = prices_sub.add_parser("reprice", help="re-price stored spans with the prices in force; rollups follow")
    reprice.add_argument("--since", required=True, help="start: a duration back from now (7d, 12h) or an ISO time")
    reprice.add_argument("--until", default="0s", help="end (exclusive), as --since; default now")
    reprice.add_argument("--model", default=None)
    reprice.add_argument("--provider", default=None)
    reprice.add_argument("--tenant", default=None)
    reprice.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    reprice.add_argument("--actor", default=os.environ.get("USER", "operator"), help="who, for the audit row")
    _add_admin_flags(reprice)
    reprice.set_defaults(func=_prices_reprice)
    check = prices_sub.add_parser("check", help="validate a price override file")
    check.add_argument("file")
    check.set_defaults(func=_prices_check)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    token = args.admin_token or os.environ.get("TOKENPULSE_ADMIN_TOKEN", "")
    if token:  # every admin API call of this command carries it
        opener = urllib.request.build_opener()
        opener.addheaders = [("Authorization", f"Bearer {token}")]
        urllib.request.install_opener(opener)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"tokenpulse: configuration error: {e}", file=sys.stderr)
        return 2
    except StorageError as e:
        print(f"tokenpulse: storage error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``tokenpulse`` command.

    tokenpulse serve [--grpc-port N] [--http-port N] [--admin-port N] [--data-dir DIR]
                     [--clickhouse-url URL] [--config FILE] [... every setting as a flag]
    tokenpulse sql "SELECT ..." [--admin-url URL | --clickhouse-url URL] [--format table|json|csv]
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import logging
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
        default = "{}" if f.name == "attribute_keys" else repr(f.default)
        p.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                       help=f"{f.metadata['doc']} (default: {default}; env TOKENPULSE_{f.name.upper()})")


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
    gc.freeze()
    while not stop.wait(1.0):
        pass
    log.info("stopping: finishing requests in flight and flushing")
    return 0 if service.shutdown() else 1


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

    if args.clickhouse_url:
        from tokenpulse.storage.server import ServerBackend

        backend = ServerBackend(args.clickhouse_url)
        backend.use_database(args.database)
        body = backend.query(args.query, "JSONCompact", readonly=True)
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
    columns, rows = parse_sql_json(body)
    print(_render(columns, rows, args.format))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenpulse", description="Token and cost observability for LLM agents.")
    parser.add_argument("--version", action="version", version=f"tokenpulse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OTLP receivers, the writer and the admin API")
    serve.add_argument("--config", default=None, help="YAML config file (env TOKENPULSE_CONFIG)")
    _add_setting_flags(serve)
    serve.set_defaults(func=_serve)

    sql = sub.add_parser("sql", help="run a read-only SQL query")
    sql.add_argument("query")
    sql.add_argument("--admin-url", default="http://127.0.0.1:4319",
                     help="admin API of a running `tokenpulse serve` (default: %(default)s)")
    sql.add_argument("--clickhouse-url", default=None, help="query a ClickHouse server directly instead")
    sql.add_argument("--database", default="tokenpulse", help="database with --clickhouse-url (default: %(default)s)")
    sql.add_argument("--format", choices=("table", "json", "csv"), default="table")
    sql.add_argument("--timeout", type=float, default=60.0)
    sql.set_defaults(func=_sql)

    args = parser.parse_args(argv)
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

"""``tokenpulse import``: load past spans through a running service, so baselines exist at once.

Alert rules compare now with history (``docs/alerts.md``). A fresh install has none; spans kept
elsewhere (the OpenTelemetry Collector's ``file`` exporter, or any OTLP/JSON dump) can be sent in
with their original timestamps, and every rollup and baseline fills as if they had arrived live.

Input: files of OTLP/JSON ``ExportTraceServiceRequest`` documents (``{"resourceSpans": [...]}``),
one per line (the Collector ``file`` exporter's JSON format) or one per file; ``.gz`` files are
read compressed. Each document goes to ``/v1/traces`` as an OTLP/HTTP JSON request, through the
same receive, enrich and storage path as live traffic, and is acknowledged before the next is sent.

A request the service asks to retry (429, 503; ``Retry-After`` honoured) is sent again; a document
the service refuses (400: not OTLP/JSON) is reported with its file and line and skipped, the rest
still go in. Spans older than the retention (``retention_days``) are dropped by the service, as live
ones would be. Standard library only.
"""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterator

from tokenpulse.retry import Backoff, parse_retry_after

_RETRY_STATUSES = (429, 502, 503, 504)


@dataclass
class ImportResult:
    requests: int = 0
    spans: int = 0  # spans acknowledged (sent minus rejected)
    rejected: int = 0  # spans the service refused (partial success)
    retries: int = 0
    errors: list[str] = field(default_factory=list)  # "file:line: reason" of documents not imported


def documents(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, one OTLP/JSON document) of a file: JSON lines, or one document in the file."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    stripped = data.strip()
    if not stripped:
        return
    lines = stripped.split(b"\n")
    if len(lines) > 1 and all(ln.strip().startswith(b"{") for ln in lines if ln.strip()):
        try:  # JSON lines, unless the whole file is one pretty-printed document
            json.loads(lines[0])
        except ValueError:
            yield 1, stripped
            return
        for n, line in enumerate(lines, 1):
            if line.strip():
                yield n, line.strip()
        return
    yield 1, stripped


def _spans_in(doc: bytes) -> int:
    try:
        d = json.loads(doc)
    except ValueError:
        return 0
    if not isinstance(d, dict):
        return 0
    return sum(len(ss.get("spans") or []) for rs in d.get("resourceSpans") or d.get("resource_spans") or []
               if isinstance(rs, dict) for ss in rs.get("scopeSpans") or rs.get("scope_spans") or []
               if isinstance(ss, dict))


def import_files(paths: list[str], endpoint: str, api_key: str = "", timeout_s: float = 60.0,
                 max_wait_s: float = 300.0, progress: Callable[[ImportResult], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> ImportResult:
    """Send every document of ``paths`` to ``endpoint`` (``http://host:4318``) one at a time."""
    url = endpoint.rstrip("/") + "/v1/traces"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    out = ImportResult()
    for path in paths:
        try:
            docs = list(documents(path))
        except (OSError, EOFError) as e:
            out.errors.append(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}")
            continue
        for line, doc in docs:
            where = f"{path}:{line}"
            error = _send(url, doc, headers, timeout_s, max_wait_s, out, sleep)
            if error:
                out.errors.append(f"{where}: {error}")
            if progress is not None:
                progress(out)
    return out


def _send(url: str, doc: bytes, headers: dict, timeout_s: float, max_wait_s: float, out: ImportResult,
          sleep: Callable[[float], None]) -> str:
    """Send one document until it is acknowledged or refused; "" or the reason it was not imported."""
    backoff = Backoff(initial_s=1.0, max_s=30.0, max_elapsed_s=max_wait_s)
    while True:
        status, body, retry_after = _post(url, doc, headers, timeout_s)
        if status == 200:
            out.requests += 1
            sent = _spans_in(doc)
            rejected = _rejected(body)
            out.spans += sent - rejected
            out.rejected += rejected
            return ""
        if status in _RETRY_STATUSES or status == 0:
            delay = backoff.next_delay(retry_after)
            if delay is not None:
                out.retries += 1
                sleep(delay)
                continue
            return f"not acknowledged after {max_wait_s:.0f} s of retries (last: {_reason(status, body)})"
        return f"refused: {_reason(status, body)}"


def _post(url: str, doc: bytes, headers: dict, timeout_s: float) -> tuple[int, bytes, float | None]:
    req = urllib.request.Request(url, data=doc, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read(), None
    except urllib.error.HTTPError as e:
        return e.code, e.read(), parse_retry_after(e.headers.get("Retry-After"))
    except (urllib.error.URLError, OSError) as e:  # not reachable (yet): retried like a 503
        return 0, str(getattr(e, "reason", e)).encode(), None


def _rejected(body: bytes) -> int:
    try:
        partial = json.loads(body or b"{}").get("partialSuccess") or {}
        return int(partial.get("rejectedSpans") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


def _reason(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        text = json.loads(text).get("message", text)
    except (ValueError, AttributeError):
        pass
    return f"HTTP {status}: {text[:300]}" if status else f"cannot connect: {text[:300]}"

"""Real local HTTP servers that speak Slack's, PagerDuty's and a generic webhook's answers.

Slack and PagerDuty cannot run here, so these stand in for them on the wire:
Slack answers 200 ``ok``, PagerDuty 202 with its JSON, a webhook 200. A test
can script other answers (429 with Retry-After, 500, 400) for the next requests.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_ANSWERS = {
    "slack": (200, "ok", {"Content-Type": "text/plain"}),
    "pagerduty": (202, None, {"Content-Type": "application/json"}),
    "webhook": (200, "", {}),
}


class Receiver:
    def __init__(self, kind: str = "webhook"):
        self.kind = kind
        self.requests: list[dict] = []  # {"path", "headers", "body" (parsed JSON), "raw", "status"}
        self.script: list[tuple[int, str, dict]] = []  # answers for the next requests, in order
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.cond:
                    status, text, headers = receiver.script.pop(0) if receiver.script else DEFAULT_ANSWERS[kind]
                    if text is None:  # PagerDuty echoes the dedup key
                        key = json.loads(raw).get("dedup_key", "")
                        text = json.dumps({"status": "success", "message": "Event processed", "dedup_key": key})
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "raw": raw,
                                              "body": json.loads(raw) if raw else None, "status": status})
                    receiver.cond.notify_all()
                data = text.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self, status: int | None = None) -> list:
        with self.cond:
            return [r["body"] for r in self.requests if status is None or r["status"] == status]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.requests) >= n, timeout)
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

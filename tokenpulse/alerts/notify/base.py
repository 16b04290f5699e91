"""What every notifier shares: channels, the one HTTP sender and its retry policy, the result types.

Retry policy (``post``), as Alertmanager's ``notify/util.go`` Retrier and the
receivers' own docs (docs/sources.md#webhooks):

* network errors and 5xx: retried with exponential back-off and full jitter;
* 429: retried after ``Retry-After`` when it is short; a long one ends the
  attempt and is handed back, so the state machine asks again no earlier;
* any other 4xx: not retried (the request itself is wrong); logged with the
  receiver's reason.

Secrets (webhook URLs, routing keys, signing secrets) are never logged or
stored: log lines and the notification log name the channel, not its URL.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from tokenpulse.alerts.state import Notification
from tokenpulse.errors import ConfigError
from tokenpulse.retry import Backoff, parse_retry_after

log = logging.getLogger(__name__)

CHANNEL_TYPES = ("slack", "pagerduty", "webhook")
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"  # PagerDuty developer docs, Events API v2


@dataclass(frozen=True)
class Channel:
    name: str
    type: str
    url: str = field(repr=False)
    routing_key: str = field(default="", repr=False)  # PagerDuty integration key
    secret: str = field(default="", repr=False)  # webhook HMAC-SHA256 signing secret
    send_resolved: bool = True
    timeout_s: float = 5.0
    max_attempts: int = 4
    max_alerts: int = 0  # webhook: alerts per message (0: all), as Alertmanager's max_alerts
    # Routing: label -> accepted values (the rule is label "alertname"); an alert reaches this channel
    # only if it matches every key. PagerDuty defaults to severity critical: info and warning do not
    # open incidents.
    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def accepts(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k, "") in values for k, values in self.match.items())


def parse_channels(raw: Mapping[str, Any], source: str = "alert_channels") -> dict[str, Channel]:
    out = {}
    for name, spec in raw.items():
        where = f"{source}.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: must be a mapping with at least 'type'")
        kind = spec.get("type")
        if kind not in CHANNEL_TYPES:
            raise ConfigError(f"{where}: type must be one of {', '.join(CHANNEL_TYPES)}, not {kind!r}")
        unknown = set(spec) - {"type", "url", "routing_key", "secret", "send_resolved", "timeout_s",
                               "max_attempts", "max_alerts", "match"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        url = str(spec.get("url") or (PAGERDUTY_URL if kind == "pagerduty" else ""))
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: url must be an http(s) URL")
        if kind == "pagerduty" and not spec.get("routing_key"):
            raise ConfigError(f"{where}: a pagerduty channel needs routing_key (the integration key)")
        match = spec.get("match", {"severity": ["critical"]} if kind == "pagerduty" else {})
        if not isinstance(match, Mapping) or not all(isinstance(v, (str, list)) for v in match.values()):
            raise ConfigError(f"{where}: match must map a label (severity, alertname, tenant, ...) to a value or a "
                              "list of values")
        match = {("alertname" if k == "rule" else str(k)): tuple(str(x) for x in ([v] if isinstance(v, str) else v))
                 for k, v in match.items()}
        try:
            ch = Channel(str(name), kind, url, str(spec.get("routing_key") or ""), str(spec.get("secret") or ""),
                         bool(spec.get("send_resolved", True)), float(spec.get("timeout_s", 5.0)),
                         int(spec.get("max_attempts", 4)), int(spec.get("max_alerts", 0)), match)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
        if ch.max_attempts < 1 or ch.timeout_s <= 0:
            raise ConfigError(f"{where}: max_attempts must be >= 1 and timeout_s > 0")
        out[ch.name] = ch
    return out


@dataclass
class Sent:
    """What became of one notification on one channel."""

    delivered: frozenset[str]  # fingerprints that got through
    ok: bool
    status: int = 0  # last HTTP status (0: none)
    attempts: int = 0
    error: str = ""
    retry_after_s: float | None = None  # the receiver asked us to wait this long
    refused: frozenset[str] = frozenset()  # refused for good (a 4xx other than 408/429): never sent again


# An alert's labels -> the dashboard's runs filter (the same mapping as app.js drillOfLabels).
_DRILL = (("tenant", "tenant"), ("feature", "feature"), ("session", "session"), ("session_id", "session"),
          ("user", "user"), ("user_id", "user"), ("model", "model"))


def runs_url(external_url: str, labels: Mapping[str, str]) -> str:
    """The dashboard view of an incident: the runs behind the alert, costliest first ("" without
    an external URL)."""
    import urllib.parse

    if not external_url:
        return ""
    drill = {to: labels[k] for k, to in _DRILL if labels.get(k) and labels[k] != "unattributed"}
    if labels.get("dimension") and labels.get("key"):
        drill[{"user_id": "user"}.get(labels["dimension"], labels["dimension"])] = labels["key"]
    query = urllib.parse.urlencode(sorted(drill.items()))
    return f"{external_url.rstrip('/')}/{'?' + query if query else ''}#runs-panel"


def runbook_url(external_url: str, annotations: Mapping[str, str]) -> str:
    """The alert's runbook as a link: a URL as it is, a path (``/runbooks#NAME``) on the service."""
    url = annotations.get("runbook_url", "")
    if url.startswith("/"):
        return f"{external_url.rstrip('/')}{url}" if external_url else ""
    return url


def duration(seconds: float) -> str:
    """'2h 5m', '3m 20s', '45s'."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h {m}m" if h else f"{m}m {sec}s" if m else f"{sec}s"


def refused_for_good(status: int) -> bool:
    """The receiver says the request itself is wrong (PagerDuty's 400 "invalid event"): sending the
    same body again cannot help, so it is logged and counted, not re-sent."""
    return 400 <= status < 500 and status not in (408, 429)


@dataclass
class Response:
    ok: bool
    status: int
    body: str
    attempts: int
    error: str = ""
    retry_after_s: float | None = None


MAX_INLINE_RETRY_AFTER_S = 10.0  # a longer Retry-After ends this attempt (see module docstring)


def post(channel: Channel, body: bytes, headers: Mapping[str, str], accept: Callable[[int, str], bool],
         sleep: Callable[[float], None] = time.sleep, backoff_s: float = 0.5) -> Response:
    """POST ``body`` with retries; ``accept(status, text)`` says whether the receiver took it."""
    status, text, error, retry_after = 0, "", "", None
    backoff = Backoff(initial_s=backoff_s, max_s=backoff_s * 2 ** channel.max_attempts, jitter="full")
    for attempt in range(1, channel.max_attempts + 1):
        retry_after = None
        req = urllib.request.Request(channel.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "tokenpulse",
                                              **headers})
        try:
            with urllib.request.urlopen(req, timeout=channel.timeout_s) as resp:
                status, text = resp.status, resp.read(4096).decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            status = e.code
            text = e.read(4096).decode("utf-8", "replace") if e.fp else ""
            retry_after = parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
            status, text = 0, ""
            reason = getattr(e, "reason", e)
            error = f"network error: {type(reason).__name__}: {reason}" if not isinstance(reason, str) \
                else f"network error: {reason}"
        if status and accept(status, text):
            return Response(True, status, text, attempt)
        if status:
            error = f"HTTP {status}: {text.strip()[:200]}"
        retryable = status == 0 or status == 429 or status >= 500
        if not retryable:
            log.warning("channel %s refused a notification (not retried): %s", channel.name, error)
            return Response(False, status, text, attempt, error)
        if attempt == channel.max_attempts:
            break
        if retry_after is not None:
            if retry_after > MAX_INLINE_RETRY_AFTER_S:
                return Response(False, status, text, attempt, error, retry_after)
            wait = retry_after
        else:
            wait = backoff.next_delay()
        log.info("channel %s: %s; retrying in %.2fs (attempt %d of %d)", channel.name, error, wait, attempt,
                 channel.max_attempts)
        sleep(wait)
    log.warning("channel %s: giving up after %d attempts: %s", channel.name, channel.max_attempts, error)
    return Response(False, status, text, channel.max_attempts, error, retry_after)


@dataclass(frozen=True)
class Context:
    """What every message may link to or name."""

    external_url: str = ""  # the admin API base URL, for links back
    source: str = "tokenpulse"


class Notifier:
    """Base: ``send`` one notification, return what got through."""

    # True for a receiver that keys what it is sent by incident (PagerDuty's dedup_key): an alert's
    # resolve is then held until its whole incident is over (alerts/incidents.py).
    keys_by_incident = False

    def __init__(self, channel: Channel, context: Context = Context(), sleep: Callable[[float], None] = time.sleep,
                 backoff_s: float = 0.5):
        self.channel = channel
        self.context = context
        self.sleep = sleep
        self.backoff_s = backoff_s

    def wants(self, note: Notification) -> bool:
        return note.status == "firing" or self.channel.send_resolved

    def send(self, note: Notification) -> Sent:  # pragma: no cover - abstract
        raise NotImplementedError

    def _post(self, body: bytes, accept: Callable[[int, str], bool], headers: Mapping[str, str] | None = None
              ) -> Response:
        return post(self.channel, body, headers or {}, accept, self.sleep, self.backoff_s)


def iso(ts: float | None) -> str:
    """RFC 3339 UTC, as Alertmanager writes startsAt/endsAt ('0001-01-01T00:00:00Z' for none)."""
    import datetime as dt

    if ts is None:
        return "0001-01-01T00:00:00Z"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

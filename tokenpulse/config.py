"""Settings: one typed object, every field documented.

Precedence, highest first: command-line flag > environment variable
``TOKENPULSE_<NAME>`` > YAML config file (``--config``) > default. Invalid
values fail at start-up with a message naming the setting and its source.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import yaml

from tokenpulse.errors import ConfigError

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    listen_host: str = field(default="localhost", metadata={
        "doc": "address the OTLP receivers bind; localhost by default, as the OpenTelemetry Collector's receivers "
               "(since v0.104): use 0.0.0.0 in a container or to receive from other machines"})
    grpc_port: int = field(default=4317, metadata={"doc": "OTLP/gRPC port (0: any free port)", "port": True})
    http_port: int = field(default=4318, metadata={"doc": "OTLP/HTTP port (0: any free port)", "port": True})
    admin_host: str = field(default="127.0.0.1", metadata={
        "doc": "address of the admin API (/healthz, /metrics, /api/sql); localhost by default"})
    admin_port: int = field(default=4319, metadata={"doc": "admin API port (0: any free port)", "port": True})
    data_dir: str = field(default="./tokenpulse-data", metadata={
        "doc": "embedded ClickHouse (chDB) data directory; used when no clickhouse_url is set"})
    clickhouse_url: str = field(default="", metadata={
        "doc": "ClickHouse server URL, e.g. http://user@host:8123; empty: embedded chDB. A password in a command-line "
               "flag shows in `ps`: give it in TOKENPULSE_CLICKHOUSE_URL, the config file or clickhouse_password_file"})
    clickhouse_password_file: str = field(default="", metadata={
        "doc": "file holding the ClickHouse password (one line), used with clickhouse_url's user", "secret": True})
    clickhouse_cluster: str = field(default="", metadata={
        "doc": "ClickHouse cluster name (from the server's remote_servers): migrations run ON CLUSTER with "
               "Replicated tables and Distributed tables over them (docs/deploying.md); server only"})
    database: str = field(default="tokenpulse", metadata={"doc": "ClickHouse database for tokenpulse tables"})
    # At most ~55 years: ClickHouse's DateTime ends in 2106, and a TTL past it wraps and drops rows at once.
    retention_days: int = field(default=30, metadata={"doc": "TTL of spans, by start_time", "min": 1,
                                                      "max": 20_000})
    max_request_bytes: int = field(default=16 * MiB, metadata={
        "doc": "largest OTLP request, compressed or inflated (over it: 413 / RESOURCE_EXHAUSTED)",
        "min": 1024, "bytes": True})
    max_spans_per_request: int = field(default=100_000, metadata={
        "doc": "spans beyond this many in one request are refused (partial success, too_many_spans)", "min": 1})
    max_attributes_per_span: int = field(default=256, metadata={
        "doc": "attributes beyond this many on a span or resource are dropped (counted)", "min": 1})
    max_attribute_value_chars: int = field(default=65_536, metadata={
        "doc": "attribute values longer than this many characters are cut (counted)", "min": 1})
    body_timeout_s: float = field(default=30.0, metadata={
        "doc": "an OTLP/HTTP request body not received within this many seconds is answered 408 (a stalled "
               "client holds no memory longer)", "min": 0.1})
    max_inflight_bytes: int = field(default=64 * MiB, metadata={
        "doc": "request bodies in progress (read, decoding, waiting for their write) beyond which new Exports "
               "are answered 429 / UNAVAILABLE at once (overload shedding); a body counts as it arrives, and "
               "again inflated", "min": 1024, "bytes": True})
    batch_max_spans: int = field(default=50_000, metadata={"doc": "flush an insert at this many spans", "min": 1})
    batch_eager_spans: int = field(default=20_000, metadata={
        "doc": "with this many spans queued, insert without waiting for requests still being decoded",
        "min": 1})
    batch_max_bytes: int = field(default=64 * MiB, metadata={
        "doc": "flush an insert at this many request bytes", "min": 1024, "bytes": True})
    batch_max_age_s: float = field(default=0.5, metadata={
        "doc": "while other requests are being decoded, wait for them at most until the oldest waiting "
               "request is this old (seconds); a request nobody follows is written at once", "min": 0.0})
    queue_max_spans: int = field(default=500_000, metadata={
        "doc": "spans waiting for storage before Export answers 429 / UNAVAILABLE (also capped by memory_budget)",
        "min": 1})
    memory_budget: int = field(default=2 * 1024 * MiB, metadata={
        "doc": "memory for requests under load: caps max_inflight_bytes and queue_max_spans so that bodies in "
               "progress, decoded spans and the write queue fit in it beside the idle process, and below 2 GiB "
               "shrinks the dedup, duplicate-call and trace memories; the default held peak RSS under every "
               "measured overload shape (docs/durability.md)",
        "min": 1536 * MiB, "bytes": True})  # 1 GiB did not hold with 40 gRPC clients (docs/durability.md)
    retry_after_s: float = field(default=1.0, metadata={
        "doc": "retry delay sent with 429/503 (Retry-After) and UNAVAILABLE (RetryInfo)", "min": 0.0})
    ack_timeout_s: float = field(default=5.0, metadata={
        "doc": "longest an Export waits for its durable write before answering retry", "min": 0.1})
    dedup_window_s: float = field(default=600.0, metadata={
        "doc": "how long stored span ids are remembered to drop exporter retries", "min": 0.0})
    dedup_max_keys: int = field(default=2_000_000, metadata={
        "doc": "cap on remembered span ids (~70 bytes each); 0 disables the cache", "min": 0})
    spool_dir: str = field(default="", metadata={
        "doc": "on-disk spool for accepted spans while ClickHouse is down (docs/durability.md); "
               "empty: DATA_DIR/spool"})
    spool_max_bytes: int = field(default=1024 * MiB, metadata={
        "doc": "spool size cap; when full, Exports are answered retry (nothing spooled is dropped); "
               "0 disables the spool", "min": 0, "bytes": True})
    insert_fsync: bool = field(default=False, metadata={
        "doc": "on: ClickHouse fsyncs every inserted part before the insert returns (fsync_after_insert, "
               "fsync_part_directory on every table an insert writes), so an acknowledgement survives power loss, "
               "not only a crash of tokenpulse or ClickHouse; costs insert time (docs/durability.md)"})
    spool_replay_max_attempts: int = field(default=10, metadata={
        "doc": "attempts at one spooled batch while ClickHouse answers but refuses it; then it is set aside in "
               "SPOOL_DIR/refused-*.arrow (counted, logged) and the replay goes on. An outage is waited out however "
               "long it lasts", "min": 1})
    dedup_storage_check: bool = field(default=False, metadata={
        "doc": "on: before each insert, also drop spans ClickHouse already has (one indexed query per insert); "
               "for several receivers without routing by trace id (docs/deploying.md)"})
    trace_tags_lookup: bool = field(default=False, metadata={
        "doc": "on: for child spans of traces this process has not seen, fetch the trace's tags from "
               "ClickHouse before attributing them; for several receivers without routing by trace id"})
    shutdown_timeout_s: float = field(default=30.0, metadata={
        "doc": "time allowed on SIGTERM to finish requests in flight and flush", "min": 0.0})
    price_reload_interval_s: float = field(default=10.0, metadata={
        "doc": "how often the price file's modification time is checked; a changed file is re-read, validated and "
               "swapped in (SIGHUP and POST /api/prices/reload reload at once); 0: only on those", "min": 0.0})
    price_file: str = field(default="", metadata={
        "doc": "YAML price overrides (see docs/prices.md); check one with `tokenpulse prices check FILE`"})
    user_id_mode: str = field(default="pseudonymize", metadata={
        "doc": "pseudonymize (HMAC-SHA256 with user_id_key), raw (store ids as sent; opt-in) or drop",
        "choices": ("pseudonymize", "raw", "drop")})
    user_id_key: str = field(default="", metadata={
        "doc": "HMAC key for user ids (>= 16 chars). Embedded storage: generated once into the data "
               "directory when empty; a ClickHouse server needs it set (receivers must share it)",
        "secret": True})
    personal_keys: str = field(default="user.email,user.full_name,user.name,enduser.email", metadata={
        "doc": "comma-separated attribute keys that hold personal data besides the user id keys: stored (and "
               "forwarded) as pseudonyms, or dropped, exactly as user ids are under user_id_mode"})
    capture_content: bool = field(default=False, metadata={
        "doc": "store prompt and completion content attributes (gen_ai.input.messages, llm.input_messages.*, "
               "input.value, langfuse.observation.input, ...; docs/enrichment.md); off: dropped at ingest"})
    content_max_chars: int = field(default=4096, metadata={
        "doc": "with capture_content on, each content attribute is cut to this many characters", "min": 1})
    require_tags: str = field(default="", metadata={
        "doc": "tag-or-reject: comma-separated dimensions a span must have (e.g. tenant,feature), "
               "else it is refused with partial success; empty: off (missing tags -> 'unattributed')"})
    attribute_keys: dict = field(default_factory=dict, metadata={
        "doc": "per-dimension attribute keys, replacing the defaults: {tenant: [k1, k2], ...} "
               "(YAML, or JSON in the flag/env)"})
    outcome_attribute: str = field(default="", metadata={
        "doc": "attribute (span, else resource) that reports a run's outcome, e.g. app.outcome; empty: "
               "a run succeeds when its root span is not ERROR"})
    outcome_success_values: str = field(default="success,ok,succeeded,true,pass,passed", metadata={
        "doc": "comma-separated values of outcome_attribute that mean success (case-insensitive); "
               "any other value means failure"})
    role: str = field(default="all", metadata={
        "doc": "all (receivers + alert evaluator), receiver (OTLP only; run one evaluator elsewhere) or "
               "evaluator (alert rules only, no OTLP ports)", "choices": ("all", "receiver", "evaluator")})
    alert_rules_dir: str = field(default="", metadata={
        "doc": "directory of your own alert rules (*.sql, docs/alerts.md); a file named like a built-in "
               "rule replaces it"})
    alert_rules: dict = field(default_factory=dict, metadata={
        "doc": "per-rule overrides: {RULE: {enabled, interval, for, keep_firing_for, repeat_interval, "
               "severity, channels, labels, PARAM: value}}", "parse": "rule_overrides"})
    alert_channels: dict = field(default_factory=dict, metadata={
        "doc": "notification channels: {NAME: {type: slack|pagerduty|webhook, url, routing_key, secret, "
               "send_resolved, timeout_s, max_attempts, max_alerts}}; rules send to 'default' unless they "
               "name others", "parse": "channels", "secret": True})
    alert_route: dict = field(default_factory=dict, metadata={
        "doc": "the routing tree: {routes: [{match: {label: values}, channels: [...], continue, routes}]}; the "
               "first matching route decides an alert's channels, else its rule's (docs/alerts.md)",
        "parse": "route"})
    alert_inhibit: dict = field(default_factory=dict, metadata={
        "doc": "inhibition, as Alertmanager's: {NAME: {source: {label: values}, target: {label: values}, "
               "equal: [labels]}} adds or replaces a rule, {NAME: null} drops a built-in one (docs/alerts.md)",
        "parse": "inhibit"})
    budgets: dict = field(default_factory=dict, metadata={
        "doc": "spend budgets: {NAME: {dimension: total|tenant|feature|model|agent_role, value: X or '*', "
               "period: day|month, limit_usd: N}}; the budget rule pages at 50/80/100 %", "parse": "budgets"})
    throttle_cooldown_s: float = field(default=300.0, metadata={
        "doc": "a throttled tenant is released this long after the last alert throttling it resolved",
        "min": 0.0})
    throttle_channels: str = field(default="default", metadata={
        "doc": "comma-separated alert channels told when a tenant is throttled or released"})
    throttle_message: str = field(default="", metadata={
        "doc": "message for the end customer of a throttled tenant ($tenant, $minutes, $retry_after_s, "
               "$reason, $reason_short); empty: the built-in text"})
    external_url: str = field(default="", metadata={
        "doc": "this service's admin URL as people reach it, for links in notifications"})
    api_keys: dict = field(default_factory=dict, metadata={
        "doc": "API keys by SHA-256: {HASH: {name, tenant}}; when any key is set (here or in api_keys_file), "
               "OTLP requests need Authorization: Bearer KEY, and a key's tenant wins over the spans' own "
               "(docs/security.md)", "parse": "api_keys", "secret": True})
    api_keys_file: str = field(default="", metadata={
        "doc": "YAML/JSON file of API keys in the api_keys shape (merged with api_keys)"})
    admin_token_sha256: str = field(default="", metadata={
        "doc": "SHA-256 of the admin API token; when set, every admin route but /healthz needs "
               "Authorization: Bearer TOKEN (CLI: --admin-token or TOKENPULSE_ADMIN_TOKEN)", "secret": True})
    throttle_list_open: bool = field(default=False, metadata={
        "doc": "serve GET /v1/throttle (every throttled tenant) on the OTLP/HTTP port to anyone; off: there it "
               "needs an API key (when keys are configured) or the admin token, as the admin API does. A "
               "tenant's own decision (/v1/throttle/TENANT) is always served there for agents"})
    tls_cert_file: str = field(default="", metadata={
        "doc": "PEM certificate chain for TLS on both OTLP receivers (with tls_key_file); empty: plain text"})
    tls_key_file: str = field(default="", metadata={"doc": "PEM private key for tls_cert_file", "secret": True})
    admin_tls: bool = field(default=False, metadata={
        "doc": "serve the admin API (and the dashboard page) over TLS too, with tls_cert_file and tls_key_file"})
    rollups: bool = field(default=True, metadata={
        "doc": "on: the evaluator rolls up settled hours for the panels that read rollups (docs/queries.md); "
               "off: those panels compute everything live (on/off, true/false)"})
    rollup_settle_s: float = field(default=900.0, metadata={
        "doc": "an hour is rolled up once it ended this long ago; spans arriving later than that are "
               "left out of the scheduled rollups", "min": 0.0})
    forward: dict = field(default_factory=dict, metadata={
        "doc": "processor mode: send stored spans on, enriched, to OTLP destinations: {NAME: {endpoint, "
               "protocol: grpc|http/protobuf, spans: all|genai, headers, compression, timeout_s, tls, "
               "queue_spans, retry}} (docs/forwarding.md)", "parse": "forward", "secret": True})
    telemetry: dict = field(default_factory=dict, metadata={
        "doc": "export tokenpulse's own traces and metrics over OTLP with the OpenTelemetry SDK: {endpoint, "
               "protocol: grpc|http/protobuf, headers, traces: true, metrics: true, interval_s: 15, "
               "service_name} (docs/forwarding.md)", "parse": "telemetry", "secret": True})
    log_level: str = field(default="info", metadata={
        "doc": "debug, info, warning or error", "choices": ("debug", "info", "warning", "error")})


# Measured on this machine kind (docs/durability.md): an idle `tokenpulse serve` with the embedded
# engine holds ~360 MiB, and ~450 with the engine's merges under load; a decoded and enriched span
# ~3.8 KiB of Python objects and ~1.3 KiB of Arrow (bench spans, 640 bytes each on the wire, so ~6x
# their wire size while decoded).
MEMORY_BASELINE = 450 * MiB
MEMORY_PER_QUEUED_SPAN = 6 * 1024
# The rest: spans being decoded (~6x their bodies), the engine's inserts. The queue's share was 40 %
# until decoding got faster (issue 20): more requests were then decoded at once beside a full queue,
# and 10x overload (80 gRPC clients, 5,000-span requests) peaked at 1.95-2.1 GiB; at 30 %, 1.81-1.90.
INFLIGHT_SHARE, QUEUE_SHARE = 0.04, 0.30
# The bounded memories (the writer's dedup keys, duplicate calls, trace tags and roles) are sized for the
# 2 GiB default, and account for most of what a loaded process holds beyond its queue (at 1 GiB with
# them at full size, 120 HTTP senders pushed RSS past 1.38 GB in 40 s and still rising; at a third,
# ~1.1 GB). A smaller budget shrinks them in proportion to what it leaves beyond MEMORY_FIXED.
MEMORY_DEFAULT_ROOM = 2048 * MiB - MEMORY_BASELINE
MEMORY_FIXED = 400 * MiB


def _memory_limits(self: "Settings") -> tuple[int, int]:
    """(in-flight body bytes, queued spans) that fit in ``memory_budget``: the smaller of each and
    what the budget leaves after the idle process."""
    room = max(self.memory_budget - MEMORY_BASELINE, 64 * MiB)
    return (min(self.max_inflight_bytes, max(1024, int(room * INFLIGHT_SHARE))),
            min(self.queue_max_spans, max(1000, int(room * QUEUE_SHARE / MEMORY_PER_QUEUED_SPAN))))


def _memory_scale(self: "Settings") -> float:
    """The share of their default sizes the bounded memories get under ``memory_budget`` (1 at 2 GiB
    and above)."""
    room = self.memory_budget - MEMORY_BASELINE
    return max(0.05, min(1.0, (room - MEMORY_FIXED) / (MEMORY_DEFAULT_ROOM - MEMORY_FIXED)))


Settings.memory_limits = property(_memory_limits)
Settings.memory_scale = property(_memory_scale)


def _required_tags(self: "Settings") -> tuple[str, ...]:
    return tuple(t.strip() for t in self.require_tags.split(",") if t.strip())


Settings.required_tags = property(_required_tags)

SETTING_NAMES = tuple(f.name for f in fields(Settings))
_FIELDS = {f.name: f for f in fields(Settings)}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mi": MiB, "mib": MiB, "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3}


def _convert(name: str, value: Any, source: str) -> Any:
    f = _FIELDS[name]
    meta = f.metadata
    typ = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "dict": dict, "bool": bool}[f.type]
    if typ is dict:
        return _PARSERS[meta.get("parse", "attribute_keys")](name, _as_mapping(name, value, source), source)
    try:
        if typ is int and meta.get("bytes") and isinstance(value, str):
            m = _SIZE_RE.match(value)
            if not m:
                raise ValueError(value)
            value = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])
        elif typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            value = int(value)
        elif typ is float:
            if isinstance(value, bool):
                raise ValueError(value)
            value = float(value)
        elif typ is bool:
            if not isinstance(value, bool):
                value = {"true": True, "1": True, "yes": True, "on": True,
                         "false": False, "0": False, "no": False, "off": False}[str(value).strip().lower()]
        else:
            value = "" if value is None else str(value)
    except (TypeError, ValueError, KeyError):
        raise ConfigError(f"{name} from {source}: {value!r} is not a valid {typ.__name__}") from None
    if meta.get("port") and not 0 <= value <= 65535:
        raise ConfigError(f"{name} from {source}: {value} is not a port (0-65535)")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{name} from {source}: {value} is below the minimum {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{name} from {source}: {value} is above the maximum {meta['max']}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name} from {source}: {value!r} is not one of {', '.join(meta['choices'])}")
    return value


def _as_mapping(name: str, value: Any, source: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as e:
            raise ConfigError(f"{name} from {source}: not valid JSON ({e})") from None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} from {source}: must be a mapping (YAML, or JSON in a flag or env var)")
    return value


def _attribute_keys(name: str, value: dict, source: str) -> dict:
    from tokenpulse.enrich.attribute import DIMENSIONS

    out = {}
    for dim, keys in value.items():
        if dim not in DIMENSIONS:
            raise ConfigError(f"{name} from {source}: unknown dimension {dim!r} (known: {', '.join(DIMENSIONS)})")
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"{name} from {source}: {dim} must be a non-empty list of attribute keys")
        out[dim] = tuple(keys)
    return out


def _rule_overrides(name: str, value: dict, source: str) -> dict:
    for rule, over in value.items():
        if over is not None and not isinstance(over, dict):
            raise ConfigError(f"{name}.{rule} from {source}: must be a mapping of setting: value")
    return {str(k): dict(v or {}) for k, v in value.items()}


def _route(name: str, value: dict, source: str) -> dict:
    from tokenpulse.alerts.routing import parse_tree

    parse_tree(value, f"{name} from {source}")  # fail at start-up
    return value


def _inhibit(name: str, value: dict, source: str) -> dict:
    from tokenpulse.alerts.incidents import parse_inhibit

    parse_inhibit(value, f"{name} from {source}")  # fail at start-up
    return value


def _channels(name: str, value: dict, source: str) -> dict:
    from tokenpulse.alerts.notify import parse_channels

    parse_channels(value, f"{name} from {source}")  # fail at start-up, not at the first page
    return value


BUDGET_DIMENSIONS = ("total", "tenant", "feature", "model", "agent_role")


def _budgets(name: str, value: dict, source: str) -> dict:
    out = {}
    for budget, spec in value.items():
        where = f"{name}.{budget} from {source}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a mapping with dimension, value, period, limit_usd")
        unknown = set(spec) - {"dimension", "value", "period", "limit_usd"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        dim = spec.get("dimension", "total")
        if dim not in BUDGET_DIMENSIONS:
            raise ConfigError(f"{where}: dimension must be one of {', '.join(BUDGET_DIMENSIONS)}")
        period = spec.get("period", "month")
        if period not in ("day", "month"):
            raise ConfigError(f"{where}: period must be day or month")
        try:
            limit = float(spec["limit_usd"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: limit_usd must be a number of US dollars") from None
        if limit <= 0:
            raise ConfigError(f"{where}: limit_usd must be above 0")
        default = "" if dim == "total" else "*"
        out[str(budget)] = {"name": str(budget), "dimension": dim, "value": str(spec.get("value", default)),
                            "period": period, "limit_usd": limit}
    return out


def _api_keys(name: str, value: dict, source: str) -> dict:
    from tokenpulse.receiver.auth import parse_keys

    parse_keys(value, f"{name} from {source}")
    return value


def _forward(name: str, value: dict, source: str) -> dict:
    from tokenpulse.forward.config import parse_destinations

    parse_destinations(value, f"{name} from {source}")
    return value


def _telemetry(name: str, value: dict, source: str) -> dict:
    from tokenpulse.telemetry import parse_telemetry

    parse_telemetry(value, f"{name} from {source}")
    return value


_PARSERS = {"forward": _forward, "telemetry": _telemetry, "api_keys": _api_keys, "attribute_keys": _attribute_keys, "rule_overrides": _rule_overrides, "channels": _channels, "inhibit": _inhibit, "route": _route,
            "budgets": _budgets}


def _check(settings: "Settings") -> "Settings":
    from tokenpulse.enrich.attribute import REQUIRED_CHOICES

    for tag in settings.required_tags:
        if tag not in REQUIRED_CHOICES:
            raise ConfigError(f"require_tags: unknown dimension {tag!r} (known: {', '.join(REQUIRED_CHOICES)})")
    if settings.clickhouse_cluster and not settings.clickhouse_url:
        raise ConfigError("clickhouse_cluster needs a ClickHouse server (clickhouse_url); the embedded engine "
                          "is one node")
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise ConfigError("tls_cert_file and tls_key_file go together")
    if settings.admin_tls and not settings.tls_cert_file:
        raise ConfigError("admin_tls needs tls_cert_file and tls_key_file")
    if settings.clickhouse_password_file and not settings.clickhouse_url:
        raise ConfigError("clickhouse_password_file needs clickhouse_url (a ClickHouse server)")
    if settings.admin_token_sha256 and not re.fullmatch(r"[0-9a-f]{64}", settings.admin_token_sha256):
        raise ConfigError("admin_token_sha256 must be the SHA-256 hex digest of the token "
                          "(`tokenpulse keys hash TOKEN`), not the token itself")
    if settings.user_id_key and len(settings.user_id_key) < 16:
        raise ConfigError("user_id_key must be at least 16 characters")
    return settings


def load_settings(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                  config_file: str | None = None) -> Settings:
    """Merge the sources; ``flags`` holds only what was given on the command line."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = config_file or env.get("TOKENPULSE_CONFIG") or None
    if config_file:
        try:
            with open(config_file, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config file {config_file}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {config_file} is not valid YAML: {e}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {config_file} must be a mapping of setting: value")
        for key, value in doc.items():
            name = str(key).replace("-", "_")
            if name not in _FIELDS:
                raise ConfigError(f"config file {config_file}: unknown setting {key!r} "
                                  f"(known: {', '.join(SETTING_NAMES)})")
            values[name] = _convert(name, value, f"config file {config_file}")
    for name in SETTING_NAMES:
        key = f"TOKENPULSE_{name.upper()}"
        if key in env:
            values[name] = _convert(name, env[key], f"environment variable {key}")
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _convert(name, value, f"flag --{name.replace('_', '-')}")
    return _check(Settings(**values))

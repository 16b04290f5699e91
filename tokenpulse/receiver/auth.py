"""API keys for the OTLP receivers (and the decision API), optional.

Keys are configured by their SHA-256 (hex), never in clear: ``api_keys`` in the
config or ``api_keys_file`` (YAML or JSON, same shape)::

    api_keys:
      9f86d081884c7d65...: {name: acme-prod, tenant: acme}
      60303ae22b998861...: {name: internal-collector}          # no tenant: spans keep their own

``tokenpulse keys new --tenant acme --name acme-prod`` makes a key and prints
both the key (give it to the sender) and its config line. A sender presents
``Authorization: Bearer <key>`` (HTTP header, or gRPC metadata ``authorization``).
When keys are configured, a request without a known key is refused
(UNAUTHENTICATED / 401) before its body is decoded. A key bound to a tenant
stamps that tenant on every span it sends, whatever the spans' own tenant
attributes say: no cross-tenant writes. Overrides are counted
(``tokenpulse_tenant_overridden_spans_total``).

Comparison is by hash lookup in a dict; the hash of a presented key is computed
with SHA-256, so timing reveals nothing useful about stored keys.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from tokenpulse.errors import ConfigError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ApiKey:
    name: str
    tenant: str = ""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "tp_" + secrets.token_urlsafe(32)


def parse_keys(raw: Mapping[str, Any], source: str) -> dict[str, ApiKey]:
    out = {}
    for digest, spec in (raw or {}).items():
        digest = str(digest).lower()
        if not _HEX64.match(digest):
            raise ConfigError(f"{source}: {digest[:12]}... is not a SHA-256 hex digest; configure keys by their "
                              "hash (`tokenpulse keys hash KEY`), never in clear")
        spec = spec or {}
        if not isinstance(spec, Mapping) or set(spec) - {"name", "tenant"}:
            raise ConfigError(f"{source}: each key maps to {{name, tenant}}")
        out[digest] = ApiKey(str(spec.get("name") or digest[:8]), str(spec.get("tenant") or ""))
    return out


def load_keys_file(path: str) -> dict[str, ApiKey]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise ConfigError(f"cannot read api_keys_file {path}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text) if not text.lstrip().startswith("{") else json.loads(text)
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"api_keys_file {path} is not valid YAML/JSON: {e}") from None
    if not isinstance(doc, Mapping):
        raise ConfigError(f"api_keys_file {path} must map key hashes to {{name, tenant}}")
    return parse_keys(doc.get("api_keys", doc), f"api_keys_file {path}")


class Authenticator:
    def __init__(self, keys: Mapping[str, ApiKey]):
        self.keys = dict(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, authorization: str | None) -> ApiKey | None:
        """The key presented in an ``Authorization: Bearer`` value, or None if missing or unknown."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.keys.get(hash_key(token.strip()))

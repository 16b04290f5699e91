"""API keys (tenant-bound, no cross-tenant writes), the admin token, TLS on both receivers."""

from __future__ import annotations

import os

import hashlib

import grpc
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.certs import self_signed as _self_signed
from tests.conftest import sql
from tests.integration.test_bad_input import EXPORT, PB, post
from tests.otlp import n_spans, request, span
from tokenpulse.cli import main
from tokenpulse.config import load_settings
from tokenpulse.errors import ConfigError
from tokenpulse.receiver.auth import hash_key

ACME_KEY = "tp_acme-key-0123456789"
COLLECTOR_KEY = "tp_collector-key-0123456789"
KEYS = {hash_key(ACME_KEY): {"name": "acme-prod", "tenant": "acme"},
        hash_key(COLLECTOR_KEY): {"name": "collector"}}


def bearer(key):
    return {**PB, "Authorization": f"Bearer {key}"}


def test_api_keys_required_and_a_tenant_key_cannot_write_another_tenant(make_service, capsys):
    svc = make_service(api_keys=KEYS)
    body = request([span(name="claims-globex")], service="auth", resource={"tenant.id": "globex"}).SerializeToString()
    assert post(svc, body).status_code == 401
    assert post(svc, body, bearer("tp_wrong")).status_code == 401
    channel = grpc.insecure_channel(f"127.0.0.1:{svc.grpc.port}")
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(EXPORT)(body, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED

    assert post(svc, body, bearer(ACME_KEY)).status_code == 200  # the acme key: stamped acme
    other = request([span(name="own-tenant")], service="auth", resource={"tenant.id": "globex"}).SerializeToString()
    assert post(svc, other, bearer(COLLECTOR_KEY)).status_code == 200  # a key without tenant: spans keep theirs
    assert sql(svc, "SELECT name, tenant FROM spans WHERE service = 'auth' ORDER BY name") == \
        [["claims-globex", "acme"], ["own-tenant", "globex"]]
    metrics = requests.get(f"http://127.0.0.1:{svc.admin.port}/metrics", timeout=5).text
    assert "tokenpulse_tenant_overridden_spans_total 1.0" in metrics
    assert 'tokenpulse_export_requests_total{outcome="unauthenticated",transport="http"} 2.0' in metrics

    # the OTel SDK exporter with the key in its headers
    tp = TracerProvider(resource=Resource.create({"service.name": "auth-sdk"}))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=f"127.0.0.1:{svc.grpc.port}", insecure=True, headers={"authorization": f"Bearer {ACME_KEY}"})))
    with tp.get_tracer("t").start_as_current_span("sdk-span"):
        pass
    tp.shutdown()
    assert sql(svc, "SELECT tenant FROM spans WHERE service = 'auth-sdk'") == [["acme"]]

    # the decision API on the OTLP port: a tenant's key reads only its own tenant
    base = f"http://127.0.0.1:{svc.http.port}/v1/throttle"
    assert requests.get(f"{base}/acme", timeout=5).status_code == 401
    assert requests.get(f"{base}/globex", headers=bearer(ACME_KEY), timeout=5).status_code == 403
    assert requests.get(f"{base}/acme", headers=bearer(ACME_KEY), timeout=5).json()["throttled"] is False
    assert requests.get(base, headers=bearer(COLLECTOR_KEY), timeout=5).status_code == 200


EVIL_KEY = "tp_evil-key-0123456789"


def test_a_tenant_that_learns_another_tenants_span_ids_cannot_erase_or_steer_its_spans(make_service):
    """Trace and span ids travel in traceparent across services. A tenant that sends another's ids
    first gets its own copy stored; the owner's spans are still stored, counted and attributed."""
    svc = make_service(api_keys={**KEYS, hash_key(EVIL_KEY): {"name": "evil", "tenant": "evil"}})
    trace = os.urandom(16)
    root, child = span(name="root", trace_id=trace), span(name="llm", trace_id=trace)
    child.parent_span_id = root.span_id
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.response.id": "chatcmpl-1",
            "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10}
    for k, v in chat.items():
        kv = child.attributes.add()
        kv.key = k
        if isinstance(v, int):
            kv.value.int_value = v
        else:
            kv.value.string_value = v
    # evil learned the ids and sends them first, with a root that claims a feature
    forged_root = span(name="root", trace_id=trace)
    forged_root.span_id = root.span_id
    kv = forged_root.attributes.add()
    kv.key, kv.value.string_value = "app.feature", "evil-feature"
    forged_child = span(name="llm", trace_id=trace)
    forged_child.CopyFrom(child)
    body = request([forged_root, forged_child], service="ids").SerializeToString()
    assert post(svc, body, bearer(EVIL_KEY)).status_code == 200
    kv = root.attributes.add()
    kv.key, kv.value.string_value = "app.feature", "search"
    assert post(svc, request([child], service="ids").SerializeToString(), bearer(ACME_KEY)).status_code == 200
    assert post(svc, request([root], service="ids").SerializeToString(), bearer(ACME_KEY)).status_code == 200
    rows = sql(svc, "SELECT tenant, name, counted, feature FROM spans WHERE service = 'ids' ORDER BY tenant, name")
    assert rows == [["acme", "llm", 1, "unattributed"], ["acme", "root", 1, "search"],
                    ["evil", "llm", 1, "evil-feature"], ["evil", "root", 1, "evil-feature"]]
    # an honest retry of acme's is still a repeat
    assert post(svc, request([root], service="ids").SerializeToString(), bearer(ACME_KEY)).status_code == 200
    assert sql(svc, "SELECT count() FROM spans WHERE service = 'ids' AND tenant = 'acme'") == [[2]]


def test_keys_file_and_hashed_only(tmp_path):
    f = tmp_path / "keys.yaml"
    f.write_text(f"api_keys:\n  {hash_key(ACME_KEY)}: {{name: a, tenant: acme}}\n")
    from tokenpulse.receiver.auth import Authenticator, load_keys_file

    auth = Authenticator(load_keys_file(str(f)))
    assert auth.check(f"Bearer {ACME_KEY}").tenant == "acme"
    assert auth.check(f"Basic {ACME_KEY}") is None and auth.check(None) is None
    with pytest.raises(ConfigError, match="not a SHA-256 hex digest"):
        load_settings({"api_keys": {ACME_KEY: {"tenant": "acme"}}}, env={})
    with pytest.raises(ConfigError, match="admin_token_sha256 must be the SHA-256"):
        load_settings({"admin_token_sha256": "hunter2"}, env={})


def test_admin_token(make_service, capsys):
    token = "admin-secret-token"
    svc = make_service(admin_token_sha256=hash_key(token))
    admin = f"http://127.0.0.1:{svc.admin.port}"
    assert requests.get(f"{admin}/healthz", timeout=5).status_code == 200  # health checks stay open
    for path in ("/metrics", "/api/sql?q=SELECT%201", "/api/panels", "/api/alerts"):
        assert requests.get(admin + path, timeout=5).status_code == 401, path
        assert requests.get(admin + path, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
    assert requests.get(f"{admin}/api/sql?q=SELECT%201", headers={"Authorization": f"Bearer {token}"},
                        timeout=5).status_code == 200
    assert main(["sql", "SELECT 41 + 1", "--admin-url", admin]) == 1
    assert "missing or wrong token" in capsys.readouterr().err
    assert main(["--admin-token", token, "sql", "SELECT 41 + 1", "--admin-url", admin]) == 0
    assert "42" in capsys.readouterr().out


def test_tls_on_both_receivers(make_service, tmp_path):
    cert, key = _self_signed(tmp_path)
    svc = make_service(tls_cert_file=cert, tls_key_file=key)
    body = n_spans(3, "tls").SerializeToString()
    r = requests.post(f"https://127.0.0.1:{svc.http.port}/v1/traces", data=body, headers=PB, verify=cert, timeout=10)
    assert r.status_code == 200
    with open(cert, "rb") as fh:
        creds = grpc.ssl_channel_credentials(root_certificates=fh.read())
    channel = grpc.secure_channel(f"localhost:{svc.grpc.port}", creds)
    channel.unary_unary(EXPORT)(n_spans(2, "tls").SerializeToString(), timeout=10)
    assert sql(svc, "SELECT count() FROM spans WHERE service = 'tls'") == [[5]]
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"http://127.0.0.1:{svc.http.port}/v1/traces", data=body, headers=PB, timeout=5)
    with pytest.raises(ConfigError, match="go together"):
        load_settings({"tls_cert_file": cert}, env={})


def test_the_throttle_list_on_the_otlp_port_follows_the_admin_rules(make_service):
    token = "admin-token-for-the-throttle-list"
    svc = make_service(admin_token_sha256=hashlib.sha256(token.encode()).hexdigest())
    base = f"http://127.0.0.1:{svc.http.port}/v1/throttle"
    r = requests.get(base, timeout=5)
    assert r.status_code == 403 and "throttle_list_open" in r.json()["error"]
    assert requests.get(base, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 403
    assert requests.get(base, headers={"Authorization": f"Bearer {token}"}, timeout=5).json() == {"throttled": []}
    assert requests.get(f"{base}/acme", timeout=5).json()["throttled"] is False  # an agent's own tenant
    opened = make_service(throttle_list_open=True)
    assert requests.get(f"http://127.0.0.1:{opened.http.port}/v1/throttle", timeout=5).status_code == 200


def test_admin_api_over_tls_and_the_clickhouse_password_from_a_file(make_service, tmp_path):
    cert, key = _self_signed(tmp_path)
    svc = make_service(tls_cert_file=cert, tls_key_file=key, admin_tls=True)
    r = requests.get(f"https://127.0.0.1:{svc.admin.port}/api/sql", params={"q": "SELECT 1"}, verify=cert, timeout=10)
    assert r.json()["data"] == [[1]]
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{svc.admin.port}/healthz", timeout=5)
    with pytest.raises(ConfigError, match="admin_tls needs"):
        load_settings({"admin_tls": True}, env={})
    # The password is read from a file and joined to the URL's user (never typed where ps shows it).
    from tokenpulse.storage.backend import redact_url, with_password

    pw = tmp_path / "pw"
    pw.write_text("s3cr:t/pass\n")
    url = with_password("https://reader@ch.example:8443/db?secure=1", str(pw))
    assert url == "https://reader:s3cr%3At%2Fpass@ch.example:8443/db?secure=1"
    assert "s3cr" not in redact_url(url)
    with pytest.raises(ConfigError, match="clickhouse_password_file"):
        with_password("http://h:8123", str(tmp_path / "missing"))

"""Prices change while the service runs: reloaded on request, on SIGHUP and when the file changes;
a bad file keeps the prices in force and says why."""

from __future__ import annotations

import signal
import time

import requests

from tests.conftest import sql
from tests.integration.test_bad_input import post
from tests.otlp import n_spans

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "acme-llm-1", "gen_ai.response.model": "acme-llm-1",
        "gen_ai.usage.input_tokens": 1_000_000, "gen_ai.usage.output_tokens": 0}


def _file(path, price: float | str) -> None:
    path.write_text(f"prices:\n  - id: in-house\n    match: acme-llm-1\n    input: {price}\n    output: 1.0\n")


def _cost(svc, service: str):
    return sql(svc, f"SELECT cost_usd, price_id FROM spans WHERE service = '{service}'")


def test_reload_on_request_and_when_the_file_changes_keeps_old_prices_on_a_bad_file(make_service, tmp_path):
    prices = tmp_path / "prices.yaml"
    _file(prices, 2.0)
    svc = make_service(price_file=str(prices), price_reload_interval_s=1)
    admin = f"http://127.0.0.1:{svc.admin.port}"
    assert post(svc, n_spans(1, "before", attrs=CHAT).SerializeToString()).status_code == 200
    assert _cost(svc, "before") == [[2.0, "override:in-house"]]

    _file(prices, 3.0)
    r = requests.post(f"{admin}/api/prices/reload", timeout=10)
    assert r.status_code == 200 and r.json()["overrides"] == 1
    assert post(svc, n_spans(1, "after-reload", attrs=CHAT).SerializeToString()).status_code == 200
    assert _cost(svc, "after-reload") == [[3.0, "override:in-house"]]

    _file(prices, "cheap")  # invalid: the prices in force stay, and the answer says why
    r = requests.post(f"{admin}/api/prices/reload", timeout=10)
    assert r.status_code == 422 and "input must be a non-negative number" in r.json()["error"]
    assert post(svc, n_spans(1, "after-bad", attrs=CHAT).SerializeToString()).status_code == 200
    assert _cost(svc, "after-bad") == [[3.0, "override:in-house"]]
    metrics = requests.get(f"{admin}/metrics", timeout=5).text
    assert 'tokenpulse_price_reloads_total{outcome="failed"} 1.0' in metrics

    _file(prices, 5.0)  # no request: the file's change is noticed within the interval (1 s here)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not svc.prices.last.message.startswith("loaded"):
        time.sleep(0.2)
    assert svc.prices.last.ok and _probe(svc) == 5.0


def _probe(svc) -> float:
    """The price a new span gets now."""
    name = f"probe-{time.monotonic_ns()}"
    assert post(svc, n_spans(1, name, attrs=CHAT).SerializeToString()).status_code == 200
    return _cost(svc, name)[0][0]


def test_sighup_reloads_the_price_file(serve_process, tmp_path):
    prices = tmp_path / "prices.yaml"
    _file(prices, 2.0)
    proc = serve_process("--price-file", str(prices), "--price-reload-interval-s", "0")
    _file(prices, 7.0)
    proc.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "price reload (SIGHUP)" not in proc.read_log():
        time.sleep(0.2)
    assert "price reload (SIGHUP): loaded 1 price overrides" in proc.read_log()
    r = requests.post(f"http://127.0.0.1:{proc.http_port}/v1/traces", data=n_spans(1, "hup", attrs=CHAT)
                      .SerializeToString(), headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert r.status_code == 200
    assert proc.sql("SELECT cost_usd FROM spans WHERE service = 'hup'") == [[7.0]]
    assert proc.stop() == 0

"""The built-in dashboard page in real headless Chromium (Debian's package, driven by Playwright),
against a real service holding known data: the numbers on the page are the data's, filters work,
alerts and throttles show, a click goes from an alert or a spend row to the runs behind it and
from a run to its spans, and the browser logs no error. Screenshots of each view are kept as
artifacts (test-artifacts/dashboard*.png, or $TOKENPULSE_TEST_ARTIFACTS) for a person to look at."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import requests

from tests.otlp import request, span

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it "
                                "with apt-get; where apt-get cannot, this test cannot run)")
ARTIFACTS = Path(os.environ.get("TOKENPULSE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
GPT4O = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.response.model": "gpt-4o"}


def _run(tenant: str, feature: str, calls: list[tuple[int, int]], model_attrs=GPT4O):
    """One run (trace): a root span with the tags, and its LLM calls as children."""
    tid = os.urandom(16)
    root = span(name="invoke_agent", trace_id=tid, attrs={"tenant.id": tenant, "app.feature": feature})
    children = [span(name="chat", trace_id=tid, parent=root.span_id,
                     attrs={**model_attrs, "gen_ai.usage.input_tokens": i, "gen_ai.usage.output_tokens": o})
                for i, o in calls]
    return [root, *children]


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield b
        b.close()


def test_dashboard_renders_the_data_filters_and_alerts_without_console_errors(make_service, browser):
    svc = make_service(alert_rules={"unpriced_model": {"interval": "1s"}})
    spans = (_run("acme", "search", [(1000, 100), (1000, 100)])     # 2,200 tokens, $0.0070
             + _run("acme", "support", [(5000, 500)])               # 5,500 tokens, $0.0175
             + _run("globex", "search", [(40000, 1000)])            # 41,000 tokens, $0.1100
             + _run("globex", "search", [(300, 30)], {**GPT4O, "gen_ai.response.model": "mystery-model"}))
    r = requests.post(f"http://127.0.0.1:{svc.http.port}/v1/traces", data=request(spans, service="dash")
                      .SerializeToString(), headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert r.status_code == 200
    admin = f"http://127.0.0.1:{svc.admin.port}"
    assert requests.post(f"{admin}/api/throttle/hooli", json={"for": "10m", "reason": "manual test"},
                         timeout=5).status_code == 200

    page = browser.new_page(viewport={"width": 1500, "height": 1300})
    problems = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    page.on("response", lambda resp: problems.append(f"HTTP {resp.status}: {resp.url}") if resp.status >= 400 else None)
    page.goto(admin + "/")
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)

    text = page.text_content
    # gpt-4o: $2.50 in / $10 out per million tokens; the mystery model has no price
    assert text("#kpi-cost") == "$0.1345 + 1 unpriced calls"  # the unknown model's call is not $0
    assert text("#kpi-calls") == "5" and text("#kpi-tokens") == "49k"  # 48,700 + 330 tokens
    assert text("#kpi-runs") == "4"
    assert text("#tpr-p50") == "5,500" and text("#tpr-p99") == "41,000" and text("#tpr-runs") == "4"
    tenants = page.eval_on_selector_all("#table-tenant tr", "rows => rows.map(r => r.innerText.split('\\t'))")
    assert tenants == [["globex", "$0.11 (81.8 %) + 1 unpriced"], ["acme", "$0.0245 (18.2 %)"]]
    chart = page.evaluate("() => { const c = Chart.getChart('chart-tenant'); "
                          "return [c.data.labels, c.data.datasets[0].data]; }")
    assert chart[0] == ["globex", "acme"] and chart[1] == pytest.approx([0.11, 0.0245])
    assert page.evaluate("() => Chart.getChart('chart-tokens-per-run').data.datasets[0].data.reduce((a, b) => a + b)") == 4
    assert "hooli" in text("#throttled") and "manual test" in text("#throttled")

    # the unpriced model's alert appears on a later refresh (every 5 s)
    page.wait_for_function("() => document.querySelector('#alerts-count').textContent === '1'", timeout=30_000)
    assert "mystery-model" in text("#alerts") and "unpriced_model" in text("#alerts")

    # "which run burned it?": from the alert to the runs behind it, to a run's spans
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    rows_of = "rows => rows.map(r => r.innerText.split('\\t'))"
    page.click("#alerts tbody tr")
    page.wait_for_function("() => document.querySelector('#runs-filter').textContent.includes('model = mystery-model') "
                           "&& document.querySelectorAll('#runs tbody tr').length === 1 "
                           "&& document.querySelector('#runs tbody tr td:nth-child(2)').textContent === 'globex'",
                           timeout=15_000)
    run = page.eval_on_selector_all("#runs tbody tr", rows_of)[0]
    assert run[1:7] == ["globex", "search", "", "mystery-model", "1", "330"] and run[7] == "unpriced", run
    page.screenshot(path=str(ARTIFACTS / "dashboard-runs.png"), full_page=True)
    page.click("#runs tbody tr")
    page.wait_for_selector("#spans-panel:not([hidden])", timeout=15_000)
    spans_rows = page.eval_on_selector_all("#spans tbody tr", rows_of)
    assert [r[0].strip() for r in spans_rows] == ["invoke_agent", "chat"]
    assert spans_rows[1][1:7] == ["chat", "", "mystery-model", "300 / 30", "unpriced", "yes"], spans_rows
    page.screenshot(path=str(ARTIFACTS / "dashboard-spans.png"), full_page=True)
    # from a spend row: the tenant's runs, costliest first
    page.click("#table-tenant tr:has-text('acme')")
    page.wait_for_function("() => document.querySelector('#runs-filter').textContent.includes('tenant = acme') "
                           "&& document.querySelectorAll('#runs tbody tr').length === 2", timeout=15_000)
    costs = [r[7] for r in page.eval_on_selector_all("#runs tbody tr", rows_of)]
    assert costs == ["$0.0175", "$0.007"], costs
    page.click("#runs-clear")
    # a log scale where one series flattens the rest; bar charts keep one readable row per label
    page.check("#log-scale")
    page.wait_for_function("() => Chart.getChart('chart-tenant') && "
                           "Chart.getChart('chart-tenant').options.scales.x.type === 'logarithmic'", timeout=15_000)
    assert page.evaluate("() => Chart.getChart('chart-tenant').data.labels") == ["globex", "acme"]
    page.uncheck("#log-scale")
    page.wait_for_function("() => Chart.getChart('chart-tenant') && "
                           "Chart.getChart('chart-tenant').options.scales.x.type !== 'logarithmic'", timeout=15_000)

    # a tenant filter narrows every panel that takes one
    page.select_option("#tenant", "acme")
    # panels draw as their answers arrive: wait for the two read here
    page.wait_for_function("() => document.querySelector('#tpr-runs').textContent === '2' && "
                           "document.querySelector('#kpi-cost').textContent === '$0.0245'", timeout=15_000)
    assert text("#tpr-p99") == "5,500"
    page.select_option("#feature", "support")
    page.wait_for_function("() => document.querySelector('#kpi-cost').textContent === '$0.0175'", timeout=15_000)

    page.select_option("#tenant", "")
    page.select_option("#feature", "")
    page.wait_for_function("() => document.querySelector('#tpr-runs').textContent === '4'", timeout=15_000)
    time.sleep(0.5)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    # a notification's link opens the runs behind the alert
    page.goto(admin + "/?model=mystery-model#runs-panel")
    page.wait_for_function("() => document.querySelector('#runs-filter').textContent.includes('model = mystery-model') "
                           "&& document.querySelectorAll('#runs tbody tr').length === 1", timeout=30_000)
    assert problems == []


def test_the_page_and_its_assets_are_served_locally_and_behind_the_admin_token_for_data(make_service):
    import hashlib

    svc = make_service(admin_token_sha256=hashlib.sha256(b"s3cret").hexdigest())
    admin = f"http://127.0.0.1:{svc.admin.port}"
    page = requests.get(admin + "/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "https://" not in page.text and "http://" not in page.text  # no CDN: works offline
    chart_js = requests.get(admin + "/static/vendor/chart.umd.min.js", timeout=5)
    assert chart_js.status_code == 200 and "Chart.js v4" in chart_js.text[:200]
    assert requests.get(admin + "/static/vendor/chart.js-LICENSE.md", timeout=5).status_code == 200
    assert requests.get(admin + "/api/panels", timeout=5).status_code == 401  # the data still needs the token
    import http.client

    for path in ("/static/../__init__.py", "/static/%2e%2e/__init__.py", "/static/../../config.py"):
        conn = http.client.HTTPConnection("127.0.0.1", svc.admin.port, timeout=5)
        conn.request("GET", path)  # sent as is: http.client does not normalize the path
        resp = conn.getresponse()
        assert resp.status in (401, 403, 404) and b"STATIC_DIR" not in resp.read(), path
        conn.close()

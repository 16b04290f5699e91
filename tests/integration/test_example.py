"""The README's first agent, run as is against a real `tokenpulse serve`: counted, priced, attributed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent.py"


def test_the_example_agent_is_counted_priced_and_attributed(serve_process):
    proc = serve_process()
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{proc.grpc_port}"})
    assert out.returncode == 0, out.stderr
    q = ("SELECT tenant, feature, model, input_tokens, output_tokens, counted, price_status, round(cost_usd, 6) "
         "FROM spans WHERE service = 'example-agent'")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not proc.sql(q):
        time.sleep(0.2)
    assert proc.sql(q) == [["acme", "support-triage", "gpt-4o-2024-08-06", 1200, 150, 1, "priced", 0.0045]]

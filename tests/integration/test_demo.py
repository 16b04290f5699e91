"""`tokenpulse demo` end to end, as a user runs it: a real subprocess, the embedded service, SDK
traffic, the three incidents, their alerts, the throttle and its release, then the overview."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_shows_every_incident_firing_the_throttle_and_the_recovery(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tokenpulse.cli", "demo", "--minutes", "0.5", "--quick", "--exit", "--data-dir",
         str(tmp_path / "demo"), "--grpc-port", "0", "--http-port", "0", "--admin-port", "0"],
        capture_output=True, text=True, timeout=420, cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"\] 2400 past agent runs sent", out)
    for line in ("INCIDENT a tool loop", "INCIDENT a prompt-size explosion", "INCIDENT initech's CRM integration",
                 "FIRING   agent_loop: Agent loop in session sess-stuck-in-a-loop: tool web_search",
                 "FIRING   context_bloat: Context bloat in session sess-ever-growing-prompt",
                 "FIRING   tenant_outlier: Tenant initech", "THROTTLE initech",
                 "resolved agent_loop", "resolved context_bloat", "resolved tenant_outlier",
                 "released initech: calm again"):
        assert line in out, f"{line!r} not in the demo's output:\n{out}"
    # the throttle came before the release, and the agents' ThrottleGuard refused initech meanwhile
    assert out.index("THROTTLE initech") < out.index("released initech")
    assert re.search(r"runs refused by ThrottleGuard while throttled: .*initech: [1-9]", out)
    # the overview and the next steps close the demo
    assert "Spend by feature" in out and "crm-sync" in out and "unattributed" in out
    assert "acme-llm-7b" in out  # the self-hosted model with no price shows in price coverage
    assert "What to try next" in out and "dashboard" in out
    assert proc.stderr.count("WARNING") == 0 and "Traceback" not in proc.stderr


def test_ctrl_c_ends_the_demo_in_one_line_without_a_traceback(tmp_path):
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenpulse.cli", "demo", "--minutes", "5", "--data-dir", str(tmp_path / "demo"),
         "--grpc-port", "0", "--http-port", "0", "--admin-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "live traffic starts now" in line or not line:
            break
    assert "live traffic starts now" in lines[-1], "".join(lines)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, err[-2000:]
    assert "demo interrupted; tokenpulse stopped" in out

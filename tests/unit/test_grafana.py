"""The Grafana dashboard is generated from the panel files: same SQL, every panel, up to date."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenpulse.queries import load_panels
from tokenpulse.queries.grafana import build_dashboard

ROOT = Path(__file__).resolve().parents[2]


def test_committed_dashboard_is_generated_from_the_panels():
    committed = json.loads((ROOT / "dashboards" / "grafana" / "tokenpulse.json").read_text())
    assert committed == build_dashboard(), "run: python -m tokenpulse.queries.grafana > dashboards/grafana/tokenpulse.json"


def test_every_panel_is_on_the_dashboard_with_its_sql():
    dash = build_dashboard()
    titles = {p["title"]: p for p in dash["panels"]}
    for name, q in load_panels().items():
        panel = titles[q.title]
        sql = panel["targets"][0]["rawSql"]
        assert not re.search(r"\{\w+:\w+\}", sql), f"{name}: unreplaced parameter"
        assert panel["targets"][0]["datasource"]["type"] == "grafana-clickhouse-datasource"
        # Same SQL: the panel file's query with parameters swapped for Grafana macros and variables.
        first_line = next(ln for ln in q.sql.splitlines() if ln and not ln.startswith("--"))
        assert sql.startswith(first_line.strip())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"] if "expr" in t]
    assert any("tokenpulse_tokens_total" in e for e in exprs) and any("process_cpu_seconds_total" in e for e in exprs)

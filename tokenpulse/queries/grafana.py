"""Build dashboards/grafana/tokenpulse.json from the panel .sql files (same SQL).

    python -m tokenpulse.queries.grafana > dashboards/grafana/tokenpulse.json

For the official ClickHouse data source plugin (grafana-clickhouse-datasource)
plus a Prometheus data source for the service's own /metrics: token and cost
rates beside tokenpulse's CPU and memory on the first row.

Panel parameters become dashboard variables: ``since`` is the length of the
Grafana time range (panels look back from now), ``tenant``, ``feature`` and
``model`` are text boxes (empty: all), ``by`` a choice of dimension; ``limit`` keeps its
default. A test checks the committed file matches this generator.
"""

from __future__ import annotations

import json
import re

from tokenpulse.queries import load_panels

CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "${DS_CLICKHOUSE}"}
PROMETHEUS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
TIME_SERIES = {"tokens_per_minute_by_agent_role": ("minute", "role"), "cost_by_hour": ("hour", "key"),
               "io_ratio": ("hour", None), "cost_per_successful_run": ("hour", None)}


def grafana_sql(name: str, sql: str, defaults: dict[str, str]) -> str:
    body = "\n".join(ln for ln in sql.splitlines() if not ln.startswith("-- "))
    replacements = {
        "since": "toUInt32(toUnixTimestamp($__toTime) - toUnixTimestamp($__fromTime))",
        "tenant": "'${tenant}'", "feature": "'${feature}'", "model": "'${model}'", "by": "${by}",
    }

    def sub(m: re.Match) -> str:
        pname = m.group(1)
        return replacements.get(pname, defaults.get(pname, ""))

    return re.sub(r"\{(\w+):\w+\}", sub, body).strip()


def _prom_panel(pid: int, title: str, expr: str, unit: str, x: int) -> dict:
    return {"id": pid, "type": "timeseries", "title": title, "datasource": PROMETHEUS,
            "gridPos": {"h": 7, "w": 6, "x": x, "y": 0}, "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"datasource": PROMETHEUS, "expr": expr, "refId": "A"}]}


def build_dashboard() -> dict:
    panels = [
        _prom_panel(1, "Tokens / s (by type)", "sum by (type) (rate(tokenpulse_tokens_total[1m]))", "short", 0),
        _prom_panel(2, "Cost / hour (USD)", "sum(rate(tokenpulse_cost_usd_total[5m])) * 3600", "currencyUSD", 6),
        _prom_panel(3, "tokenpulse CPU (cores)", "rate(process_cpu_seconds_total{job=~\"$job\"}[1m])", "short", 12),
        _prom_panel(4, "tokenpulse memory", "process_resident_memory_bytes{job=~\"$job\"}", "bytes", 18),
    ]
    y, x = 7, 0
    for pid, (name, q) in enumerate(load_panels().items(), start=10):
        defaults = {p.name: p.default for p in q.params}
        ts = TIME_SERIES.get(name)
        target = {"datasource": CLICKHOUSE, "queryType": "sql", "editorType": "sql", "format": 0 if ts else 1,
                  "rawSql": grafana_sql(name, q.sql, defaults), "refId": "A"}
        panels.append({"id": pid, "type": "timeseries" if ts else "table", "title": q.title,
                       "description": q.description, "datasource": CLICKHOUSE,
                       "gridPos": {"h": 9, "w": 12, "x": x, "y": y}, "targets": [target],
                       "fieldConfig": {"defaults": {}, "overrides": []}, "options": {}})
        x = 12 - x
        y += 9 if x == 0 else 0
    return {
        "__inputs": [
            {"name": "DS_CLICKHOUSE", "label": "ClickHouse", "type": "datasource",
             "pluginId": "grafana-clickhouse-datasource", "pluginName": "ClickHouse"},
            {"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus",
             "pluginName": "Prometheus"},
        ],
        "title": "tokenpulse", "uid": "tokenpulse", "editable": True, "schemaVersion": 39, "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"}, "tags": ["tokenpulse", "llm"],
        "templating": {"list": [
            {"name": "tenant", "label": "tenant (empty: all)", "type": "textbox", "query": "", "current": {"value": ""}},
            {"name": "feature", "label": "feature (empty: all)", "type": "textbox", "query": "",
             "current": {"value": ""}},
            {"name": "model", "label": "model (empty: all)", "type": "textbox", "query": "", "current": {"value": ""}},
            {"name": "by", "label": "group by", "type": "custom", "current": {"value": "feature", "text": "feature"},
             "query": "feature,tenant,model,provider,agent_role,service,environment"},
            {"name": "job", "label": "Prometheus job", "type": "textbox", "query": "tokenpulse",
             "current": {"value": "tokenpulse"}},
        ]},
        "panels": panels,
    }


def main() -> None:
    print(json.dumps(build_dashboard(), indent=2))


if __name__ == "__main__":
    main()

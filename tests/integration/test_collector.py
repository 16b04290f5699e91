"""otel-collector.yaml: its pipelines are consistent and point at tokenpulse's ports; with an
`otelcol-contrib` binary on PATH, the Collector validates it and carries a real span into storage."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tokenpulse.config import Settings

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "otel-collector.yaml").read_text()
CONFIG = yaml.safe_load(TEXT)
KINDS = ("receivers", "processors", "exporters")


def _type(name: str) -> str:
    return name.split("/", 1)[0]


def test_pipelines_reference_defined_components():
    pipelines = CONFIG["service"]["pipelines"]
    assert pipelines, "no pipelines"
    for pname, pipeline in pipelines.items():
        assert _type(pname) == "traces", pname
        for kind in KINDS:
            assert pipeline[kind], f"{pname} has no {kind}"
            for comp in pipeline[kind]:
                assert comp in CONFIG[kind], f"{pname} uses undefined {kind[:-1]} {comp}"
        assert pipeline["processors"][0] == "memory_limiter", "memory_limiter must come first"
        assert pipeline["processors"][-1] == "batch"
    for ext in CONFIG["service"].get("extensions", []):
        assert ext in CONFIG["extensions"]


def test_components_are_contrib_components_with_the_options_used():
    known = {"receivers": {"otlp"}, "processors": {"memory_limiter", "batch", "tail_sampling", "filter"},
             "exporters": {"otlp", "loadbalancing"}, "extensions": {"health_check"}}
    for kind, names in known.items():
        for comp in CONFIG.get(kind, {}):
            assert _type(comp) in names, f"{kind}: {comp}"
    exporter = CONFIG["exporters"]["otlp/tokenpulse"]
    assert exporter["retry_on_failure"]["enabled"] and exporter["sending_queue"]["enabled"]
    policy = CONFIG["processors"]["tail_sampling/genai_traces"]["policies"][0]
    assert policy["type"] == "ottl_condition" and 'attributes["gen_ai.operation.name"] != nil' in \
        policy["ottl_condition"]["span"]


def test_endpoints_match_tokenpulse_default_ports():
    defaults = Settings()
    m = re.fullmatch(r"\$\{env:TOKENPULSE_ENDPOINT:-([\w.]+):(\d+)\}", CONFIG["exporters"]["otlp/tokenpulse"]["endpoint"])
    assert m and int(m.group(2)) == defaults.grpc_port
    protocols = CONFIG["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(f":{defaults.grpc_port}")
    assert protocols["http"]["endpoint"].endswith(f":{defaults.http_port}")


def _commented_block(heading: str) -> dict:
    """The commented-out YAML under a '# --- Variant' heading, parsed (prose comment lines skipped)."""
    block = []
    for line in TEXT.split(heading, 1)[1].splitlines()[1:]:
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        content = line.split("# ", 1)[1] if "# " in line else ""
        if re.match(r"^\s*([\w/.\-\"]+:(\s|$)|- )", content):
            block.append(content)
    return yaml.safe_load("\n".join(block))


def test_commented_variants_parse_and_use_real_options():
    spec = _commented_block("# --- Variant: several tokenpulse receivers.")["loadbalancing/tokenpulse"]
    assert spec["routing_key"] == "traceID" and spec["resolver"]["dns"]["port"] == Settings().grpc_port
    assert spec["protocol"]["otlp"]["retry_on_failure"]["enabled"]
    forward = _commented_block("# --- Variant: also forward every span")
    assert forward["otlp/backend"]["retry_on_failure"]["enabled"]
    assert "    #   exporters: [otlp/backend]" in TEXT


@pytest.mark.skipif(shutil.which("otelcol-contrib") is None,
                    reason="no otelcol-contrib binary on PATH (the contrib Collector is not packaged for this "
                           "machine's registries); install it to run the Collector -> tokenpulse test")
def test_collector_validates_and_carries_a_span_into_storage(make_service, tmp_path):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from tests.conftest import free_port, scalar

    svc = make_service()
    env = {**os.environ, "TOKENPULSE_ENDPOINT": f"127.0.0.1:{svc.grpc.port}"}
    ok = subprocess.run(["otelcol-contrib", "validate", "--config", str(ROOT / "otel-collector.yaml")], env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    grpc_port, http_port, health = free_port(), free_port(), free_port()
    config = TEXT.replace("0.0.0.0:4317", f"127.0.0.1:{grpc_port}").replace("0.0.0.0:4318", f"127.0.0.1:{http_port}") \
        .replace("0.0.0.0:13133", f"127.0.0.1:{health}")
    (tmp_path / "c.yaml").write_text(config)
    proc = subprocess.Popen(["otelcol-contrib", "--config", str(tmp_path / "c.yaml")], env=env)
    try:
        tp = TracerProvider(resource=Resource.create({"service.name": "via-collector", "tenant.id": "acme"}))
        tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True)))
        with tp.get_tracer("t").start_as_current_span("chat gpt-4o") as s:
            s.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10})
        tp.shutdown()
        deadline = time.time() + 30
        while time.time() < deadline:
            if int(scalar(svc, "SELECT count() FROM spans WHERE service = 'via-collector'")) == 1:
                break
            time.sleep(0.2)
        assert int(scalar(svc, "SELECT count() FROM spans WHERE service = 'via-collector'")) == 1
    finally:
        proc.terminate()
        proc.wait(30)

"""Record the conformance corpus: real instrumentation libraries, real SDKs, real exporters.

    python tests/conformance/record.py [LIBRARY ...] [--venvs DIR]

For each library: a virtual environment of its own (pins conflict) with the packages below
(unpinned: the recording states what was installed), ``scenario.py`` run inside it against the
fake provider, the OTLP export requests captured byte for byte by the sink, and a manifest:
package versions, per call the usage the provider served, the library's own bug where it loses or
invents numbers for that call (``corpus.LIBRARY_GAPS``), and which spans reported it (a span
reports a call when it carries a token count and was open when the provider received the call;
the scenario never overlaps calls). Not part of the test run: the replay test
(``test_conformance.py``) reads what this writes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.conformance.corpus import gap_for  # noqa: E402
from tests.conformance.fake_provider import Provider  # noqa: E402
from tests.conformance.sink import Sink  # noqa: E402

OTEL = ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc")
# name -> (pip requirements, extra environment)
LIBRARIES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    # The v2 instrumentation (2.4b0) imports httpx without declaring it (openai 3.x moved to httpx2), and
    # opentelemetry.util.genai.instruments, which util-genai 1.2b0 removed: both are added by hand.
    "otel-openai-v2": (("opentelemetry-instrumentation-openai-v2", "openai", "httpx", "opentelemetry-util-genai==1.1b0"),
                       {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}),
    "otel-openai-v2-latest": (("opentelemetry-instrumentation-openai-v2", "openai", "httpx", "opentelemetry-util-genai==1.1b0"),
                              {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
                               "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY"}),
    "openllmetry": (("opentelemetry-instrumentation-openai", "opentelemetry-instrumentation-anthropic", "openai",
                     "anthropic"), {}),
    # traceloop-sdk 0.62.4 imports httpx without declaring it (openai 3.x no longer brings it).
    "traceloop-sdk": (("traceloop-sdk", "openai", "anthropic", "httpx"), {"TRACELOOP_TELEMETRY": "false"}),
    "openinference": (("openinference-instrumentation-openai", "openinference-instrumentation-anthropic", "openai",
                       "anthropic"), {}),
    "openlit": (("openlit", "openai", "anthropic"), {}),
    "langfuse": (("langfuse", "openai"), {}),
    "langfuse-grpc": (("langfuse", "openai"), {}),
    "pydantic-ai": (("pydantic-ai-slim[openai]",), {}),
    "langchain": (("langchain-openai", "openinference-instrumentation-langchain",
                   "openinference-instrumentation-openai"), {}),
    "two-instrumentations": (("opentelemetry-instrumentation-openai-v2", "opentelemetry-instrumentation-openai",
                              "openai", "httpx", "opentelemetry-util-genai==1.1b0"), {}),
}
# The venv folder per library (two setups may share one).
VENV_OF = {"otel-openai-v2-latest": "otel-openai-v2", "langfuse-grpc": "langfuse"}


def venv_for(name: str, root: Path) -> Path:
    venv = root / VENV_OF.get(name, name)
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        reqs, _ = LIBRARIES[name]
        subprocess.run([str(py), "-m", "pip", "install", "-q", *reqs, *OTEL], check=True)
    return venv


def versions(venv: Path) -> dict[str, str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                         check=True, capture_output=True, text=True).stdout
    keep = ("openai", "anthropic", "opentelemetry", "openinference", "openlit", "langfuse", "traceloop",
            "pydantic-ai", "pydantic_ai", "langchain", "genai")
    return {p["name"]: p["version"] for p in json.loads(out) if p["name"].lower().startswith(keep)}


def token_attributes(span) -> dict:
    """The span's attributes whose key speaks of tokens or usage (what a reader checks)."""
    from google.protobuf.json_format import MessageToDict

    out = {}
    for kv in span.attributes:
        k = kv.key
        if "token" in k or "usage" in k:
            v = MessageToDict(kv.value)
            out[k] = next(iter(v.values())) if v else None
    return out


def spans_of(body: bytes):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest.FromString(body)
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield ss.scope.name, s


def record(name: str, venvs: Path, out_root: Path, provider: Provider, sink: Sink) -> dict:
    venv = venv_for(name, venvs)
    _, extra_env = LIBRARIES[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACELOOP_", "LANGFUSE_"))}
    env.update(extra_env, CONFORMANCE_LIBRARY=name, CONFORMANCE_PROVIDER=provider.url,
               CONFORMANCE_OTLP=f"127.0.0.1:{sink.port}", PYTHONPATH=str(HERE))
    provider.log.clear()
    sink.take()
    run = subprocess.run([str(venv / "bin" / "python"), str(HERE / "scenario.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"{name}: scenario failed\n{run.stdout}\n{run.stderr}")
    captured = sink.take()
    calls = [c for c in provider.log if c.library == name]
    out = out_root / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    requests, spans = [], []
    for n, c in enumerate(captured):
        fname = f"{n:03d}.{c.transport}.pb"
        (out / fname).write_bytes(c.body)
        got = list(spans_of(c.body))
        requests.append({"file": fname, "transport": c.transport, "spans": len(got)})
        spans.extend(got)
    manifest_calls = []
    for c in sorted(calls, key=lambda c: c.received_ns):
        reported = []
        for scope, s in spans:
            tokens = token_attributes(s)
            if tokens and s.start_time_unix_nano <= c.received_ns <= s.end_time_unix_nano:
                reported.append({"span_id": s.span_id.hex(), "name": s.name, "scope": scope, "tokens": tokens})
        gap = gap_for(name, c.call)
        manifest_calls.append({**asdict(c), "reported_by": reported,
                               "library_gap": gap.bug if gap and c.status == 200 else ""})
    manifest = {"library": name, "packages": versions(venv), "environment": extra_env,
                "python": subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.version.split()[0])"],
                                         capture_output=True, text=True).stdout.strip(),
                "requests": requests, "calls": manifest_calls, "scenario_stderr": run.stderr[-4000:]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("libraries", nargs="*", help=f"default: all ({', '.join(LIBRARIES)})")
    ap.add_argument("--venvs", type=Path, default=Path.home() / ".cache" / "tokenpulse-conformance")
    ap.add_argument("--out", type=Path, default=HERE / "recordings")
    args = ap.parse_args(argv)
    unknown = set(args.libraries) - set(LIBRARIES)
    if unknown:
        ap.error(f"unknown libraries: {', '.join(sorted(unknown))}")
    args.venvs.mkdir(parents=True, exist_ok=True)
    sink = Sink().start()
    provider = Provider(otlp_sink=sink).start()
    failed = []
    try:
        for name in args.libraries or LIBRARIES:
            try:
                m = record(name, args.venvs, args.out, provider, sink)
            except (SystemExit, subprocess.SubprocessError) as e:
                print(f"{name}: FAILED: {e}", file=sys.stderr)
                failed.append(name)
                continue
            reported = sum(1 for c in m["calls"] if c["reported_by"])
            print(f"{name}: {len(m['calls'])} calls served, {reported} reported by a span, "
                  f"{sum(r['spans'] for r in m['requests'])} spans in {len(m['requests'])} requests")
    finally:
        provider.stop()
        sink.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

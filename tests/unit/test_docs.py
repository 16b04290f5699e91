"""The README and docs/ are part of the interface: their commands, settings and columns must be true."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from tokenpulse.config import Settings
from tokenpulse.storage.schema import DEFAULT_COLUMNS, SPAN_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text()


def _code_block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(r"```\n(.*?)```", section, re.S).group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _code_block_after("## Tests: one command")
    assert len(command.splitlines()) == 1
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci, f"{command!r} is not a line of .ci/run"


def test_readme_gives_two_setup_commands():
    assert _code_block_after("## Set-up: two commands").splitlines() == ["pip install .", "tokenpulse serve"]


def test_every_setting_is_documented():
    for f in fields(Settings):
        assert f"| `{f.name}` | `--{f.name.replace('_', '-')}` | `TOKENPULSE_{f.name.upper()}` |" in \
            doc("configuration.md"), f.name


def test_every_column_is_documented_with_its_type():
    columns = {name: ch_type for name, _, _, ch_type in SPAN_COLUMNS} | DEFAULT_COLUMNS
    for name, ch_type in columns.items():
        assert f"| `{name}` | {ch_type} |" in doc("spans-table.md"), name


def test_every_builtin_rule_is_documented():
    from tokenpulse.alerts.rules import load_rules

    rules, errors = load_rules()
    assert not errors
    section = doc("alerts.md")
    for name, rule in rules.items():
        assert f"| `{name}` | {rule.interval_s // 60}m |" in section or f"| `{name}` | {rule.interval_s}s |" in section, name


def test_every_forwarded_attribute_is_documented_with_its_type():
    from tokenpulse.otlp.reencode import ATTRIBUTES

    for key, typ, _ in ATTRIBUTES:
        assert f"| `{key}` | {typ} |" in doc("forwarding.md"), key


def test_the_repository_stands_alone():
    """No file cites the workplace's shared notes: outside facts live in docs/sources.md, with
    their upstream source, and every section cited exists."""
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    sources = (ROOT / "docs" / "sources.md").read_text()
    for name in files:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".c", ".sql", ".toml", ".yaml", ".js") or not path.exists():
            continue
        text = path.read_text(errors="replace")
        assert ("shared/" + "reference") not in text and ("shared/" + "STYLE") not in text, name
        for anchor in re.findall(r"docs/sources\.md#([a-z-]+)", text):
            assert f"## {anchor}\n" in sources, (name, anchor)


def test_readme_layout_names_every_module():
    """The Layout block drifted; it must name every source file of the package, under its folder."""
    layout = _code_block_after("## Layout")
    missing = []
    for path in sorted((ROOT / "tokenpulse").rglob("*")):
        if path.suffix not in (".py", ".c") or path.name == "__init__.py":
            continue
        rel = path.relative_to(ROOT / "tokenpulse")
        if rel.parts[0] == "queries" and path.parent.name in ("panels", "rules", "rollups"):
            continue  # one file per panel/rule/rollup: named as panels/*.sql etc.
        folder_named = len(rel.parts) == 1 or f"{rel.parts[0]}/" in layout
        if not (folder_named and re.search(rf"(?<!\w){re.escape(path.name)}\b", layout)):
            missing.append(str(rel))
    assert not missing, f"README 'Layout' does not name: {missing}"


def test_the_readme_is_a_newcomers_page_and_links_every_doc():
    """What it is, the two commands, the first agent, what a span needs, the tests, the demo, links."""
    for heading in ("## Set-up: two commands", "## Your first agent", "**What a span needs**",
                    "## Tests: one command", "## Two-minute demo", "## Documentation", "## Layout"):
        assert heading in README, heading
    assert len(README.splitlines()) < 300
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in README, f"README does not link docs/{page.name}"


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (doc.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{doc.name}: {target}")
    assert not broken, broken


def test_the_readme_price_override_example_loads_and_matches_only_what_it_names(tmp_path):
    from tokenpulse.enrich.price import load_overrides

    section = doc("prices.md").split("Overrides (`price_file`)", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "prices.yaml"
    path.write_text(example)
    (o,) = load_overrides(str(path))
    assert o.matches("openai", "gpt-4o") and o.matches("openai", "gpt-4o-2024-08-06")
    assert not o.matches("openai", "gpt-4o-mini")  # the old example's prefix caught it
    assert o.entry.cache_write_1h.base == 4.0

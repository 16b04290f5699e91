"""The package's imports flow one way: receiver -> enrich -> storage, with forward and alerts beside.

Read from the source (every ``import``, at module level or inside a function), so a shortcut taken
in a hurry fails here rather than tangling the rooms.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tokenpulse"

# A module may import its own package and anything of a lower rank; never the same rank's other
# packages (forward, alerts and receiver stand beside each other) nor a higher rank.
RANKS = {
    "errors": 0, "record": 0, "retry": 0,
    "metrics": 1, "telemetry": 1, "supervise": 1,
    "otlp": 2, "storage": 2, "queries": 2,
    "enrich": 3,
    "receiver": 4, "forward": 4, "alerts": 4,
    # the wiring, each above what it wires
    "config": 5, "dashboard": 5, "client": 5, "importer": 5, "admin": 6, "service": 7, "demo": 8, "cli": 9,
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: pathlib.Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tokenpulse"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("tokenpulse"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(p, m) if i in mods and i != m} for m, p in mods.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tokenpulse"


def test_every_room_has_a_rank():
    rooms = {_room(m) for m in _modules()} - {"tokenpulse"}
    assert rooms <= set(RANKS), f"add {sorted(rooms - set(RANKS))} to RANKS"


def test_no_import_goes_up_or_sideways():
    wrong = []
    for module, imports in _graph().items():
        room = _room(module)
        if room == "tokenpulse":
            continue
        for target in imports:
            other = _room(target)
            if other in (room, "tokenpulse"):
                continue
            if RANKS[other] >= RANKS[room]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the flow:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(" -> ".join(path[path.index(n):] + [n]) if n in path else f"{m} -> {n}")
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # a package's __init__ importing its own submodules that import each other is still a cycle
    assert not cycles, "import cycles:\n" + "\n".join(cycles)

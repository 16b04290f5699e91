"""Everything the package needs at run time is declared package data, so `pip install .` (not only
an editable install) ships it. A built-in rule file missing from the wheel once went unnoticed.
C sources are declared as extension sources in setup.py instead; their build products are not
files of the checkout."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_non_python_file_of_the_package_is_package_data():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    extension_sources = (ROOT / "setup.py").read_text()
    missing = []
    for path in (ROOT / "tokenpulse").rglob("*"):
        if not path.is_file() or path.suffix in (".py", ".pyc", ".so") or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(ROOT)
        if path.suffix == ".c":
            if f'"{rel.as_posix()}"' not in extension_sources:
                missing.append(f"{rel} (not an extension source in setup.py)")
            continue
        covered = False
        for package, patterns in declared.items():
            base = Path(*package.split("."))
            if base in rel.parents:
                inside = rel.relative_to(base).as_posix()
                covered = covered or any(fnmatch.fnmatch(inside, p) and inside.count("/") == p.count("/")
                                         for p in patterns)
        if not covered:
            missing.append(str(rel))
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_the_c_extensions_are_built():
    """Optional at install (setup.py), required here: without them the receiver decodes about twice
    as slowly and encodes the attributes column ~2.5 us per span slower, and
    tests/unit/test_decode_fast.py and test_mapcols.py skip everything they check."""
    from tokenpulse.otlp import decode
    from tokenpulse.storage import schema

    for built, source in ((decode._c_walk, "tokenpulse/otlp/_otlpwalk.c"),
                          (schema._c_flatten, "tokenpulse/storage/_mapcols.c")):
        assert built is not None, (
            f"{source} was not compiled (no C compiler at install time?); "
            "install gcc and the Python headers, then `pip install -e .` again")

"""Every public function and class of tango_steps has a docstring citing its TANGO.md section."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tango_steps"


def _public_defs(path: Path):
    def walk(nodes, prefix=""):
        for n in nodes:
            if isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.name.startswith("_"):
                yield f"{prefix}{n.name}", ast.get_docstring(n) or ""
                if isinstance(n, ast.ClassDef):
                    yield from walk(n.body, n.name + ".")

    return list(walk(ast.parse(path.read_text()).body))


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_public_docstrings_cite_tango_sections(path):
    missing = [name for name, doc in _public_defs(path) if "TANGO.md §" not in doc]
    assert not missing, f"{path.name}: public definitions without a 'TANGO.md §' citation: {missing}"

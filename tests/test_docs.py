"""Every public function and class of tango_steps has a docstring; the maths modules' cite TANGO.md.

The modules that implement the method's formulas cite the section each definition implements (the
spec is the reference for correctness); helpers elsewhere (progress bars, locks, loaders) need not.
"""

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


MATHS = ("formats.py", "rewards.py", "advantages.py", "loss.py", "schedule.py", "metrics.py")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_public_definitions_have_docstrings(path):
    missing = [name for name, doc in _public_defs(path) if not doc.strip()]
    assert not missing, f"{path.name}: public definitions without a docstring: {missing}"


@pytest.mark.parametrize("name", MATHS)
def test_maths_docstrings_cite_tango_sections(name):
    missing = [n for n, doc in _public_defs(PACKAGE / "method" / name) if "TANGO.md §" not in doc]
    assert not missing, f"{name}: public definitions without a 'TANGO.md §' citation: {missing}"

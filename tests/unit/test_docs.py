"""Every public function and class of tango_steps has a docstring; the maths modules' cite docs/method.md.

The modules that implement the method's formulas cite the section each definition implements (the
spec is the reference for correctness); helpers elsewhere (progress bars, locks, loaders) need not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tango_steps"


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
    missing = [n for n, doc in _public_defs(PACKAGE / "method" / name) if "docs/method.md §" not in doc]
    assert not missing, f"{name}: public definitions without a 'docs/method.md §' citation: {missing}"


def test_every_method_citation_names_a_section_of_docs_method_md():
    """The method's reference lives in the repository (docs/method.md, sections §1-§9); every ``docs/method.md §N``
    that the code, flows or recipes cite is one of its sections."""
    import re

    repo = PACKAGE.parent
    sections = set(re.findall(r"^## §(\d+) ", (repo / "docs" / "method.md").read_text(), re.M))
    assert sections == {str(i) for i in range(1, 10)}
    cited: dict[str, set[str]] = {}
    for path in [*PACKAGE.rglob("*.py"), *(repo / "flows").glob("*.py"), *(repo / "configs").glob("*.yaml")]:
        for first, rest in re.findall(r"docs/method\.md §(\d+)((?:[-,] ?§?\d+)*)", path.read_text()):
            for n in [first, *re.findall(r"\d+", rest)]:
                cited.setdefault(n, set()).add(path.name)
    assert cited, "no citation found: the pattern is wrong"
    unknown = {n: sorted(files) for n, files in cited.items() if n not in sections}
    assert not unknown, f"citations of sections docs/method.md does not have: {unknown}"


def test_every_file_the_docs_name_exists():
    """The README and docs/ name test files, benchmark scripts, flows, recipes and modules by path: each exists
    (moving a file means updating the docs that point at it)."""
    import re

    repo = PACKAGE.parent
    pattern = r"((?:tests|benchmarks|flows|configs|tango_steps|data)/[\w/.-]+\.(?:py|yaml|md|jsonl))"
    docs = [repo / "README.md", repo / "benchmarks" / "README.md", *(repo / "docs").glob("*.md")]
    named = {(d.name, p) for d in docs for p in re.findall(pattern, d.read_text()) if "/my_" not in p}
    assert len(named) > 50, "the pattern found too few paths: is it still right?"
    missing = sorted((doc, p) for doc, p in named if not (repo / p).exists())
    assert not missing, f"paths the docs name that do not exist: {missing}"

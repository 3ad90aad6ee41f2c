"""The package's layers are a checked fact (docs/architecture.md): imports run one way, and no two modules import
each other, directly or through others.

Read from the code's own imports (every ``import`` and ``from ... import``, function-local ones included), with
nothing imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tango_steps"

# Bottom to top: a module may import its own layer and the ones below it, never one above. The folders are the
# layers; the root's small modules sit where their imports put them (config validates task and template names).
LAYERS: list[tuple[str, ...]] = [
    ("registry", "atomic", "faults", "process", "traffic"),  # no tango_steps imports: usable everywhere
    ("method",),  # the paper's formulas: tensors and floats, no configuration
    ("tasks",),  # tasks, templates, grading, benchmark loaders, held-out sets
    ("config",),  # the recipe schema
    ("models",),  # loading models by reference, the tiny default's models
    ("rollout",),  # sampling engines
    ("training",),  # the RL update, one process or a process group; the warm-ups
    ("round",),  # one round's stages, its state, the in-process runner
    ("pipeline", "plan"),  # rounds as a pipeline: driver, retention, cards, budgets, layout; the run plan
    ("study",),  # studies over the pipeline: ablation arms, benchmark evaluation
]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name under ``tango_steps`` (a package by its folder's name)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__")] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports (a ``from pkg import name`` counts as ``pkg.name`` when that is a
    module, else as ``pkg``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tango_steps":
            base = node.module.removeprefix("tango_steps").lstrip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}".lstrip(".")
                found.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("tango_steps.") for a in node.names if a.name.startswith("tango_steps.")}
    return found - {""}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"tango_steps.{module} is in no layer: add its folder to LAYERS and docs/architecture.md")


def test_every_import_points_down_or_sideways():
    modules = _modules()
    upward = [
        f"tango_steps.{me} ({LAYERS[_layer(me)][0]}) imports tango_steps.{other} ({LAYERS[_layer(other)][0]})"
        for me, path in sorted(modules.items())
        if me
        for other in sorted(_imports(path, modules))
        if _layer(other) > _layer(me)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    modules = _modules()
    graph = {me: {o for o in _imports(path, modules) if o in modules and o != me} for me, path in modules.items()}
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:  # depth-first; a grey node met again closes a cycle
        state[node] = "grey"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "grey":
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "black"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The checks can fail: an upward import written into a copy of a method module is found."""
    modules = _modules()
    path = tmp_path / "formats.py"
    path.write_text(modules["method.formats"].read_text() + "\nfrom tango_steps.pipeline import driver\n")
    assert "pipeline.driver" in _imports(path, modules) and _layer("pipeline.driver") > _layer("method.formats")

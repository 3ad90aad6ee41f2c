"""The embedded tasks' fixed held-out sets (docs/method.md §7-§8), shipped as files in ``data/heldout/``.

Every run, seed and arm of a study evaluates on the same problems, a prefix of one list, so
comparisons are paired per problem. For an embedded task with its default parameters the list is
read from ``data/heldout/<task>.jsonl`` (written by ``data/build_heldout.py``; the schema is in
its docstring); other parameters, longer lists, or a checkout without the files draw it from the
task's generator with the held-out seed, which is what the files hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tango_steps.tasks import get_task
from tango_steps.tasks.base import Problem

HELDOUT_DIR = Path(__file__).resolve().parents[2] / "data" / "heldout"
HELDOUT_SEED = 10_000  # held-out problems differ from the warm-up's stopping set
SHIPPED_TASKS = ("arithmetic", "last_letters")
SHIPPED_SIZE = 500


def generated(task: str, n: int, params: dict[str, Any] | None = None) -> list[Problem]:
    """The first ``n`` held-out problems of ``task`` from its generator (the held-out seed)."""
    return get_task(task, **(params or {})).problems(n, "heldout", seed=HELDOUT_SEED)


def heldout_set(task: str, n: int, params: dict[str, Any] | None = None) -> list[Problem]:
    """The first ``n`` held-out problems of ``task``: from its shipped file when there is one, else generated."""
    path = HELDOUT_DIR / f"{task}.jsonl"
    if not params and task in SHIPPED_TASKS and n <= SHIPPED_SIZE and path.exists():
        out = []
        with path.open() as f:
            for k, line in zip(range(n), f, strict=False):
                try:
                    out.append(Problem(**json.loads(line)))
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{path}, line {k + 1}: not a held-out problem ({e}); rebuild the file "
                                     "with `python data/build_heldout.py`") from None  # fmt: skip
        return out
    return generated(task, n, params)

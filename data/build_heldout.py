"""Write the embedded tasks' fixed held-out sets to ``data/heldout/<task>.jsonl``.

    python data/build_heldout.py

One file per embedded task with its default parameters: the first 500 problems of the task's
``heldout`` split drawn with the held-out seed (``tango_steps.tasks.heldout.HELDOUT_SEED``), in order.
Every run, seed and study arm evaluates on a prefix of this list (``evaluation.heldout_problems``),
so comparisons are paired per problem. ``tests/unit/test_data.py`` checks that each file equals what
the task's generator produces; a change to a task's generator fails that test until this script
is rerun (and the change is then visible in the diff of the file).

Schema, one JSON object per line:

    id             "<task>-<hash of the question>", stable
    question       the problem text the generator is prompted with
    answer         the gold final answer (a string; the task's checker compares exactly)
    steps          the gold steps, one string per <step>
    meta           what the task's checker needs (operands, operations / the words)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tango_steps.tasks.heldout import HELDOUT_DIR, SHIPPED_SIZE, SHIPPED_TASKS, generated


def main() -> None:
    HELDOUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_TASKS:
        path = HELDOUT_DIR / f"{name}.jsonl"
        rows = [p.to_dict() for p in generated(name, SHIPPED_SIZE)]
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        print(f"wrote {path} ({len(rows)} problems)")


if __name__ == "__main__":
    main()

"""The grader under a batch of hostile answers: a bound on the whole batch (about 25 s of time-outs)."""

from __future__ import annotations

import time

from tango_steps.tasks.grading import Grader

HEAVY = {  # the answers of tests/unit/test_hostile.py's per-answer checks
    "one megabyte": "Step 1: " + "x" * (1 << 20) + "\n\\boxed{7}",
    "10,000 nested boxes": "\\boxed{" * 10_000 + "7" + "}" * 10_000,
    "unbalanced tags": "<answer>" * 5_000 + "\\boxed{" * 5_000 + "</step>" * 5_000,
    "NUL bytes": "Step 1: 3\x00+4\x00\n\\boxed{7\x00}",
    "invalid Unicode": "Step 1: \ud800\udfff\ufffe\n\\boxed{7\ud800}",
    "a power tower": "\\boxed{9^{9^{9^{9}}}}",  # sympy would evaluate it for hours: the grader's time-out
}


def test_a_batch_of_256_pathological_answers_has_a_bound():
    """256 answers, 8 of them power towers that time out: the batch takes about 8 time-outs spread over
    the workers plus the rest; measured in docs/reliability.md."""
    answers = [list(HEAVY.values())[i % 5] for i in range(248)] + [HEAVY["a power tower"]] * 8
    with Grader(timeout=1.5, num_workers=2) as g:
        t0 = time.monotonic()
        out = g.grade(answers, ["7"] * len(answers))
        wall = time.monotonic() - t0
        assert g.stats.timeouts == 8
    assert len(out) == 256 and not any(out[-8:])
    assert wall < 8 * (1.5 + 5.0) / 2 + 60, wall  # time-outs (and fresh workers) over 2 workers, + the rest

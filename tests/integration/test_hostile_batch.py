"""The grader under a batch of hostile answers: a bound on the whole batch (about 25 s of time-outs)."""

from __future__ import annotations

import time

from helpers import HEAVY

from tango_steps.tasks.grading import Grader


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

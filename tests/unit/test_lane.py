"""The unit lane's rule is checked (tests/unit/conftest.py): a unit test that starts a process fails."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_a_unit_test_cannot_start_a_process():
    with pytest.raises(AssertionError, match="move it to tests/integration or tests/e2e"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_the_graders_worker_is_the_one_exception():
    from tango_steps.tasks.grading import Grader

    with Grader(timeout=30, num_workers=1) as g:
        assert g.is_correct("\\boxed{\\frac{1}{2}}", "0.5")

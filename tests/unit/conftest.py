"""The unit lane (README: the fast test command): no Metaflow run, no torchrun, no vLLM, no subprocess but the
answer grader's own worker, so the lane runs in a few minutes on 2 cores.

The rule is checked, not hoped for: a unit test that starts any other process fails, naming the command.
"""

from __future__ import annotations

import subprocess

import pytest

# the one process a library function starts itself: the grader's math-verify worker (tango_steps.tasks.grading)
ALLOWED = ("_grade_worker.py",)


@pytest.fixture(autouse=True)
def _no_subprocesses(monkeypatch):
    real = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        cmd = args if isinstance(args, str) else " ".join(map(str, args))
        if not any(name in cmd for name in ALLOWED):
            raise AssertionError(
                f"a unit test started a process ({cmd[:200]}): move it to tests/integration or tests/e2e"
            )
        real(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)

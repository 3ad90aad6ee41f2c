"""Test-only fault switches: a failure or a SIGKILL injected at a named round and point (docs/method.md §9 resume).

Read from the environment, so a test sets them for a whole flow run; nothing sets them in production."""

from __future__ import annotations

import os

FAIL_ENV = "TANGO_FAIL_AT"  # test-only switch, "<round>:<stage>[:once],...", e.g. "2:judge" (see README)


def maybe_fail(round_idx: int, stage: str, attempt: int = 0) -> None:
    """Raise when ``$TANGO_FAIL_AT`` names this round and stage: the test-only failure switch
    (docs/method.md §9 resume).

    A comma-separated list of ``<round>:<stage>`` targets; ``<round>:<stage>:once`` fails only the
    first attempt (``attempt`` 0), so ``@retry`` succeeds.
    """
    for target in filter(None, os.environ.get(FAIL_ENV, "").split(",")):
        once = target.endswith(":once")
        if target.removesuffix(":once") == f"{round_idx}:{stage}" and not (once and attempt > 0):
            raise RuntimeError(f"failure injected by {FAIL_ENV}={target} (test-only switch)")


KILL_ENV = "TANGO_KILL_AT"  # test-only switch, "<round>:<point>": SIGKILL of the whole process group there


def maybe_kill(round_idx: int | None, point: str) -> None:
    """SIGKILL this process's whole group when ``$TANGO_KILL_AT`` is ``<round_idx>:<point>`` (docs/method.md §9).

    The test-only kill switch of ``benchmarks/reliability/kill_sweep.py``: no exception, no ``finally``, no
    Metaflow bookkeeping runs, exactly as when a node dies. Metaflow's local runtime, its tasks and
    the rounds' nested runs share one process group, so the driver dies with the task. Points: a
    TangoRoundFlow step's name (at the end of its work, before its artifacts are stored),
    ``TangoFlow.start`` / ``TangoFlow.round`` / ``TangoFlow.end`` and ``checkpoint_write`` (between a
    checkpoint's files and its manifest, :meth:`~tango_steps.models.store.ModelStore.save`).
    """
    if os.environ.get(KILL_ENV) == f"{round_idx}:{point}":
        import signal

        print(f"killing the process group at {round_idx}:{point} ({KILL_ENV}, test-only switch)", flush=True)
        os.killpg(os.getpgrp(), signal.SIGKILL)

"""Tasks (docs/method.md §8): embedded ``arithmetic`` (default) and ``last_letters`` with exact step labels, and
``dataset`` (prompts from a benchmark-format file, graded by answer only)."""

from __future__ import annotations

from typing import Any

from tango_steps.registry import lookup
from tango_steps.tasks.arithmetic import ArithmeticTask
from tango_steps.tasks.base import CheckResult, Problem, Task, split_of
from tango_steps.tasks.dataset import DatasetTask
from tango_steps.tasks.last_letters import LastLettersTask

TASKS: dict[str, type[Task]] = {
    ArithmeticTask.name: ArithmeticTask,
    LastLettersTask.name: LastLettersTask,
    DatasetTask.name: DatasetTask,
}


def get_task(name: str, **params: Any) -> Task:
    """Build an embedded task by name with its parameters (docs/method.md §8); errors name what is wrong."""
    cls = lookup(TASKS, name, "task")
    try:
        return cls(**params)
    except TypeError as e:
        raise ValueError(f"task '{name}': {e}") from None


__all__ = [
    "TASKS",
    "ArithmeticTask",
    "CheckResult",
    "DatasetTask",
    "LastLettersTask",
    "Problem",
    "Task",
    "get_task",
    "split_of",
]

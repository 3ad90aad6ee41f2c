"""Prompts from a benchmark-format file (GSM8K, MATH...), graded by answer only (docs/method.md §7).

``task: {name: dataset, params: {benchmark: gsm8k, path: /data/gsm8k/train.jsonl}}`` trains on a
real dataset: the file is read by :func:`tango_steps.tasks.benchmarks.load_benchmark` (local path or
``s3://``), split into train/held-out by a hash of each question as the embedded tasks are, and a
candidate is correct when its boxed answer is equivalent to the gold one (the core grader). There
are no step labels: ``check`` returns ``step_labels=None``, and the process-level metrics that need
exact labels are left out (counted) for such tasks.
"""

from __future__ import annotations

import random

from tango_steps.tasks.base import CheckResult, Problem, Task, problem_id, split_of


class DatasetTask(Task):
    """A benchmark file as a task (docs/method.md §7): answer-graded, no step labels.

    Args:
        benchmark: the file's format, one of ``tango_steps.tasks.benchmarks.BENCHMARKS``.
        path: the file, or a folder with the benchmark's usual layout (local or ``s3://``).
        limit: read at most this many rows.
        answer: how a response's answer is read for the reward: ``strict`` (its boxed answer,
            docs/method.md §2; the default) or ``flexible`` (the last number it writes, as common GSM8K
            harnesses read it; :func:`tango_steps.tasks.grading.last_number`).
    """

    name = "dataset"

    def __init__(
        self,
        benchmark: str = "gsm8k",
        path: str = "",
        limit: int | None = None,
        split_seed: int = 0,
        heldout_percent: int = 20,
        answer: str = "strict",
    ) -> None:
        super().__init__(split_seed, heldout_percent)
        from tango_steps.tasks.benchmarks import BENCHMARKS, _exists
        from tango_steps.tasks.grading import ANSWER_EXTRACTIONS

        if answer not in ANSWER_EXTRACTIONS:
            raise ValueError(f"params.answer must be one of {', '.join(ANSWER_EXTRACTIONS)}, got {answer!r}")
        self.answer = answer

        if benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark format '{benchmark}'; known: {', '.join(BENCHMARKS)}")
        if not path:
            raise ValueError("params.path is required: the benchmark file or folder to read prompts from")
        if not _exists(str(path)):
            raise ValueError(f"params.path: data file '{path}' does not exist")
        self.benchmark, self.path, self.limit = benchmark, str(path), limit
        self._splits: dict[str, list[Problem]] | None = None

    def _load(self) -> dict[str, list[Problem]]:
        if self._splits is None:
            from tango_steps.tasks.benchmarks import load_benchmark

            rows, _ = load_benchmark(self.benchmark, self.path, self.limit)
            self._splits = {"train": [], "heldout": []}
            for r in rows:
                p = Problem(id=problem_id(self.benchmark, r.question), question=r.question, answer=r.gold, steps=[])
                self._splits[split_of(r.question, self.split_seed, self.heldout_percent)].append(p)
        return self._splits

    def problems(self, n: int, split: str = "train", seed: int = 0, unique: bool = True) -> list[Problem]:
        """``n`` problems of a split, a seeded sample of the file's rows (docs/method.md §7)."""
        pool = self._load().get(split)
        if pool is None:
            raise ValueError(f"unknown split '{split}'; known: train, heldout")
        if n > len(pool):
            raise ValueError(f"{self.path}: asked for {n} {split} problems, the file has {len(pool)}")
        return random.Random(f"{self.name}/{split}/{seed}").sample(pool, n)

    def available(self, split: str) -> int | None:
        """The number of the file's rows in ``split`` (docs/method.md §7)."""
        return len(self._load().get(split, []))

    def _answer_ok(self, problem: Problem, answer: str) -> bool:
        from tango_steps.tasks.grading import is_correct

        return is_correct(f"\\boxed{{{answer}}}", problem.answer)

    def check(self, problem: Problem, text: str, parsed=None) -> CheckResult:
        """Outcome only (docs/method.md §7): the answer (boxed, or with ``answer: flexible`` the last number)
        against the gold one; no step labels."""
        from tango_steps.method.formats import parse_solution
        from tango_steps.tasks.grading import last_number

        if self.answer == "flexible":
            answer = last_number(text)
        else:
            answer = (parsed if parsed is not None else parse_solution(text)).answer
        correct = answer is not None and self._answer_ok(problem, answer)
        return CheckResult(correct=correct, step_labels=None, first_error=-1)

"""The embedded task interface: problems with gold step-by-step solutions and an exact step checker.

A task makes seeded problems and, for ANY candidate solution text, returns the outcome label and
the exact gold step labels, so that the verifier's process-level accuracy can be measured exactly
(ProcessBench protocol: the index of the earliest wrong step, -1 if none; docs/method.md §8 small-scale
study). Train and held-out splits are disjoint by construction: every problem is assigned to a
split by a hash of its text and the split seed, and a generator only keeps problems of the split
asked for.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from tango_steps.method.formats import ParsedSolution, format_solution, parse_solution

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Problem:
    """One task problem (docs/method.md §2 generator input) with its gold solution.

    Attributes:
        id: stable id, ``<task>-<hash of the question>``.
        question: the problem text given to the generator.
        answer: the gold final answer.
        steps: the gold steps, one string per ``<step>``.
        meta: JSON-safe structure the checker needs (operands, words...).
    """

    id: str
    question: str
    answer: str
    steps: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def gold_solution(self) -> str:
        """The gold solution in the generator format of docs/method.md §2."""
        return format_solution(self.steps, self.answer)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for DataFrames and artifacts (docs/method.md §2)."""
        return asdict(self)


@dataclass(frozen=True)
class CheckResult:
    """Exact labels of one candidate solution (docs/method.md §8, ProcessBench protocol).

    Attributes:
        correct: the outcome label: the boxed answer equals the gold answer.
        step_labels: one bool per candidate step (True = the step is right), in order; None when
            the task has no step labels (a dataset graded by answer only).
        first_error: index of the first wrong step, or -1 when no step is wrong.
        num_steps: K of the candidate.
    """

    correct: bool
    step_labels: list[bool] | None
    first_error: int

    @property
    def num_steps(self) -> int:
        """K, the number of candidate steps (docs/method.md §2)."""
        return len(self.step_labels) if self.step_labels is not None else 0


def split_of(question: str, split_seed: int, heldout_percent: int) -> str:
    """The split a question belongs to: a hash of (seed, text), so splits never overlap (docs/method.md §8)."""
    h = int.from_bytes(hashlib.sha256(f"{split_seed}\x00{question}".encode()).digest()[:8], "big")
    return "heldout" if h % 100 < heldout_percent else "train"


def problem_id(task: str, question: str) -> str:
    """Stable problem id from the task name and question text (docs/method.md §8)."""
    return f"{task}-{hashlib.sha256(question.encode()).hexdigest()[:12]}"


class Task:
    """Base class of the embedded tasks (docs/method.md §8): seeded problems, exact checker.

    Subclasses implement :meth:`_draw` (one random problem for a split) and :meth:`_step_ok`.
    """

    name = "task"

    def __init__(self, split_seed: int = 0, heldout_percent: int = 20) -> None:
        if not 0 < heldout_percent < 100:
            raise ValueError(f"heldout_percent must be in 1..99, got {heldout_percent}")
        self.split_seed = split_seed
        self.heldout_percent = heldout_percent

    def _draw(self, rng: random.Random, split: str) -> Problem:  # pragma: no cover - abstract
        raise NotImplementedError

    def _gold_step_count(self, problem: Problem) -> int:
        return len(problem.steps)

    def _step_ok(self, problem: Problem, k: int, step: str) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _answer_ok(self, problem: Problem, answer: str) -> bool:
        return answer.strip() == problem.answer

    def available(self, split: str) -> int | None:
        """How many distinct problems ``split`` holds, or None when the task draws them without limit
        (docs/method.md §8).
        """
        return None

    def split_step(self, step: str) -> tuple[str, str] | None:
        """A step as (what it starts from, what it claims), e.g. ``("19 * 3 =", "57")``, or None (docs/method.md §2).

        Used by the self-check verifier warm-up, which asks a MODEL to redo the claim; it reads the
        step's own text only (never the problem's gold steps). None: the task has no such split.
        """
        return None

    def problems(self, n: int, split: str = "train", seed: int = 0, unique: bool = True) -> list[Problem]:
        """``n`` seeded problems of one split (docs/method.md §8); the same arguments give the same list."""
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")
        rng = random.Random(f"{self.name}/{split}/{seed}")
        out: list[Problem] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * n + 1000:
                raise ValueError(
                    f"{self.name}: could only make {len(out)} distinct {split} problems of {n} asked for; "
                    "widen the task's ranges or ask for fewer"
                )
            p = self._draw(rng, split)
            if split_of(p.question, self.split_seed, self.heldout_percent) != split:
                continue
            if unique and p.id in seen:
                continue
            seen.add(p.id)
            out.append(p)
        return out

    def check(self, problem: Problem, text: str, parsed: ParsedSolution | None = None) -> CheckResult:
        """Outcome label and exact step labels of ANY candidate solution text (docs/method.md §8).

        ``parsed``: the text's :func:`~tango_steps.method.formats.parse_solution`, when the caller has it
        (the rollout parses each completion once).

        Step k (0-based) is right iff it is exactly what step k of a correct solution must state
        (see the subclass's definition) and k is below the gold step count; steps past the gold
        count are wrong. A candidate that stops early with every step right has first_error -1 but
        a wrong outcome: its error is the missing work, not a step.
        """
        parsed = parsed if parsed is not None else parse_solution(text)
        labels = [
            k < self._gold_step_count(problem) and self._step_ok(problem, k, s) for k, s in enumerate(parsed.steps)
        ]
        first = next((k for k, ok in enumerate(labels) if not ok), -1)
        correct = parsed.answer is not None and self._answer_ok(problem, parsed.answer)
        return CheckResult(correct=correct, step_labels=labels, first_error=first)

"""The default embedded task: seeded multi-step arithmetic, evaluated left to right (docs/method.md §8 analogue).

A problem is ``Evaluate left to right: 12 + 7 * 3 - 5``; its gold solution has one step per
operation, each stating the running value, the operation, its operand and the result:
``<step>12 + 7 = 19</step><step>19 * 3 = 57</step><step>57 - 5 = 52</step>``, answer 52.
Every intermediate value stays in ``[min_value, max_value]``. The defaults (2-3 operations, values
0-20, + and - operands 1-9, multipliers 2-9) are chosen so that the 3.6M-parameter tiny generator
reaches 20-30% held-out accuracy after ~700-1000 SFT steps (~4-6 minutes on 2 cores). Measured
here with the same model and TRL SFT (batch 32, lr 2e-3): values 0-99 with operands up to 50 stayed
at 3-10% after 1,600 steps; 0-50 with operands up to 20 at 5% after 750; 0-99 with operands up to
9 at 2-6% after 800; 0-20 with operands up to 9 gave 17% at 400 and 23% at 700 steps.

Wrong step (exact): step k is right iff it reads ``a op b = c`` (spaces optional) with ``a`` the
true value after k operations (the start number for k = 0), ``op`` and ``b`` the problem's
(k+1)-th operation and operand, and ``c`` the true value after k+1 operations. So a step that
repeats an earlier slip ("19 * 3 = 56" then "56 - 5 = 51") is wrong at the slip, and a step
whose arithmetic is right but starts from a wrong value is wrong too.
"""

from __future__ import annotations

import random
import re

from tango_steps.tasks.base import Problem, Task, problem_id
from tango_steps.tasks.grading import _plain_number

_STEP = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class ArithmeticTask(Task):
    """Seeded left-to-right arithmetic with exact step labels (docs/method.md §8 analogue).

    Args:
        min_ops / max_ops: number of operations per problem (2-6).
        min_value / max_value: range of the start number and of every intermediate result.
        max_operand: largest operand of + and - (multipliers are 2-9).
        ops: the operations used, from ``+``, ``-``, ``*``.
        split_seed / heldout_percent: see :class:`~tango_steps.tasks.base.Task`.
    """

    name = "arithmetic"

    def __init__(
        self,
        min_ops: int = 2,
        max_ops: int = 3,
        min_value: int = 0,
        max_value: int = 20,
        max_operand: int = 9,
        ops: str = "+-*",
        split_seed: int = 0,
        heldout_percent: int = 20,
    ) -> None:
        super().__init__(split_seed, heldout_percent)
        if not 1 <= min_ops <= max_ops <= 6:
            raise ValueError(f"need 1 <= min_ops <= max_ops <= 6, got min_ops={min_ops}, max_ops={max_ops}")
        if not 0 <= min_value < max_value:
            raise ValueError(f"need 0 <= min_value < max_value, got {min_value}, {max_value}")
        if max_operand < 1:
            raise ValueError(f"max_operand must be >= 1, got {max_operand}")
        if not ops or set(ops) - set(_OPS):
            raise ValueError(f"ops must be a non-empty string of + - *, got {ops!r}")
        self.min_ops, self.max_ops = min_ops, max_ops
        self.min_value, self.max_value, self.max_operand = min_value, max_value, max_operand
        self.ops = ops

    def _next_op(self, rng: random.Random, v: int) -> tuple[str, int] | None:
        for _ in range(50):
            op = rng.choice(self.ops)
            b = rng.randint(2, 9) if op == "*" else rng.randint(1, self.max_operand)
            if self.min_value <= _OPS[op](v, b) <= self.max_value:
                return op, b
        return None

    def _draw(self, rng: random.Random, split: str) -> Problem:
        while True:
            v0 = rng.randint(self.min_value, self.max_value)
            n = rng.randint(self.min_ops, self.max_ops)
            ops: list[tuple[str, int]] = []
            v = v0
            for _ in range(n):
                nxt = self._next_op(rng, v)
                if nxt is None:
                    break
                ops.append(nxt)
                v = _OPS[nxt[0]](v, nxt[1])
            if len(ops) == n:
                return self.make_problem(v0, ops)

    def make_problem(self, start: int, ops: list[tuple[str, int]]) -> Problem:
        """The problem and gold solution for a start number and a list of (op, operand) (docs/method.md §8)."""
        question = "Evaluate left to right: " + " ".join([str(start)] + [f"{op} {b}" for op, b in ops])
        steps, v = [], start
        for op, b in ops:
            nv = _OPS[op](v, b)
            steps.append(f"{v} {op} {b} = {nv}")
            v = nv
        meta = {"start": start, "ops": [[op, b] for op, b in ops]}
        return Problem(id=problem_id(self.name, question), question=question, answer=str(v), steps=steps, meta=meta)

    def _values(self, problem: Problem) -> list[int]:
        vals = [problem.meta["start"]]
        for op, b in problem.meta["ops"]:
            vals.append(_OPS[op](vals[-1], b))
        return vals

    def _step_ok(self, problem: Problem, k: int, step: str) -> bool:
        m = _STEP.match(step)
        if m is None:
            return False
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        vals = self._values(problem)
        want_op, want_b = problem.meta["ops"][k]
        return (a, op, b, c) == (vals[k], want_op, want_b, vals[k + 1])

    def split_step(self, step: str) -> tuple[str, str] | None:
        """``"19 * 3 = 57"`` -> ``("19 * 3 =", "57")``; None for a step without ``=`` (docs/method.md §2)."""
        lhs, eq, rhs = step.strip().rpartition("=")
        return (lhs.strip() + " =", rhs.strip()) if eq and lhs.strip() else None

    def _answer_ok(self, problem: Problem, answer: str) -> bool:
        got = _plain_number(answer)
        return got is not None and got == int(problem.answer)

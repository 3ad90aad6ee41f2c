"""Issue #17: model output is data. Code and shell payloads in answers are never run by parsing, grading
or the tasks' checks; huge, nested, NUL-laden and invalid-Unicode answers go through in bounded time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import HEAVY

from tango_steps.method.formats import parse_solution, parse_verification
from tango_steps.tasks import get_task
from tango_steps.tasks.grading import Grader, extract_answer


def _payloads(marker: Path) -> list[str]:
    """Answers that would create ``marker<i>`` if anything evaluated them (Python, shell, LaTeX-wrapped)."""
    m = [f"{marker}{i}" for i in range(8)]
    return [
        f"__import__('os').system('touch {m[0]}')",
        f"\\boxed{{__import__('os').system('touch {m[1]}')}}",
        f"\\boxed{{eval(\"__import__('os').system('touch {m[2]}')\")}}",
        f"\\boxed{{(lambda: __import__('os').system('touch {m[3]}'))()}}",
        f"Step 1: done.\nAnswer: $\\boxed{{exec('import os; os.system(\"touch {m[4]}\")')}}$",
        f"\\boxed{{$(touch {m[5]})}}",
        f"\\boxed{{`touch {m[6]}`}}",
        f"<answer>open('{m[7]}', 'w').write('x')</answer>",
    ]


def test_model_output_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    answers = _payloads(marker)
    with Grader(timeout=5.0, num_workers=1) as g:
        graded = g.grade(answers, ["42"] * len(answers))
        flexible = [extract_answer(a, "flexible") for a in answers]
    assert graded == [False] * len(answers)
    for a in answers:
        parse_solution(a)
        parse_verification(f"Step 1: CORRECT\nFinal verdict: {a}", 1, True)
    for name in ("arithmetic", "last_letters"):
        task = get_task(name)
        problem = task.problems(1, "train", seed=0)[0]
        assert not any(task.check(problem, a, parse_solution(a)).correct for a in answers)
    assert not list(tmp_path.glob("pwned*")), "a payload ran"
    assert any(f is not None for f in flexible)  # the payloads were read as answers, and stayed text


@pytest.mark.parametrize("name", list(HEAVY))
def test_heavy_answers_go_through_in_bounded_time(name):
    text = HEAVY[name]
    t0 = time.monotonic()
    parsed = parse_solution(text)
    parse_verification(text, 3, True)
    assert time.monotonic() - t0 < 5.0, name
    with Grader(timeout=1.5, num_workers=1) as g:
        t0 = time.monotonic()
        ok = g.is_correct(text, "7")
        assert time.monotonic() - t0 < 1.5 + 5.0, name  # the time-out, plus starting a fresh worker
        timeouts = g.stats.timeouts
    assert isinstance(parsed.well_formed, bool)
    assert ok in (True, False) and timeouts == (1 if name == "a power tower" else 0)

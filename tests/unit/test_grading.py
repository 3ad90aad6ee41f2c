"""Tests of tango_steps.tasks.grading (docs/method.md §4: r_out by Math-Verify), with the real math-verify."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import pytest

from tango_steps.tasks import grading
from tango_steps.tasks._grade_worker import grade_one
from tango_steps.tasks.grading import Grader, extract_gold, is_correct

PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"  # sympy tries to evaluate 9^(9^387420489): hangs for hours

# (response, gold, expected)
CASES = [
    # plain numbers (fast path) and thousands separators
    ("\\boxed{27}", "27", True),
    ("\\boxed{27.0}", "27", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{1000}", "1,000", True),
    ("\\boxed{-3}", "-3", True),
    ("\\boxed{$5$}", "5", True),
    ("\\boxed{28}", "27", False),
    ("\\boxed{2.7}", "27", False),
    ("\\boxed{-27}", "27", False),
    ("\\boxed{1,001}", "1000", False),
    # GSM8K golds
    ("so the total is \\boxed{18}.", "Janet sells 16 - 3 - 4 = 9 eggs...\n#### 18", True),
    ("\\boxed{1,234}", "#### 1,234", True),
    ("\\boxed{17}", "#### 18", False),
    # fractions vs decimals
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),
    ("\\boxed{1/2}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{1}{3}}", "0.33", False),
    ("\\boxed{\\frac{2}{3}}", "\\frac{1}{3}", False),
    # percentages
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{50}", "50\\%", True),
    ("\\boxed{40\\%}", "50\\%", False),
    # tuples, intervals, \left( \right)
    ("\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}", "(3,\\frac{\\pi}{2})", True),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "(3,\\frac{\\pi}{2})", True),
    ("\\boxed{(\\frac{\\pi}{2}, 3)}", "(3,\\frac{\\pi}{2})", False),
    ("\\boxed{[1,2)}", "[1,2)", True),
    ("\\boxed{(1,2)}", "[1,2)", False),
    ("\\boxed{(-\\infty, 0) \\cup (1, \\infty)}", "(-\\infty,0)\\cup(1,\\infty)", True),
    # pi and sqrt
    ("\\boxed{2\\pi}", "2\\pi", True),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", False),
    ("\\boxed{3.14}", "\\pi", False),
    # units and text around the box
    ("The length is \\boxed{10 \\text{ cm}} in total.", "10", True),
    ("\\boxed{10\\text{ dollars}}", "10", True),
    ("Therefore the final answer is $\\boxed{42}$. I hope it is correct.", "42", True),
    ("The answer is 27", "27", True),
    ("<think><step>3*9=27</step></think><answer>\\boxed{27}</answer>", "27", True),
    # gold as a \boxed string (MATH solution) and as a list (OlympiadBench)
    ("\\boxed{\\frac{1}{2}}", "so $x = \\boxed{\\frac{1}{2}}$.", True),
    ("\\boxed{5}", ["$5$"], True),
    ("\\boxed{6}", ["$5$"], False),
    ("\\boxed{x^2+1}", "1+x^2", True),
    ("\\boxed{x^2-1}", "x^2+1", False),
    # wrong answers that look close
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{4}", False),
    ("\\boxed{12}", "\\frac{1}{2}", False),
    ("\\boxed{0.333}", "\\frac{1}{3}", False),
    # empty / unparseable
    ("", "5", False),
    ("\\boxed{}", "5", False),
    ("\\boxed{5}", "", False),
    ("\\boxed{5}", [], False),
]


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout=10.0, num_workers=2) as g:
        yield g


def test_case_table_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize(("response", "gold", "expected"), CASES)
def test_is_correct_table(grader, response, gold, expected):
    assert grader.is_correct(response, gold) is expected


def test_batch_grading_matches_single(grader):
    responses = [c[0] for c in CASES]
    golds = [c[1] for c in CASES]
    assert grader.grade(responses, golds) == [c[2] for c in CASES]


def test_fast_path_counted():
    with Grader(timeout=5.0) as g:
        assert g.grade(["\\boxed{12}", "\\boxed{1,000}"], ["12", "1000"]) == [True, True]
        assert g.stats.fast_path == 2 and g.stats.total == 2 and g.stats.correct == 2
        assert g._workers == []  # no worker process was needed


def test_pathological_input_times_out_and_worker_recovers():
    with Grader(timeout=1.5, num_workers=1) as g:
        t0 = time.monotonic()
        assert g.is_correct(PATHOLOGICAL, "1") is False
        elapsed = time.monotonic() - t0
        assert elapsed < 1.5 + 5.0  # the bound (plus a generous allowance to start a fresh worker)
        assert g.stats.timeouts == 1
        # a fresh worker answers the next call
        assert g.is_correct("\\boxed{\\frac{1}{2}}", "0.5") is True
        # a batch mixing it with normal answers: only the bad one times out
        out = g.grade(["\\boxed{\\sqrt{4}}", PATHOLOGICAL, "\\boxed{\\pi}"], ["2", "7", "\\pi"])
        assert out == [True, False, True]
        assert g.stats.timeouts == 2


def test_unparseable_counted():
    with Grader(timeout=5.0) as g:
        assert g.grade(["", "\\boxed{5}", "\\boxed{@@}"], ["5", None, "\\frac{1}{2}"]) == [False, False, False]
        assert g.stats.unparseable >= 2


def test_module_level_is_correct_off_main_thread():
    results: list[bool] = []

    def work():
        results.append(is_correct("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"))
        results.append(is_correct(PATHOLOGICAL, "1", timeout=1.0))

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=60)
    assert results == [True, False]
    assert grading._default.stats.timeouts >= 1  # the module-level grader's counts


def _grade_in_daemon(q):
    with Grader(timeout=1.0) as g:
        q.put((g.is_correct("\\boxed{0.25}", "\\frac{1}{4}"), g.is_correct(PATHOLOGICAL, "1")))


def test_time_bound_holds_inside_a_daemonic_worker_process():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_grade_in_daemon, args=(q,), daemon=True)
    p.start()
    assert q.get(timeout=60) == (True, False)
    p.join(timeout=30)


def test_grade_length_mismatch_and_bad_settings():
    with pytest.raises(ValueError, match="2 responses but 1 gold"):
        Grader().grade(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="timeout must be > 0"):
        Grader(timeout=0)
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        Grader(num_workers=0)


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("Natalia sold 48/2 = 24 clips.\n#### 1,072", "1072"),
        ("The answer is $\\boxed{\\frac{\\pi}{2}}$.", "\\frac{\\pi}{2}"),
        (["$3$"], "3"),
        (["$3$", "$4$"], "3, 4"),
        (27, "27"),
        ("  $12$ ", "12"),
        ("", None),
        (None, None),
    ],
)
def test_extract_gold(gold, expected):
    assert extract_gold(gold) == expected


def test_worker_grade_one_in_process():
    assert grade_one("\\boxed{\\frac{1}{2}}", "\\boxed{0.5}") == ("correct", "")
    assert grade_one("\\boxed{1}", "\\boxed{2}") == ("incorrect", "")
    assert grade_one("", "\\boxed{2}") == ("unparseable", "gold")
    assert grade_one("\\boxed{2}", "") == ("unparseable", "prediction")


@pytest.mark.parametrize(
    ("response", "strict", "flexible"),
    [
        ("so she pays $1,250.", None, "1250"),
        ("<answer>\\boxed{18}</answer> (I counted 3 ducks)", "18", "3"),
        ("The answer is -7 and then 2.5", None, "2.5"),
        ("no number here", None, None),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "2"),
        ("It costs 3. ...", None, "3"),
    ],
)
def test_strict_and_flexible_answers(response, strict, flexible):
    from tango_steps.tasks.grading import extract_answer, last_number

    assert extract_answer(response, "strict") == strict
    assert extract_answer(response, "flexible") == flexible == last_number(response)
    with pytest.raises(ValueError, match="answer extraction must be one of strict, flexible"):
        extract_answer(response, "lenient")


def test_grade_answers_counts_a_missing_answer_as_unparseable(grader):
    before = grader.stats.unparseable
    assert grader.grade_answers(["18", None, "1250", "\\frac{1}{2}"], ["18", "3", "1,250", "0.5"]) == [
        True, False, True, True,
    ]  # fmt: skip
    assert grader.stats.unparseable == before + 1


def test_dataset_task_reads_the_answer_strict_or_flexible(tmp_path):
    from tango_steps.tasks import get_task

    data = tmp_path / "gsm8k.jsonl"
    data.write_text('{"question": "1 + 2?", "answer": "1 + 2 = 3\\n#### 3"}\n')
    strict = get_task("dataset", benchmark="gsm8k", path=str(data))
    flexible = get_task("dataset", benchmark="gsm8k", path=str(data), answer="flexible")
    problem = strict.problems(1, split=strict_split(strict))[0]
    prose, boxed = "1 plus 2 makes 3.", "<step>1 + 2 = 3</step>\n<answer>\\boxed{3}</answer>"
    assert not strict.check(problem, prose).correct and strict.check(problem, boxed).correct
    assert flexible.check(problem, prose).correct and flexible.check(problem, boxed).correct
    with pytest.raises(ValueError, match=r"params\.answer must be one of strict, flexible"):
        get_task("dataset", benchmark="gsm8k", path=str(data), answer="lenient")


def strict_split(task) -> str:
    """The split the one-row file's problem fell in."""
    return "train" if task.available("train") else "heldout"

"""Tests of the embedded tasks (tango_steps.tasks): generators, splits, exact step labels (docs/method.md §8)."""

from __future__ import annotations

import pytest

from tango_steps.method.formats import format_solution
from tango_steps.tasks import ArithmeticTask, LastLettersTask, get_task


def test_arithmetic_gold_solutions_check_correct_and_deterministic():
    t = ArithmeticTask(min_ops=2, max_ops=6)
    probs = t.problems(300, "train", seed=4)
    assert probs == t.problems(300, "train", seed=4)
    assert probs != t.problems(300, "train", seed=5)
    for p in probs:
        assert 2 <= len(p.steps) <= 6
        r = t.check(p, p.gold_solution)
        assert r.correct and r.first_error == -1 and all(r.step_labels)
        vals = [p.meta["start"]]
        for _op, _b in p.meta["ops"]:
            assert 0 <= int(p.steps[len(vals) - 1].split("=")[1]) <= 99
            vals.append(int(p.steps[len(vals) - 1].split("=")[1]))
        assert str(vals[-1]) == p.answer


def test_splits_are_disjoint_and_change_with_split_seed():
    t = ArithmeticTask()
    train = {p.id for p in t.problems(3000, "train")}
    held = {p.id for p in t.problems(500, "heldout")}
    assert not train & held
    other = ArithmeticTask(split_seed=7)
    assert {p.id for p in other.problems(500, "heldout")} != held
    ll = LastLettersTask()
    assert not {p.id for p in ll.problems(1000, "train")} & {p.id for p in ll.problems(300, "heldout")}


def test_arithmetic_step_labels_exact():
    t = ArithmeticTask()
    p = t.make_problem(12, [("+", 7), ("*", 3), ("-", 5)])
    assert p.question == "Evaluate left to right: 12 + 7 * 3 - 5"
    assert p.steps == ["12 + 7 = 19", "19 * 3 = 57", "57 - 5 = 52"] and p.answer == "52"
    cases = [
        (["12 + 7 = 19", "19 * 3 = 57", "57 - 5 = 52"], "52", True, [True, True, True], -1),
        (["12+7=19", "19*3=57", "57-5=52"], "52", True, [True, True, True], -1),  # spacing is free
        (["12 + 7 = 19", "19 * 3 = 56", "56 - 5 = 51"], "51", False, [True, False, False], 1),  # slip carried on
        (["12 + 7 = 18", "19 * 3 = 57", "57 - 5 = 52"], "52", True, [False, True, True], 0),  # right by luck
        (["12 + 7 = 19", "19 * 4 = 76"], "76", False, [True, False], 1),  # wrong operand
        (["12 + 7 = 19", "19 * 3 = 57"], "57", False, [True, True], -1),  # stopped early: outcome wrong
        (["12 + 7 = 19", "19 * 3 = 57", "57 - 5 = 52", "52 + 0 = 52"], "52", True, [True, True, True, False], 3),
        (["twelve plus seven", "19 * 3 = 57", "57 - 5 = 52"], "52", True, [False, True, True], 0),
        ([], "52", True, [], -1),
        (["12 + 7 = 19", "19 * 3 = 57", "57 - 5 = 52"], "52.0", True, [True, True, True], -1),
    ]
    for steps, answer, correct, labels, first in cases:
        r = t.check(p, format_solution(steps, answer))
        assert (r.correct, r.step_labels, r.first_error) == (correct, labels, first), steps
    assert t.check(p, "").correct is False
    assert t.check(p, "<think><step>12 + 7 = 19</step></think>").step_labels == [True]


def test_last_letters_labels_and_length_generalisation_split():
    t = LastLettersTask()
    p = t.make_problem(["apple", "banana", "cherry"])
    assert p.steps == ["apple -> e -> e", "banana -> a -> ea", "cherry -> y -> eay"] and p.answer == "eay"
    r = t.check(p, format_solution(["apple -> e -> e", "banana -> n -> en", "cherry -> y -> eny"], "eny"))
    assert (r.correct, r.step_labels, r.first_error) == (False, [True, False, False], 1)
    r = t.check(p, format_solution(["apple->e->e", "banana->a->ea", "cherry->y->eay"], "eay"))
    assert r.correct and r.first_error == -1
    train = t.problems(400, "train")
    held = t.problems(400, "heldout")
    assert max(len(q.steps) for q in train) <= 10
    assert max(len(q.steps) for q in held) > 10  # evaluated on longer lists (docs/method.md §8: 2-12)
    for q in held[:50]:
        assert t.check(q, q.gold_solution).correct


@pytest.mark.parametrize(
    ("name", "params", "msg"),
    [
        ("arith", {}, "unknown task 'arith'; known: arithmetic, dataset, last_letters"),
        ("arithmetic", {"max_ops": 9}, "max_ops <= 6"),
        ("arithmetic", {"ops": "+/"}, "ops must be"),
        ("arithmetic", {"min_value": 50, "max_value": 10}, "min_value < max_value"),
        ("arithmetic", {"nope": 1}, "task 'arithmetic': .*nope"),
        ("last_letters", {"min_words": 5, "max_words": 2}, "min_words <= max_words"),
        ("arithmetic", {"heldout_percent": 0}, "heldout_percent must be in 1..99"),
    ],
)
def test_task_errors_name_the_field(name, params, msg):
    with pytest.raises(ValueError, match=msg):
        get_task(name, **params)


def test_too_many_problems_for_a_narrow_range_is_a_clear_error():
    t = ArithmeticTask(min_ops=1, max_ops=1, min_value=0, max_value=3, max_operand=1, ops="+")
    with pytest.raises(ValueError, match="could only make"):
        t.problems(500, "train")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        t.problems(1, "test")

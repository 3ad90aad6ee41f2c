"""Benchmark evaluation (tango_steps.study.evaluation) and EvalFlow, on fixtures written here and the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tango_steps.rollout.hf import HFEngine
from tango_steps.study.evaluation import check_request, evaluate_generator, evaluate_processbench, processbench_solution
from tango_steps.tasks import get_task
from tango_steps.tasks.benchmarks import BenchmarkError, BenchmarkProblem, ProcessSample
from tango_steps.tasks.templates import get_template

REPO = Path(__file__).resolve().parents[2]


def _arith_problems(n: int) -> list:
    return get_task("arithmetic").problems(n, "heldout", seed=777)


def test_generator_pass_at_1_agrees_with_the_exact_checker(warmed):
    out, _ = warmed
    task, tpl = get_task("arithmetic"), get_template("compact")
    probs = _arith_problems(40)
    bench = [BenchmarkProblem(id=p.id, question=p.question, gold=p.answer, benchmark="arith") for p in probs]
    engine = HFEngine(str(out / "generator"))
    df, m = evaluate_generator(engine, bench, tpl, 96, log=lambda s: None)
    exact = [task.check(p, t).correct for p, t in zip(probs, df["text"], strict=True)]
    assert df["correct"].tolist() == exact
    assert m["accuracy"] == pytest.approx(sum(exact) / 40) and 0 < m["accuracy"] < 1
    # a tight token limit truncates everything: all wrong, counted
    _, m2 = evaluate_generator(engine, bench[:5], tpl, 4, log=lambda s: None)
    assert m2["truncated_frac"] == 1.0 and m2["accuracy"] == 0.0


def test_processbench_protocol_with_the_tiny_verifier(warmed):
    out, _ = warmed
    probs = _arith_problems(12)
    samples = []
    for i, p in enumerate(probs):
        steps = list(p.steps)
        label = -1
        if i % 2:  # corrupt one step: its index is the earliest error
            label = len(steps) - 1
            steps[label] = steps[label].replace("=", "= 1")
        steps[-1] = steps[-1] + f" \\boxed{{{p.answer}}}"
        samples.append(ProcessSample(p.id, p.question, steps, label, label == -1, "fixture"))
    assert processbench_solution(samples[0]).answer == probs[0].answer
    df, m = evaluate_processbench(
        HFEngine(str(out / "verifier")), samples, get_template("compact"), 192, lambda s: None
    )
    assert len(df) == 12 and set(df["label"]) == {-1, *{len(p.steps) - 1 for p in probs}}
    assert 0 <= m["process_f1"] <= 1 and 0 <= m["unusable_frac"] <= 1
    err = df[df["label"] >= 0]
    assert m["process_acc_erroneous"] == pytest.approx((err["predicted"] == err["label"]).mean())


def test_requests_are_checked_before_any_model_loads():
    with pytest.raises(BenchmarkError, match=r"unknown benchmark.*gsm9k.*known: gsm8k, math500"):
        check_request("gsm9k", "g", "", "full", "auto", 5, 64)
    with pytest.raises(ValueError, match="--verifier is required"):
        check_request("processbench/gsm8k", "g", "", "full", "auto", 5, 64)
    with pytest.raises(ValueError, match="unknown prompt template"):
        check_request("gsm8k", "g", "", "nope", "auto", 5, 64)
    assert check_request("gsm8k, processbench/math", "g", "v", "full", "hf", 0, 8) == ["gsm8k", "processbench/math"]

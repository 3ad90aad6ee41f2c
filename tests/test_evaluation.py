"""Benchmark evaluation (tango_steps.study.evaluation) and EvalFlow, on fixtures written here and the tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tango_steps.rollout import HFEngine
from tango_steps.study.evaluation import check_request, evaluate_generator, evaluate_processbench, processbench_solution
from tango_steps.tasks import get_task
from tango_steps.tasks.benchmarks import BenchmarkError, BenchmarkProblem, ProcessSample
from tango_steps.tasks.templates import get_template

REPO = Path(__file__).resolve().parent.parent


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


@pytest.mark.slow
def test_eval_flow_joins_one_table(tmp_path, warmed):
    out, _ = warmed
    data = tmp_path / "bench"
    (data / "gsm8k").mkdir(parents=True)
    (data / "processbench").mkdir()
    probs = _arith_problems(6)
    with open(data / "gsm8k" / "test.jsonl", "w") as f:
        for p in probs:
            f.write(json.dumps({"question": p.question, "answer": f"...\n#### {p.answer}"}) + "\n")
    pb = [{"id": f"x-{i}", "problem": p.question, "steps": list(p.steps), "label": -1} for i, p in enumerate(probs)]
    (data / "processbench" / "gsm8k.json").write_text(json.dumps(pb))
    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "mf"), "USERNAME": "tango-test"}
    args = ["--generator", str(out / "generator"), "--verifier", str(out / "verifier"), "--data", str(data),
            "--benchmarks", "gsm8k,processbench/gsm8k", "--limit", "4", "--max-tokens", "96",
            "--template", "compact", "--engine", "hf"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "flows" / "eval_flow.py"), "run", *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    code = (
        "import json\nfrom metaflow import Flow, namespace\nnamespace(None)\n"
        "r = Flow('EvalFlow').latest_run\nres = r['join'].task['results'].data\n"
        "print(json.dumps(res.to_dict(orient='records')))"
    )
    q = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    rows = {r["benchmark"]: r for r in json.loads(q.stdout.strip().splitlines()[-1])}
    assert rows["gsm8k"]["problems"] == 4 and 0 <= rows["gsm8k"]["accuracy"] <= 1
    assert rows["processbench/gsm8k"]["samples"] == 4
    bad = subprocess.run(
        [sys.executable, str(REPO / "flows" / "eval_flow.py"), "run", "--benchmarks", "gsm9k", "--generator", "x"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and "known: gsm8k" in bad.stdout + bad.stderr

"""EvalFlow end to end: benchmark files in, one joined table out; a bad benchmark name fails naming it."""

from __future__ import annotations

import json

import pytest
from flowtools import REPO, Datastore, _ok

from tango_steps.tasks import get_task

EVAL_FLOW = REPO / "flows" / "eval_flow.py"


def _arith_problems(n: int) -> list:
    return get_task("arithmetic").problems(n, "heldout", seed=777)


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
    ds = Datastore(tmp_path / "mf")
    args = ["--generator", str(out / "generator"), "--verifier", str(out / "verifier"), "--data", str(data),
            "--benchmarks", "gsm8k,processbench/gsm8k", "--limit", "4", "--max-tokens", "96",
            "--template", "compact", "--engine", "hf"]  # fmt: skip
    _ok(ds.flow("run", *args, flow_file=EVAL_FLOW, timeout=600))
    rows = {r["benchmark"]: r for r in ds.query("eval_results")}
    assert rows["gsm8k"]["problems"] == 4 and 0 <= rows["gsm8k"]["accuracy"] <= 1
    assert rows["processbench/gsm8k"]["samples"] == 4
    bad = ds.flow("run", "--benchmarks", "gsm9k", "--generator", "x", flow_file=EVAL_FLOW, timeout=300)
    assert bad.returncode != 0 and "known: gsm8k" in bad.stdout + bad.stderr

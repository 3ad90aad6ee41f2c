"""EvalFlow end to end: benchmark files in, one joined table out; a bad benchmark name fails naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from flowtools import REPO

from tango_steps.tasks import get_task


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

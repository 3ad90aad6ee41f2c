"""The CI smoke version of AblationFlow (docs/method.md §8): 2 rounds, 1 seed, 2 variants, a real Metaflow run.

The full study is in docs/results.md; this checks that the variants really are what they claim on
real runs, that the branches are ordinary round runs, and that the plots can be redrawn.
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from flowtools import REPO, SMALL, Datastore, _ok

pytestmark = pytest.mark.slow

ABLATION_FLOW = REPO / "flows" / "ablation_flow.py"


@pytest.fixture(scope="module")
def study(tmp_path_factory, warmed):
    ds = Datastore(tmp_path_factory.mktemp("ablation"))
    proc = ds.flow(
        "--config", "config", str(ds.config(SMALL)),
        "run", "--rounds", "2", "--grid", "arithmetic:0", "--variants", "tango,grpo",
        flow_file=ABLATION_FLOW,
    )  # fmt: skip
    _ok(proc)
    return ds, ds.query("ablation_result"), proc.stdout + proc.stderr


def test_smoke_study_table_and_variants(study):
    _, res, log = study
    rows = {(m["variant"], m["round"]): m for m in res["metrics"]}
    assert sorted(rows) == [(v, r) for v in ("grpo", "tango") for r in (0, 1, 2)]
    # both variants start from the same warmed-up models with the same seed: identical round 0
    keys = ("generator_accuracy", "verifier_f1", "verifier_process_f1")
    assert all(rows["tango", 0][k] == rows["grpo", 0][k] for k in keys)
    # round 1 is a verifier round: tango updates its verifier; grpo's verifier is frozen, so nothing
    # changed and its greedy evaluation repeats round 0 exactly
    assert rows["tango", 1]["verifier_updates"] == 1 and rows["grpo", 1]["verifier_updates"] == 0
    assert all(rows["grpo", 1][k] == rows["grpo", 0][k] for k in keys)
    # round 2 is a generator round for both: tango mixes in step rewards (alpha > 0), grpo does not
    assert rows["tango", 2]["generator_updates"] == rows["grpo", 2]["generator_updates"] == 1
    assert rows["tango", 2]["alpha"] > 0 and rows["grpo", 2]["alpha"] == 0
    assert rows["tango", 1]["alpha"] is None  # a verifier round has no alpha (NaN in the table)
    assert "judge: skipped (algorithm.step_rewards is false" in log
    summary = {s["variant"]: s for s in res["summary"]}
    assert set(summary) == {"tango", "grpo"} and summary["grpo"]["seeds"] == 1


def test_branches_are_ordinary_round_runs(study):
    _, res, _ = study
    assert set(res["branch_runs"]) == {"arithmetic/tango/seed0", "arithmetic/grpo/seed0"}
    for name, runs in res["branch_runs"].items():
        assert len(runs) == 2 and all(r.startswith("TangoRoundFlow/") for r in runs)
        variant = name.split("/")[1]
        for k, tags in enumerate(res["tags"][name], start=1):
            assert f"tango_round:{k}" in tags
            assert any(t.startswith("tango_root:") and t.endswith(f".arithmetic.{variant}.s0") for t in tags)
        child = res["children"][name]
        assert child["round"] == 2 and child["generator_updates"] == 1
    assert res["children"]["arithmetic/grpo/seed0"]["judge/skipped"] == 1


def test_plots_are_redrawn_from_the_run_and_from_the_saved_table(study, tmp_path):
    ds, res, _ = study
    script = str(REPO / "benchmarks" / "studies" / "plot_ablation.py")
    run = subprocess.run(
        [sys.executable, script, "--run", res["run"], "--out", str(tmp_path)],
        env=ds.env, cwd=ds.root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    png = tmp_path / "arithmetic.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "| task | variant |" in run.stdout and "| arithmetic | tango |" in run.stdout
    png.unlink()
    again = subprocess.run(
        [sys.executable, script, "--csv", str(tmp_path / "ablation_metrics.csv"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert png.exists() and again.stdout.splitlines()[-2:] == run.stdout.splitlines()[-2:]


def test_paired_intervals_from_the_run_and_from_the_saved_finals(study, tmp_path):
    """benchmarks/studies/study_intervals.py: each arm's final per-problem scores from the round runs' eval tables."""
    ds, res, _ = study
    script = str(REPO / "benchmarks" / "studies" / "study_intervals.py")
    cmd = [sys.executable, script, "--run", res["run"], "--out", str(tmp_path), "--resamples", "200"]
    run = subprocess.run(cmd, env=ds.env, cwd=ds.root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    finals = pd.read_csv(tmp_path / "study_finals.csv")
    # 2 distinct generator checkpoints per branch (rounds 1 and 2), each scored on every held-out problem
    n = SMALL["evaluation"]["heldout_problems"]
    assert sorted(finals.groupby(["variant", "round"]).size().items()) == [
        (("grpo", 1), n), (("grpo", 2), n), (("tango", 1), n), (("tango", 2), n)
    ]  # fmt: skip
    rows = {(m["variant"], m["round"]): m for m in res["metrics"]}
    for (variant, rnd), g in finals.groupby(["variant", "round"]):
        assert g["correct"].mean() == pytest.approx(rows[variant, rnd]["generator_accuracy"])
    assert "| arithmetic | tango |" in run.stdout and (tmp_path / "study_arithmetic.png").exists()
    again = subprocess.run(
        [sys.executable, script, "--csv", str(tmp_path / "study_finals.csv"), "--out", str(tmp_path),
         "--resamples", "200"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # the --run call also saved the joined finals (its first line says so); the tables are the same
    wrote, _, table = run.stdout.partition("\n")
    assert wrote.startswith("wrote ") and wrote.endswith(f"study_finals.csv ({4 * n} rows)"), wrote
    assert again.returncode == 0 and again.stdout == table, again.stderr[-3000:]
    # round 0's evaluation lives in the branch's init task (its history row names it)
    init = rows["tango", 0]["run"]
    assert init.startswith(res["run"] + "/init/")
    n0 = ds.query("eval_correct_summary", init)
    assert n0 == [n, pytest.approx(rows["tango", 0]["generator_accuracy"])]


def test_bad_grid_fails_in_start_naming_it(tmp_path):
    ds = Datastore(tmp_path / "bad")
    proc = ds.flow("run", "--grid", "arithmetic:0 sudoku:1", flow_file=ABLATION_FLOW, timeout=300)
    assert proc.returncode != 0
    assert "unknown task 'sudoku'" in proc.stdout + proc.stderr
    proc = ds.flow("run", "--variants", "tango,ppo", flow_file=ABLATION_FLOW, timeout=300)
    assert proc.returncode != 0 and "unknown variant(s) ppo" in proc.stdout + proc.stderr


def test_in_process_rounds_reproduce_the_flow_branch(study, tmp_path):
    """benchmarks/studies/quick_rounds.py (the round's stage functions in one process) reproduces a branch exactly.

    The in-process runner is how a study too long for the flows' per-round processes is run on a small
    machine (docs/results.md, Study 2), so its per-problem results must be the flow's, not near them.
    """
    ds, res, _ = study
    finals = tmp_path / "tango.csv"
    cmd = [sys.executable, str(REPO / "benchmarks" / "studies" / "quick_rounds.py"), "--config", str(ds.config(SMALL)),
           "--rounds", "2", "--variant", "tango", "--finals", str(finals)]  # fmt: skip
    run = subprocess.run(cmd, env=ds.env, cwd=ds.root, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    quick = pd.read_csv(finals)
    assert sorted(quick["round"].unique()) == [0, 1, 2] and set(quick["variant"]) == {"tango"}
    flow = ds.query("tango_finals", res["run"])
    flow = pd.DataFrame(flow).sort_values(["round", "prompt_id"]).reset_index(drop=True)
    mine = quick[quick["round"].isin(flow["round"].unique())][["round", "prompt_id", "correct"]]
    pd.testing.assert_frame_equal(mine.sort_values(["round", "prompt_id"]).reset_index(drop=True), flow,
                                  check_dtype=False)  # fmt: skip
    # the round's other figures too: the verifier after its update, the rewards, alpha (3 decimals printed)
    rows = {m["round"]: m for m in res["metrics"] if m["variant"] == "tango"}
    printed = {int(line.split("|")[1]): [c.strip() for c in line.split("|")[2:-1]]
               for line in run.stdout.splitlines() if line.startswith(("| 1 |", "| 2 |"))}  # fmt: skip
    for k in (1, 2):
        cells = printed[k]
        assert cells[2] == f"{rows[k]['generator_accuracy']:.3f}" and cells[3] == f"{rows[k]['verifier_f1']:.3f}"
        assert cells[7] == f"{rows[k]['verifier_process_f1']:.3f}"  # then its chance line (cells[8])
        assert cells[9] == f"{rows[k]['mean_outcome_reward']:.3f}"
    assert printed[2][10] == f"{rows[2]['alpha']:.4f}"

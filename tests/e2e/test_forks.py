"""A 4-round TangoFlow run evaluated sparsely, a fork of it, and retention on it (real Metaflow runs).

Their own module because they share one costly module-scoped run: the README's test command's
scheduler (tests/conftest.py) keeps a module's tests on one xdist worker, so the run is built once,
and the retention test, which deletes one of its checkpoints, runs last.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from flowtools import REPO, SMALL, Datastore, _digest, _ok

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sparse_source_and_fork(tmp_path_factory, warmed):
    """A 4-round run evaluated only where ``evaluation.every: 5`` says (rounds 0 and 4), and a 1-round
    fork of it from round 2. One source serves three checks (the fork, T_g, sparse evaluation): each
    run of this size costs minutes of CI."""
    ds = Datastore(tmp_path_factory.mktemp("sparse"))
    sparse = {**SMALL, "evaluation": {**SMALL["evaluation"], "every": 5}}
    cfg = ds.config(sparse)
    _ok(ds.flow("--config", "config", str(cfg), "run", "--rounds", "4"))
    source = ds.query("final_run")
    _ok(ds.flow("--config", "config", str(cfg), "run", "--start-from", source["rounds"][1], "--rounds", "1"))
    fork = ds.query("final_run")
    rounds = ds.query("round_end_states", source["rounds"])
    return ds, source, fork, rounds


def test_fork_from_a_finished_round_continues_identically(sparse_source_and_fork):
    """Forked from round 2 and run for 1 round, the fork is the source's round 3: same weights, and it
    records where it came from."""
    ds, source, fork, rounds = sparse_source_and_fork
    assert fork["run"] != source["run"]
    forked_from = ds.query("forked_from", fork["run"])
    assert forked_from == source["rounds"][1]
    assert [m["round"] for m in fork["metrics"]] == [2, 3]
    assert _digest(fork["gen"]) == _digest(rounds[2]["gen"])
    assert _digest(fork["ver"]) == _digest(rounds[2]["ver"])


def test_a_fork_keeps_its_sources_alpha_horizon(sparse_source_and_fork):
    """Issue #13: the fork reproduces the source's round 3 alpha. Before, T_g followed the fork's own
    round count (3 rounds: 2 generator slots instead of 3), so round 3's alpha was 0.01 instead of
    0.0215 and its generator differed."""
    _, _, fork, rounds = sparse_source_and_fork
    assert rounds[2]["horizon"] == 3  # rounds 2, 3, 4 are the generator slots of the 4-round run
    assert rounds[2]["alpha"] == pytest.approx(0.1 * (1e-3 / 0.1) ** (1 / 3))  # alpha(1) with T_g = 3
    assert fork["metrics"][1]["generator/alpha"] == pytest.approx(rounds[2]["alpha"], rel=1e-9)  # a JSON round trip


def test_evaluation_every_k_rounds_skips_measurement_not_training(tmp_path, baseline, sparse_source_and_fork):
    """``evaluation.every: 5`` over 4 rounds evaluates round 0 and the last round only. Evaluation is
    measurement: the sparse run's round 2 models equal the every-round 2-round baseline's (nothing but
    alpha's horizon depends on the run's length, and round 2 is alpha's first slot, 0.1 either way), and
    nothing downstream mistakes a skipped round for a score."""
    _, expected = baseline
    ds, final, _, rounds = sparse_source_and_fork
    acc = {m["round"]: m.get("eval/generator_accuracy") for m in final["metrics"]}
    assert acc[0] is not None and acc[4] is not None and acc[1] is acc[2] is acc[3] is None, acc
    assert acc[0] == expected["metrics"][0]["eval/generator_accuracy"]
    skipped = ds.query("unevaluated_rounds", final["rounds"])
    # an unmeasured round goes from its update straight to `end`; the reward card says why
    assert skipped[0] is True
    assert skipped[1][0] == ["end", "judge", "reward", "rollout", "start", "verifier_update"], skipped[1]
    assert skipped[1][1] == ["end", "generator_update", "judge", "reward", "rollout", "start"], skipped[1]
    assert any("Not evaluated this round" in html for html in skipped[2])
    assert _digest(rounds[1]["gen"]) == _digest(expected["gen"])
    assert _digest(rounds[1]["ver"]) == _digest(expected["ver"])
    # the cross-judging diagnostic finds the last EVALUATED round and recomputes the run's own figures
    script = str(REPO / "benchmarks" / "studies" / "verifier_crossjudge.py")
    out = subprocess.run([sys.executable, script, "--run", final["run"], "--save", str(tmp_path / "x.csv")],
                         env=ds.env, cwd=ds.root, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    x = pd.read_csv(tmp_path / "x.csv").set_index(["verifier", "solutions"])["balanced_accuracy"]
    bal = {m["round"]: m["eval/verifier_balanced_accuracy"] for m in final["metrics"]}
    assert x[("v0", "s0")] == pytest.approx(bal[0]) and x[("vN", "sN")] == pytest.approx(bal[4])
    assert "the verifier's RL on the last solutions" in out.stdout


def test_retention_keeps_the_last_the_forked_and_refuses_a_fork_from_a_removed_round(sparse_source_and_fork):
    """Issue #17: ``python -m tango_steps.pipeline.retention --keep-last 1`` on the 4-round source (round 1 a verifier
    round, 2-4 generator rounds) keeps round 4 (the last), round 2 (the fork's source) and round 0, and
    removes round 3's generator checkpoint only (round 1's verifier serves rounds 2-4). The dry run
    changes nothing; afterwards a fork from round 3 stops in ``start`` saying the checkpoint was removed.
    Runs LAST of this fixture's tests: it deletes a checkpoint of the shared source run."""
    ds, source, fork, rounds = sparse_source_and_fork
    cmd = [sys.executable, "-m", "tango_steps.pipeline.retention", source["run"], "--keep-last", "1"]
    dry = subprocess.run([*cmd, "--dry-run"], env=ds.env, cwd=ds.root, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    g3 = Path(rounds[2]["gen"])
    assert f"keep round 2: forked by {fork['run']}" in dry.stdout, dry.stdout
    assert "keep round 4: the last round" in dry.stdout and "keep round 0:" in dry.stdout
    gone = [line for line in dry.stdout.splitlines() if "would remove" in line]
    assert len(gone) == 1 and g3.name in gone[0] and "(round 3 generator, 4" in gone[0], dry.stdout
    assert "round 3 can no longer be resumed or forked from" in dry.stdout
    size = json.loads((g3 / "MANIFEST.json").read_text())["bytes"]  # weights + AdamW state, ~44 MB
    assert dry.stdout.splitlines()[-1].endswith(f"{size / 1e6:,.1f} MB would be freed"), dry.stdout
    assert (g3 / "MANIFEST.json").exists()  # a dry run changes nothing
    real = subprocess.run(cmd, env=ds.env, cwd=ds.root, capture_output=True, text=True, timeout=300)
    assert real.returncode == 0 and "removed 1 checkpoint and" in real.stdout, real.stdout + real.stderr[-3000:]
    assert sorted(p.name for p in g3.iterdir()) == ["REMOVED.json"]
    for k in (0, 1, 3):  # rounds 1, 2 and 4 are whole
        assert (Path(rounds[k]["gen"]) / "MANIFEST.json").exists() and (
            Path(rounds[k]["ver"]) / "MANIFEST.json"
        ).exists()
    refused = ds.flow("--config", "config", str(ds.root / "cfg.yaml"), "run", "--start-from", source["rounds"][2],
                      "--rounds", "1")  # fmt: skip
    log = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "round 3: launching" not in log and "round 4: launching" not in log
    assert "round 3, role generator) was removed by the retention command" in log, log[-3000:]

"""Tests of the ablation grid and its summary (tango_steps.study.ablation, docs/method.md §8)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tango_steps.config import load_yaml
from tango_steps.method.schedule import plan_round
from tango_steps.study.ablation import (
    VARIANTS,
    branches,
    final_accuracy,
    merge_tables,
    paired_bootstrap,
    parse_grid,
    parse_variants,
    rounds_to_reach,
    study_table,
    summarize,
    variant_config,
)

BASE = {"task": {"name": "arithmetic", "params": {"max_ops": 2}}, "rounds": 5}


def test_variants_are_configuration_switches_of_one_schedule():
    cfgs = {v: variant_config(BASE, v, "arithmetic", 3) for v in VARIANTS}
    assert {c.seed for c in cfgs.values()} == {3}
    assert cfgs["tango"].algorithm.step_rewards and cfgs["tango"].schedule.train_verifier
    assert not cfgs["grpo"].algorithm.step_rewards and not cfgs["grpo"].schedule.train_verifier
    assert cfgs["grpo"].schedule.train_generator
    assert cfgs["frozen_verifier"].algorithm.step_rewards and not cfgs["frozen_verifier"].schedule.train_verifier
    assert not cfgs["frozen_generator"].schedule.train_generator and cfgs["frozen_generator"].schedule.train_verifier
    assert cfgs["sft"].algorithm.generator_objective == "sft" and not cfgs["sft"].schedule.train_verifier
    for v in ("oracle", "noisy_oracle"):  # exact labels as step verdicts; the verifier is out of the loop
        assert cfgs[v].algorithm.step_verdicts == v and cfgs[v].algorithm.step_rewards
        assert not cfgs[v].schedule.train_verifier and cfgs[v].schedule.train_generator
    # the same round numbers are generator rounds in every variant (same RL budget)
    for r in range(1, 12):
        slots = {plan_round(r, c.schedule.verifier_warmup_rounds, c.schedule.generator_per_verifier).slot
                 for c in cfgs.values()}  # fmt: skip
        assert len(slots) == 1
    # everything else is the base recipe's
    assert cfgs["grpo"].task.params == {"max_ops": 2} and cfgs["grpo"].rounds == 5


def test_another_task_starts_from_its_default_parameters():
    cfg = variant_config(BASE, "tango", "last_letters", 0, rounds=7)
    assert cfg.task.name == "last_letters" and cfg.task.params == {} and cfg.rounds == 7


def test_the_study_recipe_validates_for_every_branch():
    base = load_yaml("configs/ablation.yaml")
    out = branches(base, list(VARIANTS), parse_grid("arithmetic:0,1,2 last_letters:0"), None)
    assert len(out) == 4 * len(VARIANTS) and len({b["name"] for b in out}) == 4 * len(VARIANTS)
    assert {b["config"]["rounds"] for b in out} == {base["rounds"]}


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("", "empty grid"),
        ("arithmetic", "not task:seeds"),
        ("arith:0", "unknown task 'arith'"),
        ("arithmetic:x", "seed 'x' is not an integer"),
        ("arithmetic:0,0", "listed twice"),
    ],
)
def test_bad_grids_are_named(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_grid(text)


def test_grid_and_variants_parse():
    assert parse_grid("arithmetic:0,1 last_letters:2") == [("arithmetic", 0), ("arithmetic", 1), ("last_letters", 2)]
    assert parse_variants(" tango, grpo ") == ["tango", "grpo"]
    with pytest.raises(ValueError, match=r"unknown variant.*ppo.*known: tango"):
        parse_variants("tango,ppo")
    with pytest.raises(ValueError, match="twice"):
        parse_variants("grpo,grpo")


def _history(accs, f1s=None):
    f1s = f1s or [0.5] * len(accs)
    return [
        {"round": r, "generator_updates": r, "eval/generator_accuracy": a, "eval/verifier_f1": f,
         "eval/verifier_process_f1": f / 2, "reward/outcome_mean": a, "run": f"R/{r}"}
        for r, (a, f) in enumerate(zip(accs, f1s, strict=True))
    ]  # fmt: skip


def test_study_table_and_summary_by_hand():
    b = lambda v, s: {"task": "arithmetic", "variant": v, "seed": s}  # noqa: E731
    results = [
        (b("grpo", 0), _history([0.30, 0.32, 0.34, 0.36, 0.36])),
        (b("grpo", 1), _history([0.30, 0.30, 0.32, 0.34, 0.34])),
        (b("tango", 0), _history([0.30, 0.36, 0.38, 0.40, 0.42], [0.5, 0.6, 0.7, 0.8, 0.9])),
        (b("tango", 1), _history([0.30, 0.34, 0.36, 0.38, 0.40], [0.5, 0.6, 0.7, 0.8, 0.9])),
    ]
    table = study_table(results)
    assert len(table) == 20 and math.isnan(table["alpha"].iloc[0]) and table["verifier_updates"].eq(0).all()
    s = summarize(table, final_window=2).set_index("variant")
    # grpo finals: seed 0 mean(0.36, 0.36) = 0.36, seed 1 mean(0.34, 0.34) = 0.34
    assert s.loc["grpo", "final_accuracy_mean"] == pytest.approx(0.35)
    assert s.loc["grpo", "final_accuracy_std"] == pytest.approx(pd.Series([0.36, 0.34]).std())
    assert s.loc["tango", "final_accuracy_mean"] == pytest.approx((0.41 + 0.39) / 2)
    # seed-mean tango curve 0.30, 0.35, 0.37, ...: reaches grpo's final 0.35 at round 1
    assert s.loc["tango", "rounds_to_baseline_final"] == 1
    assert s.loc["tango", "generator_updates_to_baseline_final"] == 1
    assert s.loc["grpo", "rounds_to_baseline_final"] == 3  # grpo's own curve 0.30 0.31 0.33 0.35
    assert s.loc["tango", "verifier_f1_start"] == pytest.approx(0.5)
    assert s.loc["tango", "verifier_f1_end"] == pytest.approx(0.85)
    assert s.loc["tango", "process_f1_end"] == pytest.approx(0.425)
    assert s.loc["tango", "seeds"] == 2


def test_final_accuracy_averages_distinct_generator_checkpoints():
    """A verifier round re-evaluates the same generator: it must not count twice (issue #12, fix 5)."""
    # rounds 8-10 of a 3:1 schedule: round 9 is a verifier round (generator_updates unchanged)
    rows = pd.DataFrame(
        {
            "round": [6, 7, 8, 9, 10],
            "generator_updates": [4, 5, 6, 6, 7],
            "generator_accuracy": [0.1, 0.2, 0.3, 0.3, 0.6],
        }
    )
    assert final_accuracy(rows, 3) == pytest.approx((0.2 + 0.3 + 0.6) / 3)  # not (0.3 + 0.3 + 0.6) / 3
    frozen = pd.DataFrame({"round": [0, 1, 2], "generator_updates": [0, 0, 0], "generator_accuracy": [0.4] * 3})
    assert final_accuracy(frozen, 3) == pytest.approx(0.4)


def test_without_a_baseline_there_is_no_target():
    table = study_table([({"task": "t", "variant": "tango", "seed": 0}, _history([0.1, 0.2]))])
    s = summarize(table)
    assert math.isnan(s["rounds_to_baseline_final"].iloc[0]) and math.isnan(s["final_accuracy_std"].iloc[0])


def test_rounds_to_reach():
    curve = pd.Series([0.1, 0.3, 0.2, 0.5], index=[0, 1, 2, 3])
    assert rounds_to_reach(curve, 0.3) == 1
    assert rounds_to_reach(curve, 0.45) == 3
    assert rounds_to_reach(curve, 0.6) is None


def test_merge_tables_joins_runs_and_refuses_a_branch_twice():
    def table(task, variants, seed=0):
        rows = [{"task": task, "variant": v, "seed": seed, "round": r} for v in variants for r in (0, 1)]
        return pd.DataFrame(rows)

    merged = merge_tables([table("arithmetic", ["tango", "grpo"]), table("last_letters", ["tango"])])
    assert len(merged) == 6 and list(merged.index) == list(range(6))
    assert sorted(merged["task"].unique()) == ["arithmetic", "last_letters"]
    # another seed of the same task and variant is a different branch: fine
    assert len(merge_tables([table("arithmetic", ["tango"]), table("arithmetic", ["tango"], seed=1)])) == 4
    with pytest.raises(ValueError, match="arithmetic/grpo/0 is in tables 0 and 1"):
        merge_tables([table("arithmetic", ["tango", "grpo"]), table("arithmetic", ["grpo"])])


def test_study_intervals_joins_arms_run_apart_and_refuses_an_arm_twice(tmp_path, capsys):
    """benchmarks/studies/study_intervals.py --csv: arms in separate files join; one arm in two files is an error."""
    from benchmarks.studies.study_intervals import main

    def arm(variant, offset):
        rows = [
            {"task": "arithmetic", "variant": variant, "seed": 0, "round": r, "generator_updates": r,
             "run": f"{variant}/r{r}", "prompt_id": f"p{i}", "correct": float((i + offset + r) % 2)}
            for r in (0, 1) for i in range(20)
        ]  # fmt: skip
        path = tmp_path / f"{variant}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        return str(path)

    grpo, oracle = arm("grpo", 0), arm("oracle", 1)
    main(["--csv", grpo, "--csv", oracle, "--out", str(tmp_path), "--resamples", "50", "--window", "1"])
    assert "| arithmetic | oracle |" in capsys.readouterr().out
    assert (tmp_path / "study_arithmetic_curves.png").exists()
    with pytest.raises(ValueError, match="arithmetic/grpo/0 is in tables 0 and 1"):
        main(["--csv", grpo, "--csv", grpo, "--out", str(tmp_path), "--resamples", "50"])
    main(["--csv", oracle, "--out", str(tmp_path), "--resamples", "50", "--window", "1"])  # no baseline arm at all
    assert "| arithmetic | oracle |" in capsys.readouterr().out
    # ARM=FILE relabels a file's arm (two runs of one variant under different names); --save keeps the join
    joined = tmp_path / "joined.csv.gz"
    main(["--csv", grpo, "--csv", f"tango={oracle}", "--save", str(joined), "--out", str(tmp_path), "--window", "1",
          "--resamples", "50"])  # fmt: skip
    assert "| arithmetic | tango |" in capsys.readouterr().out
    assert sorted(pd.read_csv(joined)["variant"].unique()) == ["grpo", "tango"] and len(pd.read_csv(joined)) == 80


def test_paired_bootstrap():
    import numpy as np

    rng = np.random.default_rng(0)
    b = (rng.random((3, 500)) < 0.4).astype(float)
    a = b.copy()
    flip = rng.random((3, 500)) < 0.1  # arm a fixes 10% of problems b gets wrong... and breaks none
    a[flip] = 1.0
    mean, lo, hi = paired_bootstrap(a, b, resamples=2000)
    assert mean == pytest.approx((a - b).mean())
    assert 0 < lo < mean < hi  # a real paired gain: the interval excludes 0
    own = paired_bootstrap(a, resamples=500)  # one arm alone: its own mean and interval
    assert own[0] == pytest.approx(a.mean()) and own[1] < own[0] < own[2] and own == paired_bootstrap(a, 0 * a, 500)
    same, lo0, hi0 = paired_bootstrap(b, b, resamples=500)
    assert same == lo0 == hi0 == 0.0
    noise = (rng.random((3, 500)) < 0.4).astype(float)  # an unrelated arm of the same accuracy
    _, lo1, hi1 = paired_bootstrap(noise, b, resamples=2000)
    assert lo1 < 0 < hi1
    assert paired_bootstrap(a, b, resamples=500, seed=3) == paired_bootstrap(a, b, resamples=500, seed=3)
    with pytest.raises(ValueError, match="same non-empty"):
        paired_bootstrap(a, b[:, :10])


def test_paired_comparisons_pair_final_checkpoints_per_seed_and_problem():
    """Final per-problem scores average the last distinct generator checkpoints; arms pair per (seed, problem)."""
    import numpy as np

    from tango_steps.study.ablation import paired_comparisons

    rng = np.random.default_rng(1)
    scores: dict[str, pd.Series] = {}
    rows = []
    for variant in ("grpo", "oracle"):
        for seed in (0, 1):
            for rnd, updates in enumerate([0, 1, 2, 2, 3]):  # round 3 is a verifier round: same checkpoint
                run = f"R/{variant}{seed}{rnd}"
                p = 0.3 + (0.2 if variant == "oracle" else 0.0) * (updates > 0)
                scores[run] = pd.Series((rng.random(400) < p), index=[f"q{i}" for i in rng.permutation(400)])
                acc = float(scores[run].mean())
                rows.append({"task": "t", "variant": variant, "seed": seed, "round": rnd, "run": run,
                             "generator_updates": updates, "generator_accuracy": acc})  # fmt: skip
    table = pd.DataFrame(rows)
    out = paired_comparisons(table, scores.__getitem__, window=3, resamples=2000).set_index("variant")
    # the oracle's final: rounds 1, 3 (not 2: same checkpoint as 3) and 4, both seeds, every problem
    expect = {v: [pd.concat([scores[f"R/{v}{s}{r}"] for r in (1, 3, 4)], axis=1).mean(axis=1) for s in (0, 1)]
              for v in ("grpo", "oracle")}  # fmt: skip
    oracle, grpo = (pd.concat(expect[v], axis=1).mean(axis=1) for v in ("oracle", "grpo"))
    assert out.loc["oracle", "final_accuracy"] == pytest.approx(oracle.mean())
    assert out.loc["oracle", "final_accuracy"] == pytest.approx(
        np.mean([final_accuracy(table[(table.variant == "oracle") & (table.seed == s)], 3) for s in (0, 1)])
    )
    assert out.loc["oracle", "diff"] == pytest.approx((oracle - grpo.reindex(oracle.index)).mean())
    assert 0 < out.loc["oracle", "diff_low"] < out.loc["oracle", "diff"] < out.loc["oracle", "diff_high"]
    assert out.loc["oracle", "acc_low"] < out.loc["oracle", "final_accuracy"] < out.loc["oracle", "acc_high"]
    assert math.isnan(out.loc["grpo", "diff"]) and out.loc["oracle", "paired_seeds"] == 2
    other = {k: (v.rename(lambda i: i + "x") if k.startswith("R/oracle") else v) for k, v in scores.items()}
    with pytest.raises(ValueError, match="different held-out problems"):
        paired_comparisons(table, other.__getitem__, resamples=10)

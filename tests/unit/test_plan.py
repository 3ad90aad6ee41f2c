"""Issue #35: the run plan (tango_steps/plan.py) sizes every shipped recipe and refuses one that cannot fit, naming
the field, before any pod starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tango_steps import plan
from tango_steps.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = CONFIGS / "qwen2.5-7b-paper.yaml"


def _cfg(path: Path, **overrides):
    return load_config(path, overrides, check_data=False)


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_recipe_has_a_plan_and_fits(recipe):
    cfg = _cfg(CONFIGS / recipe)
    run = plan.check(cfg)
    assert sum(run.counts.values()) == cfg.rounds + 1 and run.counts["round 0 (start)"] == 1
    steps = {s.step for steps in run.rounds.values() for s in steps}
    assert "reward" in steps and ({"rollout", "sample_shard"} & steps)
    if run.on_gpus:  # the GPU recipes project hours; a CPU recipe's times are measured, not projected
        assert run.hours > 0 and run.gpu_hours > 0
        assert all(s.gpu_gib <= 0.85 * run.device.memory_gib for steps in run.rounds.values() for s in steps)


def test_the_paper_recipe_plans_what_each_step_moves():
    run = plan.check(_cfg(PAPER))
    g = run.rounds["generator round"]
    by_step = {s.step: s for s in g}
    assert "evaluate" not in by_step and "evaluate" in {s.step for s in run.rounds["generator round + evaluation"]}
    assert by_step["sample_shard"].tasks == 4 and by_step["sample_shard"].gpus == 2
    assert by_step["sample_shard"].engine_starts == 2  # the generator, then the verifier
    assert by_step["generator_update"].gpus == 8 and by_step["generator_update"].upload_gb > 0
    # 40 warm-up + 100 verifier and 300 generator rounds; evaluation every 10th round and the last 4
    assert run.counts == {"round 0 (start)": 1, "verifier round": 116, "verifier round + evaluation": 24,
                          "generator round": 277, "generator round + evaluation": 23}  # fmt: skip
    # a shard fetches the serving weights of the two models it serves (bf16: 2 bytes a parameter), nothing else
    serving = 2 * 2 * run.generator_shape.params / 1e9
    assert serving <= by_step["sample_shard"].download_gb <= 1.2 * serving


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"generator_update.strategy": "ddp"}, "generator_update: an update process needs"),  # 122 GB per GPU
        ({"resources.rollout.gpu": 1, "resources.judge.gpu": 1}, "rollout.tensor_parallel_size is 2"),
        ({"resources.generator_update.disk": 1024}, "resources.generator_update.disk"),
        ({"resources.rollout.memory": 8192}, "resources.rollout.memory"),
        ({"rollout.gpu_memory_utilization": 0.05}, "rollout.gpu_memory_utilization"),
    ],
)
def test_a_recipe_that_cannot_fit_is_refused_naming_the_field(overrides, field):
    with pytest.raises(plan.PlanError, match="cannot fit") as e:
        plan.check(_cfg(PAPER, **overrides))
    assert field in str(e.value)


def test_shards_over_this_machines_gpus_are_refused_when_run_here():
    cfg = _cfg(PAPER, round_with=[])  # a local run: every shard on this machine's GPUs
    with pytest.raises(plan.PlanError, match=r"rollout.shards x rollout.tensor_parallel_size = 8 GPUs.* has 4"):
        plan.check(cfg, visible_gpus=4)
    plan.check(cfg, visible_gpus=8)


def test_an_unknown_model_is_named_with_how_to_size_it(tmp_path):
    with pytest.raises(plan.PlanError, match=r"generator.path '/nowhere/model': cannot size .* --shape generator="):
        plan.plan_run(_cfg(PAPER, **{"generator.path": "/nowhere/model"}))


def test_the_command_prints_the_plan_and_exits_2_on_a_refusal(capsys):
    plan.main(["--config", "config", str(PAPER)])
    out = capsys.readouterr().out
    assert "## generator round (x 277)" in out and "**run:" in out and "sample_shard" in out
    with pytest.raises(SystemExit) as e:
        plan.main(["--config", str(PAPER), "--set", "generator_update.strategy=ddp"])
    assert e.value.code == 2 and "REFUSED" in capsys.readouterr().err
    with pytest.raises(
        SystemExit, match=r"plan: invalid configuration(.|\n)*generator_update\.strategy: Input should be"
    ):
        plan.main(["--config", str(PAPER), "--set", "generator_update.strategy=zero9"])


def test_start_says_it_cannot_size_a_model_it_does_not_know_and_refuses_what_cannot_fit():
    """TangoFlow's ``start`` check: a hub model the plan has no shape for is said (the run needs no shape); a recipe
    that cannot fit is refused; a CPU recipe fits without a GPU projection."""
    unknown = _cfg(PAPER, **{"generator.path": "someone/unknown-7b-model"})
    assert plan.start_check(unknown).startswith("plan: not checked (generator.path 'someone/unknown-7b-model'")
    with pytest.raises(plan.PlanError, match="generator_update: an update process needs"):
        plan.start_check(_cfg(PAPER, **{"generator_update.strategy": "ddp"}))
    assert plan.start_check(_cfg(CONFIGS / "tiny.yaml")) == "plan: fits (a CPU recipe: no GPU projection)"
    assert plan.start_check(_cfg(PAPER)).startswith("plan: fits; ~111 hours")


def test_the_command_takes_text_numbers_and_assumptions_in_set(capsys):
    """``--set`` values read as JSON where they are (numbers, booleans), else as the text written (``full`` once
    failed: it was read as JSON because it starts like ``false``)."""
    plan.main(["--config", str(PAPER), "--set", "template=full", "--set", "evaluation.every=20",
               "--set", "assume.upload_gbs=2.4", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["generator round + evaluation"] < 23  # every 20th round evaluated, not every 10th
    assert out["hours"] < plan.plan_run(_cfg(PAPER)).hours  # faster uploads

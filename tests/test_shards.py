"""Issue #15: a round's sampling split into shards (whole engine calls) joins into exactly the unsharded
table (tango_steps.stages.rollout / judge with ``shard=(k, S)``, ``join_rollouts`` / ``join_judgments``)."""

from __future__ import annotations

import pandas as pd
import pytest

from tango_steps import stages
from tango_steps.config import TangoConfig
from tango_steps.training import UpdateSettings, init_checkpoint

# 6 prompts x 2 samples, 4 samples an engine call: 3 calls of 2 prompts each, so 2 shards are uneven
CFG = TangoConfig.model_validate(
    {
        "rounds": 4,
        "schedule": {"verifier_warmup_rounds": 1, "generator_per_verifier": 3},
        "rollout": {"engine": "hf", "max_prompt_tokens": 128, "chunk_samples": 4, "hf_batch_size": 3},
        "generator_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 24},
        "verifier_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 24},
        "batch": {"generator_prompts": 6, "verifier_prompts": 6},
    }
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_model_dir):
    return init_checkpoint(str(tiny_model_dir), tmp_path_factory.mktemp("shards") / "ckpt", UpdateSettings())


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def _rates_removed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("tokens_per_s")}


@pytest.mark.parametrize("shards", [2, 3, 4])
def test_sharded_rollout_and_judge_join_into_the_unsharded_tables(ckpt, shards):
    plan = stages.round_plan(CFG, 2)  # a generator round: M samples a prompt, one verification each
    whole, whole_res = stages.rollout(CFG, plan, ckpt)
    parts = [stages.rollout(CFG, plan, ckpt, shard=(k, shards)) for k in range(shards)]
    assert sum(len(p) for p, _ in parts) == len(whole) == 12
    if shards == 4:
        assert len(parts[0][0]) == 0  # more shards than engine calls: one shard has nothing to do
    joined, res = stages.join_rollouts(parts)
    _same(joined, whole)
    assert _rates_removed(res.metrics) == _rates_removed(whole_res.metrics)
    judged, judged_res = stages.judge(CFG, plan, ckpt, whole)
    jparts = [stages.judge(CFG, plan, ckpt, whole, shard=(k, shards)) for k in range(shards)]
    jjoined, jres = stages.join_judgments(jparts)
    _same(jjoined, judged)
    assert _rates_removed(jres.metrics) == _rates_removed(judged_res.metrics)


def test_a_verifier_round_shards_its_n_verifications_per_solution(ckpt):
    plan = stages.round_plan(CFG, 1)  # a verifier round: one solution a prompt, N verifications each
    ro, _ = stages.rollout(CFG, plan, ckpt)
    whole, _ = stages.judge(CFG, plan, ckpt, ro)
    joined, _ = stages.join_judgments([stages.judge(CFG, plan, ckpt, ro, shard=(k, 2)) for k in range(2)])
    _same(joined, whole)
    assert len(whole) == 6 * 2


def test_without_a_verifier_shard_zero_holds_the_whole_judge_result(ckpt):
    grpo = CFG.model_copy(update={"algorithm": CFG.algorithm.model_copy(update={"step_rewards": False})})
    plan = stages.round_plan(grpo, 2)
    ro, _ = stages.rollout(grpo, plan, ckpt)
    parts = [stages.judge(grpo, plan, ckpt, ro, shard=(k, 2)) for k in range(2)]
    joined, res = stages.join_judgments(parts)
    assert len(joined) == 0 and res.metrics == {"judge/skipped": 1}


def test_shard_ranges_are_whole_engine_calls():
    assert [stages.shard_range(6, 2, 4, k, 2) for k in range(2)] == [range(0, 2), range(2, 6)]
    assert [stages.shard_range(6, 2, 4, k, 3) for k in range(3)] == [range(0, 2), range(2, 4), range(4, 6)]
    assert stages.shard_range(6, 2, 4, 0, 4) == range(0)
    assert stages.shard_range(5, 1, 256, 0, 1) == range(0, 5)
    with pytest.raises(ValueError, match="shard must be in"):
        stages.shard_range(6, 2, 4, 2, 2)


def test_the_in_process_runner_with_shards_runs_the_same_round(tmp_path, ckpt):
    from tango_steps.local import InProcessRun

    cfg = CFG.model_copy(update={"schedule": CFG.schedule.model_copy(update={"verifier_warmup_rounds": 0})})
    dirs = {"generator": ckpt, "verifier": ckpt}
    one = InProcessRun(cfg, dirs, tmp_path / "one").round()
    two = InProcessRun(cfg, dirs, tmp_path / "two", shards=2).round()
    assert one.plan.update_generator and len(one.judgments) == 12
    _same(two.rollouts, one.rollouts)
    _same(two.judgments, one.judgments)

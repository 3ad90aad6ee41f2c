"""Issue #15: a round's sampling split into shards (whole engine calls; a shard samples its prompts, then
judges its own solutions) joins into exactly the unsharded tables (tango_steps.round.shards.sample_shard,
join_shards)."""

from __future__ import annotations

import pandas as pd
import pytest

from tango_steps.config import TangoConfig
from tango_steps.round.judge import judge
from tango_steps.round.plan import round_plan
from tango_steps.round.sample import rollout
from tango_steps.round.sampling import shard_range
from tango_steps.round.shards import join_shards, sample_shard
from tango_steps.training.checkpoint import init_checkpoint
from tango_steps.training.settings import UpdateSettings

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
    return init_checkpoint(str(tiny_model_dir), tmp_path_factory.mktemp("shards") / "ckpt", UpdateSettings.of())


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def _rates_removed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("tokens_per_s")}


def _sharded(cfg, plan, ckpt, shards):
    parts = [sample_shard(cfg, plan, ckpt, ckpt, (k, shards), log=lambda m: None) for k in range(shards)]
    return parts, join_shards(cfg, plan, parts, log=lambda m: None)


@pytest.mark.parametrize("shards", [2, 3, 4])
def test_sharded_rollout_and_judge_join_into_the_unsharded_tables(ckpt, shards):
    plan = round_plan(CFG, 2)  # a generator round: M samples a prompt, one verification each
    whole, whole_res = rollout(CFG, plan, ckpt)
    judged, judged_res = judge(CFG, plan, ckpt, whole)
    parts, (joined, res, jjoined, jres) = _sharded(CFG, plan, ckpt, shards)
    assert sum(len(p.rollouts) for p in parts) == len(whole) == 12
    if shards == 4:
        assert len(parts[0].rollouts) == len(parts[0].judgments) == 0  # more shards than calls: one idles
    _same(joined, whole)
    assert _rates_removed(res.metrics) == _rates_removed(whole_res.metrics)
    _same(jjoined, judged)
    assert _rates_removed(jres.metrics) == _rates_removed(judged_res.metrics)
    starts = {2: [0, 4], 3: [0, 4, 8], 4: [0, 4, 8]}[shards]  # 3 calls of 2 prompts x 2 samples
    assert [p.stats["first_solution"] for p in parts if p.stats["solutions"]] == starts


def test_a_verifier_round_shards_its_n_verifications_per_solution(ckpt):
    plan = round_plan(CFG, 1)  # a verifier round: one solution a prompt, N verifications each
    ro, _ = rollout(CFG, plan, ckpt)
    whole, _ = judge(CFG, plan, ckpt, ro)
    parts, (_, _, joined, _) = _sharded(CFG, plan, ckpt, 2)
    _same(joined, whole)
    assert len(whole) == 6 * 2 and [p.stats["verifications"] for p in parts] == [8, 4]  # calls of 4 and 2 prompts


@pytest.mark.parametrize("arm", ["grpo", "oracle"])
def test_without_a_verifier_engine_the_join_judges_the_whole_table(ckpt, arm):
    algorithm = {"step_rewards": False} if arm == "grpo" else {"step_verdicts": "noisy_oracle", "oracle_flip_prob": 0.3}
    cfg = CFG.model_copy(update={"algorithm": CFG.algorithm.model_copy(update=algorithm)})
    plan = round_plan(cfg, 2)
    ro, _ = rollout(cfg, plan, ckpt)
    whole, whole_res = judge(cfg, plan, None, ro)
    parts, (_, _, joined, res) = _sharded(cfg, plan, ckpt, 2)
    assert all(p.judgments is None for p in parts)  # no shard loaded a verifier
    _same(joined, whole)  # the noisy oracle's flips are drawn over the whole table, in order
    assert res.metrics == whole_res.metrics
    assert len(joined) == (0 if arm == "grpo" else 12)
    with pytest.raises(ValueError, match="only a verifier's judging is sharded"):
        judge(cfg, plan, None, ro.iloc[4:], first=4)


def test_a_missing_shard_is_refused(ckpt):
    plan = round_plan(CFG, 2)
    parts = [sample_shard(CFG, plan, ckpt, ckpt, (k, 3), log=lambda m: None) for k in (0, 2)]
    with pytest.raises(ValueError, match="one is missing"):
        join_shards(CFG, plan, parts)


def test_shard_ranges_are_whole_engine_calls():
    assert [shard_range(6, 2, 4, k, 2) for k in range(2)] == [range(0, 2), range(2, 6)]
    assert [shard_range(6, 2, 4, k, 3) for k in range(3)] == [range(0, 2), range(2, 4), range(4, 6)]
    assert shard_range(6, 2, 4, 0, 4) == range(0)
    assert shard_range(5, 1, 256, 0, 1) == range(0, 5)
    with pytest.raises(ValueError, match="shard must be in"):
        shard_range(6, 2, 4, 2, 2)


def test_the_in_process_runner_with_shards_runs_the_same_round(tmp_path, ckpt):
    from tango_steps.round.in_process import InProcessRun

    cfg = CFG.model_copy(update={"schedule": CFG.schedule.model_copy(update={"verifier_warmup_rounds": 0})})
    two_shards = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"shards": 2})})
    dirs = {"generator": ckpt, "verifier": ckpt}
    one = InProcessRun(cfg, dirs, tmp_path / "one").round()
    two = InProcessRun(two_shards, dirs, tmp_path / "two").round()
    assert one.plan.update_generator and len(one.judgments) == 12
    _same(two.rollouts, one.rollouts)
    _same(two.judgments, one.judgments)


def test_shards_need_chunks_that_hold_whole_groups():
    from tango_steps.config import ConfigError, load_config

    with pytest.raises(
        ConfigError,
        match=r"rollout.shards 2 needs rollout.chunk_samples \(6\) to be a multiple of "
        r"verifier_sampling.n \(4\)",
    ):
        load_config(
            overrides={
                "rollout.shards": 2,
                "rollout.chunk_samples": 6,
                "generator_sampling.n": 2,
                "verifier_sampling.n": 4,
            }
        )
    load_config(overrides={"rollout.shards": 1, "rollout.chunk_samples": 6, "verifier_sampling.n": 4})

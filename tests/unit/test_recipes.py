"""Every recipe in configs/ loads and validates; the paper recipe carries docs/method.md's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tango_steps.config import ConfigError, load_config, load_yaml
from tango_steps.training.settings import update_settings

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.fixture
def gsm8k_file(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text("\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) for i in range(50)))
    return str(f)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_validates(path, gsm8k_file):
    data = load_yaml(path)
    overrides = {}
    if data.get("task", {}).get("name") == "dataset":  # recipes name a data file the user provides
        overrides = {"task.params.path": gsm8k_file, "task.params.benchmark": "gsm8k"}
    cfg = load_config(path, overrides)
    assert cfg.rounds >= 1
    update_settings(cfg.generator_update)  # maps onto the training settings without error
    update_settings(cfg.verifier_update)
    if cfg.task.name == "dataset":
        from tango_steps.tasks import get_task

        task = get_task(cfg.task.name, **cfg.task.params)
        assert len(task.problems(5, "train")) == 5
        assert task.check(task.problems(1, "train")[0], "no answer").step_labels is None


def test_missing_data_file_names_the_field(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("task: {name: dataset, params: {benchmark: gsm8k, path: /nonexistent/train.jsonl}}\n")
    with pytest.raises(ConfigError, match=r"task: .*params.path: data file '/nonexistent/train.jsonl' does not exist"):
        load_config(f)


def test_paper_recipe_has_the_paper_numbers(gsm8k_file):
    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "qwen2.5-7b-paper.yaml",
        {"task.params.path": gsm8k_file, "task.params.benchmark": "gsm8k"},
    )
    assert (cfg.batch.generator_prompts, cfg.batch.verifier_prompts) == (256, 256)
    assert (cfg.generator_sampling.n, cfg.verifier_sampling.n) == (5, 5)
    assert (cfg.generator_sampling.max_tokens, cfg.verifier_sampling.max_tokens) == (2048, 4096)
    assert (cfg.schedule.verifier_warmup_rounds, cfg.schedule.generator_per_verifier) == (40, 3)
    for u in (cfg.generator_update, cfg.verifier_update):
        assert (u.learning_rate, u.kl_coef, u.entropy_coef, u.clip_eps, u.grad_clip) == (1e-6, 0.001, 0.001, 0.2, 1.0)
    a = cfg.algorithm
    assert (a.gamma, a.alpha0, a.alpha_min, a.alpha_schedule, a.estimator) == (0.8, 0.1, 0.001, "exp", "grpo")
    assert cfg.rounds == 440 and cfg.resources["rollout"].gpu >= 1


@pytest.mark.parametrize("name", ["qwen2.5-7b-paper.yaml", "qwen2.5-1.5b-1gpu.yaml"])
def test_the_gpu_recipes_size_disk_and_shared_memory_from_the_plan(name):
    """Issue #35, defect 3: each step's disk holds what the run plan (tango_steps/plan.py) says it holds, with at most
    35% + 10 GB to spare; every step on more than one GPU has 1 GiB of /dev/shm per GPU, and every engine's step
    more than the runtime's 64 MiB (vLLM's engine core is a process of its own)."""
    from tango_steps import plan

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name, check_data=False)
    run = plan.check(cfg)
    need: dict[str, float] = {}
    for steps in run.rounds.values():
        for s in steps:
            if s.disk_request_gib:
                need[s.step] = max(need.get(s.step, 0.0), s.disk_gib)
    assert {"start (round 0)", "evaluate"} <= set(need) and len(need) >= 4, need
    for step, gib in need.items():
        request = max(x.disk_request_gib for steps in run.rounds.values() for x in steps if x.step == step)
        assert gib <= request <= 1.35 * gib + 10e9 / 2**30, (step, gib, request)
    for step in ("rollout", "judge", "evaluate", "generator_update", "verifier_update", "round0"):
        res = cfg.step_resources(step)
        assert res.gpu <= 1 or (res.shared_memory or 0) >= 1024 * res.gpu, (step, res)
        if step in ("rollout", "judge", "evaluate", "round0"):
            assert (res.shared_memory or 0) >= 1024, (step, res)

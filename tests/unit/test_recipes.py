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

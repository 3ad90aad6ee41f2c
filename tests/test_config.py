"""Configuration validation: errors name the field (tango_steps.config)."""

from __future__ import annotations

import pytest

from tango_steps.config import ConfigError, RolloutConfig, TaskConfig, load_yaml, parse_overrides, validate


def test_defaults_and_overrides():
    cfg = validate(RolloutConfig, {"engine": "hf", "max_prompt_tokens": 64})
    assert cfg.engine == "hf" and cfg.max_prompt_tokens == 64 and cfg.on_long_prompt == "truncate"
    assert validate(TaskConfig, {}).name == "arithmetic"


@pytest.mark.parametrize(
    ("data", "msg"),
    [
        ({"engine": "vlm"}, r"engine: unknown rollout engine 'vlm'; known: auto, hf, vllm"),
        ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization: Input should be less than or equal to 1"),
        ({"on_long_prompt": "drop"}, r"on_long_prompt: Input should be 'truncate' or 'reject'"),
        ({"max_prompt_tokens": "many"}, r"max_prompt_tokens: Input should be a valid integer"),
        ({"enginee": "hf"}, r"enginee: Extra inputs are not permitted"),
    ],
)
def test_errors_name_the_field(data, msg):
    with pytest.raises(ConfigError, match=msg):
        validate(RolloutConfig, data, source="recipe.yaml")


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}


def test_whole_recipe_errors_name_each_field(tmp_path):
    from tango_steps.config import load_config

    (tmp_path / "r.yaml").write_text(
        "rounds: 0\nbatch: {generator_prompts: -4}\ngenerator_sampling: {top_p: 1.5}\n"
        "algorithm: {alpha0: 0.01, alpha_min: 0.1}\nrolout: {}\ntask: {name: arithmetic, params: {max_ops: 9}}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "r.yaml")
    msg = str(e.value)
    for fragment in [
        "r.yaml",
        "rounds: Input should be greater than or equal to 1",
        "batch.generator_prompts: Input should be greater than or equal to 1",
        "generator_sampling.top_p: Input should be less than or equal to 1",
        "algorithm: alpha_min (0.1) must not exceed alpha0 (0.01)",
        "rolout: Extra inputs are not permitted",
        "task: need 1 <= min_ops <= max_ops <= 6",
    ]:
        assert fragment in msg, (fragment, msg)


def test_overrides_with_dotted_keys():
    from tango_steps.config import load_config
    from tango_steps.training.update import update_settings

    cfg = load_config(overrides={"rounds": 3, "generator_update.lora": {"r": 4}, "algorithm.estimator": "rloo"})
    assert cfg.rounds == 3 and cfg.algorithm.estimator == "rloo"
    s = update_settings(cfg.generator_update, temperature=0.7, seed=5)
    assert s.lora.r == 4 and s.temperature == 0.7 and s.seed == 5
    with pytest.raises(ConfigError, match="'rounds' is not a section"):
        load_config(overrides={"rounds": 3, "rounds.x": 1})


def test_command_line_overrides_are_yaml_values_and_name_a_bad_pair():
    got = parse_overrides(["generator_update.learning_rate=1.0e-4", "schedule.train_verifier=false", "task.name=x"])
    assert got == {"generator_update.learning_rate": 1e-4, "schedule.train_verifier": False, "task.name": "x"}
    with pytest.raises(ConfigError, match="'seed' is not KEY=VALUE"):
        parse_overrides(["seed"])


def test_runtime_settings_take_their_defaults_from_the_schema():
    """Issue #13: every default lives once, in tango_steps/config.py; settings objects carry no copy."""
    import dataclasses

    from tango_steps.config import AlgorithmConfig, SamplingConfig, UpdateConfig
    from tango_steps.method.advantages import VerifierReweighter
    from tango_steps.rollout import SamplingSettings
    from tango_steps.training.update import UpdateSettings

    for settings, section in ((UpdateSettings, UpdateConfig), (SamplingSettings, SamplingConfig)):
        shared = [f for f in dataclasses.fields(settings) if f.name in section.model_fields]
        assert len(shared) >= 4
        for f in shared:
            assert f.default == section.model_fields[f.name].default, (settings.__name__, f.name)
    rw = VerifierReweighter()
    assert (rw.decay, rw.power) == (AlgorithmConfig().reweight_decay, AlgorithmConfig().reweight_power)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithm.estimator": "ppo"}, "algorithm.estimator: unknown advantage estimator 'ppo'; known: grpo, "
         "reinforce_pp, rloo"),
        ({"rollout.engine": "vlm"}, "rollout.engine: unknown rollout engine 'vlm'; known: auto, hf, vllm"),
        ({"task.name": "sudoku"}, "task: unknown task 'sudoku'; known: arithmetic, dataset, last_letters"),
        ({"template": "chatml"}, "template: unknown prompt template 'chatml'; known: compact, full"),
    ],
)  # fmt: skip
def test_names_are_checked_against_the_registries_with_one_error(overrides, message):
    from tango_steps.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert message in str(e.value)


def test_the_estimator_names_are_the_registered_estimators():
    from tango_steps.config import ESTIMATORS
    from tango_steps.method.advantages import generator_estimator_names

    assert sorted(ESTIMATORS) == generator_estimator_names()

"""Configuration validation: errors name the field (tango_steps.config)."""

from __future__ import annotations

import pytest

from tango_steps.config import ConfigError, RolloutConfig, TaskConfig, load_yaml, validate


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

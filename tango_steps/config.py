"""Tango's configuration: one validated schema, YAML recipes in ``configs/`` only override it.

Defaults live here, once, with one ``description`` per field (meaning, paper symbol, source) as in
TRL's configs; a recipe that names an unknown field or a bad value fails on load with the field's
dotted path, e.g. ``rollout.engine: unknown rollout engine 'vlm'; known: auto, hf, vllm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tango_steps.rollout import ENGINES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Section):
    """The embedded task (TANGO.md §8) or a dataset of prompts."""

    name: str = Field("arithmetic", description="embedded task: arithmetic (default) or last_letters")
    params: dict[str, Any] = Field(default_factory=dict, description="task parameters, e.g. {max_ops: 3}")


class ModelConfig(_Section):
    """Where a model comes from (TANGO.md §7)."""

    path: str = Field(
        "tiny",
        description="'tiny' (built and warmed up offline from the task), a local directory, "
        "a hub name, or a builtin ('smollm2-135m')",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="bf16 on GPU, fp32 on CPU when auto")


class RolloutConfig(_Section):
    """The rollout engine (TANGO.md §3)."""

    engine: str = Field("auto", description="auto (vLLM when installed and a GPU is present, else hf), hf or vllm")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="engine dtype; fp32 matches HF on CPU")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM: fraction of GPU memory it may take")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs per engine")
    enforce_eager: bool = Field(True, description="vLLM: skip CUDA-graph/compile capture (saves 41 s on CPU)")
    max_model_len: int = Field(1024, ge=16, description="vLLM: prompt + completion token limit")
    hf_batch_size: int = Field(64, ge=1, description="HF: sequences per generate call")
    max_prompt_tokens: int = Field(256, ge=1, description="longer prompts are truncated or rejected")
    on_long_prompt: Literal["truncate", "reject"] = Field("truncate", description="what to do with long prompts")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        if v not in ENGINES:
            raise ValueError(f"unknown rollout engine '{v}'; known: {', '.join(ENGINES)}")
        return v


def _format_error(e: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


class ConfigError(ValueError):
    """A configuration that failed validation (TANGO.md §3: settings are configuration); names each bad field."""


def validate(schema: type[BaseModel], data: dict[str, Any], source: str = "configuration") -> BaseModel:
    """Validate a dict against a schema; errors name the field path (TANGO.md §3 settings are configuration)."""
    try:
        return schema.model_validate(data or {})
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict (TANGO.md §3); a missing file or a non-mapping top level is a clear error."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping at the top level, got {type(data).__name__}")
    return data

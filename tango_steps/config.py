"""Tango's configuration: one validated schema, YAML recipes in ``configs/`` only override it.

Defaults live here, once, with one ``description`` per field (meaning, paper symbol, source) as in
TRL's configs; a recipe that names an unknown field or a bad value fails on load with the field's
dotted path, e.g. ``rollout.engine: unknown rollout engine 'vlm'; known: auto, hf, vllm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

# Rollout engine names (docs/method.md §3). Defined here, not in tango_steps.rollout, so that validating a
# configuration never imports torch (every pipeline step validates its configuration first).
# Each engine's class as "module:Class", imported only when an engine is built: adding an engine is
# its module plus one line here.
ENGINES = {
    "auto": "",  # vLLM when installed and a GPU is present, else hf (tango_steps.rollout.resolve_engine)
    "hf": "tango_steps.rollout.hf:HFEngine",
    "vllm": "tango_steps.rollout.vllm_engine:VLLMEngine",
}
# Advantage estimator names (docs/method.md §4), for the same reason: tango_steps.method.advantages registers one
# implementation under each of these names and refuses to import if the two ever differ.
ESTIMATORS = ("grpo", "reinforce_pp", "rloo")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Section):
    """The embedded task (docs/method.md §8) or a dataset of prompts."""

    name: str = Field("arithmetic", description="embedded task: arithmetic (default) or last_letters")
    params: dict[str, Any] = Field(default_factory=dict, description="task parameters, e.g. {max_ops: 3}")


class ModelConfig(_Section):
    """Where a model comes from (docs/method.md §7)."""

    path: str = Field(
        "tiny",
        description="'tiny' (built and warmed up offline from the task), a local directory, "
        "a hub name, or a builtin ('smollm2-135m')",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="bf16 on GPU, fp32 on CPU when auto")
    # self_check since issue #12: with it the default's verifier kept its balanced accuracy and format
    # over 20 rounds on 3 seeds, where outcome's declined (docs/results.md, "The default's verifier").
    warmup: Literal["outcome", "self_check", "self_check_and"] = Field(
        "self_check",
        description="tiny verifier only: how it learns the output format (outcome: from scratch, step verdicts "
        "derived from the outcome; self_check: initialised from the generator, step verdicts from the "
        "generator redoing each step; self_check_and: the same, its final target the AND of its step targets, "
        "for final_from_steps). See tango_steps.training.warmup",
    )
    final_from_steps: bool = Field(
        False,
        description="verifier only: its final verdict is the AND of its step verdicts (wrong iff some step is "
        "flagged; unusable step verdicts: no verdict), not the one it writes, so the outcome reward trains the step "
        "verdicts. A declared deviation from the paper (issue #36); the warm-up then trains that rule too",
    )
    prompt_format: Literal["auto", "chat", "raw"] = Field(
        "auto",
        description="auto: the prompt inside the tokenizer's chat template (a user turn, then the assistant's "
        "turn) when the tokenizer has one, else the prompt as is; chat: require a template; raw: never. The same "
        "formatted token ids are sampled from and trained on",
    )


class RolloutConfig(_Section):
    """The rollout engine (docs/method.md §3)."""

    engine: str = Field("auto", description="auto (vLLM when installed and a GPU is present, else hf), hf or vllm")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="engine dtype; fp32 matches HF on CPU")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM: fraction of GPU memory it may take")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs per engine")
    enforce_eager: bool = Field(True, description="vLLM: skip CUDA-graph/compile capture (saves 41 s on CPU)")
    max_model_len: int = Field(1024, ge=16, description="vLLM: prompt + completion token limit")
    hf_batch_size: int = Field(64, ge=1, description="HF: sequences per generate call")
    chunk_samples: int = Field(
        256,
        ge=1,
        description="samples per engine call; each call is seeded by its first prompt's index, so a "
        "shard of whole calls samples exactly what the unsharded stage does",
    )
    shards: int = Field(
        1,
        ge=1,
        description="split each round's sampling into this many shards, a Metaflow foreach task each (one "
        "device each on a cluster): a shard samples its prompts, then judges its own solutions; joined in "
        "prompt order, the tables equal the unsharded ones. 1: no foreach (docs/scaling.md)",
    )
    max_prompt_tokens: int = Field(256, ge=1, description="longer prompts are truncated or rejected")
    on_long_prompt: Literal["truncate", "reject"] = Field("truncate", description="what to do with long prompts")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        from tango_steps.registry import check_name

        return check_name(v, ENGINES, "rollout engine")


def schema_default(section: type[BaseModel], name: str) -> Any:
    """The default of ``section.name``: runtime settings objects take their defaults from here, never a copy."""
    return section.model_fields[name].get_default(call_default_factory=True)


def _format_error(e: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


class ConfigError(ValueError):
    """A configuration that failed validation; its message names each bad field."""


def validate(
    schema: type[BaseModel], data: dict[str, Any], source: str = "configuration", check_data: bool = True
) -> BaseModel:
    """Validate a dict against a schema; errors name the field path. ``check_data`` False: the task's data files are
    not opened (the run plan sizes a recipe on a machine that cannot read its bucket)."""
    try:
        return schema.model_validate(data or {}, context={"check_data": check_data})
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict; a missing file or a non-mapping top level is a clear error."""
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


# ----------------------------------------------------------------------------------------------
# The whole recipe (docs/method.md §3-§7). Groundwork for the pipeline (issue #4): every field here has
# one default, and configs/*.yaml override only what differs.
# ----------------------------------------------------------------------------------------------


class SamplingConfig(_Section):
    """How one model samples (docs/method.md §3)."""

    n: int = Field(1, ge=1, description="samples per prompt: M (generator, paper 5) or N (verifier, paper 5)")
    temperature: float = Field(1.0, ge=0, description="sampling temperature (paper: 1.0); 0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus mass (paper: 1.0)")
    max_tokens: int = Field(256, ge=1, description="new-token limit (paper: 2048 generator, 4096 verifier)")


class BatchConfig(_Section):
    """Prompts per round (docs/method.md §3: 256 prompts per global step)."""

    generator_prompts: int = Field(256, ge=1, description="prompts per generator round (x M samples)")
    verifier_prompts: int = Field(256, ge=1, description="solutions per verifier round (x N verifications)")


class ScheduleConfig(_Section):
    """Which model each round updates (docs/method.md §3)."""

    verifier_warmup_rounds: int = Field(40, ge=0, description="rounds updating only the verifier first (paper: 40)")
    generator_per_verifier: int = Field(
        3, ge=0, description="generator rounds per verifier round after warm-up (paper: 3)"
    )
    train_generator: bool = Field(True, description="False freezes the generator (ablation frozen_generator)")
    train_verifier: bool = Field(True, description="False freezes the verifier (ablation frozen_verifier)")


class AlgorithmConfig(_Section):
    """Rewards and advantages (docs/method.md §4-§5)."""

    estimator: str = Field("grpo", description="advantage estimator, both parts: " + ", ".join(ESTIMATORS))
    alpha0: float = Field(
        0.1, ge=0, le=1, description="alpha_0, step-advantage weight at the start (0.5 for REINFORCE++)"
    )
    alpha_min: float = Field(1e-3, ge=0, le=1, description="alpha_min, the floor reached after T_g generator updates")
    alpha_schedule: Literal["exp", "constant", "linear", "cosine"] = Field(
        "exp", description="alpha decay (paper: exp)"
    )
    alpha_horizon: int | None = Field(
        None,
        ge=1,
        description="T_g, the generator updates over which alpha decays (docs/method.md §4); null: the run's own, "
        "fixed at its start (a fork keeps its source's)",
    )
    gamma: float = Field(0.8, ge=0, description="gamma, weight of the verifier format score in r_v (docs/method.md §5)")
    rloo_step_scale: float = Field(1.0, gt=0, description="factor on the RLOO step part (released code: 10)")
    reweight_decay: float = Field(
        0.8, ge=0, lt=1, description="EMA decay of the verifier's class counts (docs/method.md §5)"
    )
    reweight_power: float = Field(
        0.5,
        ge=0,
        description="verifier class weight = EMA count ^ -power (docs/method.md §5: 0.5, 1/sqrt; 1.0 = inverse "
        "frequency)",
    )
    step_rewards: bool = Field(True, description="False: outcome reward only, no verifier in the loop (ablation grpo)")
    step_verdicts: Literal["verifier", "oracle", "noisy_oracle"] = Field(
        "verifier",
        description="source of the generator's step verdicts: the verifier (Tango), or the task's exact step "
        "labels (oracle: the ceiling of what a verifier can add; noisy_oracle: each label flipped with "
        "probability oracle_flip_prob). Oracles need a task with step labels",
    )
    oracle_flip_prob: float = Field(0.25, ge=0, le=1, description="noisy_oracle: chance of flipping each step label")
    generator_objective: Literal["rl", "sft"] = Field(
        "rl",
        description="rl (the method) or sft: each generator update continues SFT on the round's gold solutions "
        "(the study's equal-compute floor; set generator_update.kl_coef and entropy_coef to 0)",
    )
    sft_sequences: int = Field(256, ge=1, description="sft objective: gold solutions per generator round")

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        from tango_steps.registry import check_name

        return check_name(v, ESTIMATORS, "advantage estimator")

    @model_validator(mode="after")
    def _alpha_range(self) -> AlgorithmConfig:
        if self.alpha_min > self.alpha0:
            raise ValueError(f"alpha_min ({self.alpha_min}) must not exceed alpha0 ({self.alpha0})")
        if self.alpha_schedule == "exp" and self.alpha_min <= 0 < self.alpha0:
            raise ValueError("the exp alpha schedule needs alpha_min > 0 (k = ln(alpha0 / alpha_min) / T_g)")
        return self


class LoraConfig(_Section):
    """LoRA adapters (peft) instead of full fine-tuning (docs/method.md §6 on small GPUs)."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator")
    dropout: float = Field(0.0, ge=0, lt=1, description="adapter dropout")
    target_modules: str | list[str] = Field("all-linear", description="module names, or all-linear")


class UpdateConfig(_Section):
    """One model's RL update (docs/method.md §6)."""

    learning_rate: float = Field(1e-6, gt=0, description="AdamW learning rate, constant (paper: 1e-6 at 7B)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="max gradient norm (paper: 1.0)")
    optimizer_steps: int = Field(1, ge=1, description="optimizer steps per update (paper: 1, fully on-policy)")
    micro_batch_size: int = Field(4, ge=1, description="sequences per forward/backward (paper: 4)")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range epsilon (paper: 0.2)")
    kl_coef: float = Field(0.001, ge=0, description="beta of the k3 KL to the reference (paper: 0.001)")
    entropy_coef: float = Field(0.001, ge=0, description="entropy bonus (paper: 0.001; 0 for REINFORCE++)")
    logprob_chunk_size: int = Field(2048, ge=1, description="tokens per chunk of the log-prob computation")
    logprob_backend: Literal["chunked", "liger"] = Field(
        "chunked",
        description="token log-probs: chunked (lm_head + log-softmax per checkpointed chunk) or liger "
        "(liger-kernel's fused linear cross-entropy on CUDA, the chunked path where it cannot run; needs "
        "entropy_coef 0, since it never forms the logits the entropy needs)",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="bf16 on GPU, fp32 on CPU when auto")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (saves memory)")
    processes: int = Field(
        1, ge=1, description="processes the update runs on (torchrun inside the step; per-process micro_batch_size)"
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with processes > 1: ddp (a replica each) or fsdp (weights, grads, AdamW state sharded)"
    )
    nodes: int = Field(
        1,
        ge=1,
        description="machines of the update: > 1 runs it as Metaflow @parallel nodes of `processes` processes "
        "each, one torch.distributed group (resources.update_nodes per node; docs/scaling.md)",
    )
    lora: LoraConfig | None = Field(None, description="LoRA settings; null = full fine-tuning")

    @model_validator(mode="after")
    def _liger_has_no_entropy(self) -> UpdateConfig:
        if self.logprob_backend == "liger" and self.entropy_coef:
            raise ValueError(
                f"logprob_backend 'liger' needs entropy_coef 0 (got {self.entropy_coef}): the fused kernel "
                "returns log-probs only, and the entropy bonus needs every position's full logits"
            )
        return self


class EvaluationConfig(_Section):
    """Held-out evaluation each round (docs/method.md §7: greedy pass@1)."""

    heldout_problems: int = Field(
        500, ge=1, description="held-out problems, the same set for every seed (500: ~2.2-point standard error)"
    )
    max_tokens: int = Field(256, ge=1, description="generation limit while evaluating")
    every: int = Field(
        1, ge=1, description="evaluate every k-th round and the last (round 0 always); skipping changes no model"
    )
    last: int = Field(
        1,
        ge=1,
        description="also evaluate the run's last N rounds (a 'final' over the last 3 distinct generator "
        "checkpoints needs them measured: 4 under the 3:1 schedule)",
    )
    collapse_majority: float = Field(
        0.95, gt=0.5, le=1, description="alarm when this share of held-out verdicts or more is one class"
    )
    collapse_min_format: float = Field(
        0.5, ge=0, le=1, description="alarm when the verifier's held-out format rate falls below this"
    )
    stop_on_collapse: bool = Field(False, description="end the run after the first round that raises the alarm")


class StepResources(_Section):
    """Metaflow ``@resources`` of one step, applied with --with kubernetes / batch (docs/method.md §7 hardware).

    Every field is passed to ``@resources``, which takes all five (Metaflow 2.19: ``disk`` applies on
    Kubernetes only, AWS Batch skips it; ``shared_memory`` on both; a local run ignores the decorator).
    The defaults are Metaflow's own, so a recipe that sets nothing gets the pods Metaflow would give;
    the GPU recipes size ``disk`` and ``shared_memory`` per step from what the step downloads, writes
    and runs (the computation is in configs/qwen2.5-7b-paper.yaml and configs/qwen2.5-1.5b-1gpu.yaml).
    """

    cpu: int = Field(1, ge=1, description="CPU cores")
    memory: int = Field(4096, ge=256, description="memory in MB")
    gpu: int = Field(0, ge=0, description="GPUs")
    disk: int = Field(
        10240,
        ge=1,
        description="local disk in MB (10^6 bytes; the pod's ephemeral-storage request): it must hold every model "
        "the step downloads into $TANGO_CACHE (a checkpoint twice while it downloads: Metaflow's temporary copy, "
        "then the cache's), what it writes before uploading, and the engine's caches. Kubernetes only (AWS Batch "
        "skips it: size the compute environment's volume); 10240 is Metaflow's Kubernetes default",
    )
    shared_memory: int | None = Field(
        None,
        ge=1,
        description="size of /dev/shm in MiB (a memory-backed volume, so it counts in `memory`): NCCL between the "
        "step's GPU processes and vLLM's tensor-parallel workers use it. None: the container runtime's 64 MiB "
        "(or the deployment's METAFLOW_KUBERNETES_SHARED_MEMORY). Kubernetes and AWS Batch",
    )

    @model_validator(mode="after")
    def _shared_memory_within_memory(self) -> StepResources:
        # /dev/shm is tmpfs in the pod's memory: one at least as large as `memory` could never be filled
        if self.shared_memory is not None and self.shared_memory * 2**20 >= self.memory * 10**6:
            raise ValueError(
                f"shared_memory ({self.shared_memory} MiB) must be below memory ({self.memory} MB): "
                "/dev/shm is held in the step's memory"
            )
        return self


ROUND_STEPS = (
    "start", "rollout", "judge", "reward", "verifier_update", "generator_update", "update_nodes", "evaluate", "end",
)  # fmt: skip
# TangoFlow's own steps that take `resources`, each with the round step whose entry it takes when the recipe gives
# it none. round0 is TangoFlow's `start`: round 0's initial checkpoints, then its evaluation of both models, the
# evaluate step's work on the same models (pipeline.driver.begin).
RUN_STEPS = {"round0": "evaluate"}
RESOURCE_STEPS = (*ROUND_STEPS, *RUN_STEPS)


def step_resources_entry(resources: dict[str, Any], step: str) -> Any:
    """The ``resources`` entry step ``step`` runs with: its own, else (a TangoFlow step of ``RUN_STEPS``) the
    entry of the round step it defaults to, else None. One rule for the validated recipe
    (:meth:`TangoConfig.step_resources`) and for the flows' ``@resources`` (:func:`parse_recipe`)."""
    entry = resources.get(step)
    if entry is None and step in RUN_STEPS:
        entry = resources.get(RUN_STEPS[step])
    return entry


class TangoConfig(_Section):
    """A whole Tango recipe (docs/method.md §3-§7). Load with :func:`load_config`."""

    seed: int = Field(0, description="seeds every random choice of the run")
    rounds: int = Field(20, ge=1, description="rounds (global steps) to run")
    task: TaskConfig = Field(default_factory=TaskConfig)
    template: str = Field("compact", description="prompt template name: full (7B base models) or compact")
    generator: ModelConfig = Field(default_factory=ModelConfig)
    verifier: ModelConfig = Field(default_factory=ModelConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    generator_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n=5, max_tokens=2048))
    verifier_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n=5, max_tokens=4096))
    batch: BatchConfig = Field(default_factory=BatchConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    generator_update: UpdateConfig = Field(default_factory=UpdateConfig)
    verifier_update: UpdateConfig = Field(default_factory=UpdateConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    resources: dict[str, StepResources] = Field(
        default_factory=dict,
        description="per-step @resources by step name: the round steps, and round0 (TangoFlow's start: round 0's "
        "checkpoints and evaluation; without an entry it takes evaluate's)",
    )
    round_with: list[str] = Field(
        default_factory=list,
        description="Metaflow --with decorators of every round run, e.g. [kubernetes] or [batch] (S3 datastore)",
    )

    @field_validator("resources")
    @classmethod
    def _known_steps(cls, v: dict[str, StepResources]) -> dict[str, StepResources]:
        unknown = sorted(set(v) - set(RESOURCE_STEPS))
        if unknown:
            raise ValueError(f"unknown step name(s) {', '.join(unknown)}; known: {', '.join(RESOURCE_STEPS)}")
        return v

    def step_resources(self, step: str) -> StepResources:
        """The resources step ``step`` runs with (:func:`step_resources_entry`; the schema's defaults without
        an entry): what its ``@resources`` in the flows resolve to."""
        if step not in RESOURCE_STEPS:
            raise ValueError(f"unknown step name '{step}'; known: {', '.join(RESOURCE_STEPS)}")
        entry = step_resources_entry(self.resources, step)
        return entry if entry is not None else StepResources()

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        from tango_steps.tasks.templates import get_template

        get_template(v)  # raises naming the known templates
        return v

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: TaskConfig, info: ValidationInfo) -> TaskConfig:
        from tango_steps.tasks import TASKS, get_task

        if (info.context or {}).get("check_data") is False:
            if v.name not in TASKS:
                raise ValueError(f"unknown task '{v.name}'; known: {', '.join(sorted(TASKS))}")
            return v
        get_task(v.name, **v.params)  # raises naming the bad task or parameter
        return v

    @model_validator(mode="after")
    def _sft_is_plain_sft(self) -> TangoConfig:
        u = self.generator_update
        if self.algorithm.generator_objective == "sft" and (u.kl_coef or u.entropy_coef):
            raise ValueError(
                "algorithm.generator_objective 'sft' needs generator_update.kl_coef and entropy_coef 0 "
                f"(got {u.kl_coef} and {u.entropy_coef}): otherwise the update is not SFT"
            )
        return self

    @model_validator(mode="after")
    def _update_processes_have_devices(self) -> TangoConfig:
        for role in ("generator_update", "verifier_update"):
            u = getattr(self, role)
            step = "update_nodes" if u.nodes > 1 else role  # the step (one per node) the update runs in
            res = self.resources.get(step)
            gpus = res.gpu if res is not None else 0
            if gpus and u.processes > gpus:
                raise ValueError(
                    f"{role}.processes is {u.processes} but resources.{step}.gpu is {gpus}: one GPU per process"
                )
            if u.processes > 1 and u.strategy == "fsdp" and u.lora is not None:
                raise ValueError(f"{role}.strategy 'fsdp' with {role}.lora is not supported (an adapter is small: ddp)")
        return self

    @model_validator(mode="after")
    def _shards_are_whole_engine_calls(self) -> TangoConfig:
        # a shard judges its own solutions: its first solution must start a judging call as well
        r = self.rollout
        for section in ("generator_sampling", "verifier_sampling"):
            n = getattr(self, section).n
            if r.shards > 1 and r.chunk_samples % n:
                raise ValueError(
                    f"rollout.shards {r.shards} needs rollout.chunk_samples ({r.chunk_samples}) to be a multiple "
                    f"of {section}.n ({n}), so that every shard starts a whole engine call"
                )
        return self

    @model_validator(mode="after")
    def _final_from_steps_is_the_verifiers(self) -> TangoConfig:
        if self.generator.final_from_steps:
            raise ValueError("generator.final_from_steps: a verifier's option (verifier.final_from_steps)")
        v = self.verifier
        if v.final_from_steps and v.path == "tiny" and v.warmup == "self_check":
            raise ValueError(
                "verifier.final_from_steps with verifier.warmup 'self_check': that warm-up's final verdict is the "
                "outcome label, which its step verdicts need not agree with; use verifier.warmup 'self_check_and' "
                "(its final target is the AND of its step targets) or 'outcome'"
            )
        return self

    @model_validator(mode="after")
    def _oracle_needs_step_labels(self) -> TangoConfig:
        if self.algorithm.step_verdicts != "verifier" and self.task.name == "dataset":
            raise ValueError(
                f"algorithm.step_verdicts '{self.algorithm.step_verdicts}' needs exact step labels; "
                "the dataset task has none"
            )
        return self


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, check_data: bool = True
) -> TangoConfig:
    """Load a recipe (docs/method.md §3-§7): defaults <- YAML file <- ``overrides`` (dotted keys allowed).

    Every error names the field by its dotted path and the file it came from. ``check_data`` False leaves the
    task's data files unopened (:func:`validate`).
    """
    data = apply_overrides(load_yaml(path) if path is not None else {}, overrides or {})
    source = str(path) if path is not None else "configuration"
    return validate(TangoConfig, data, source=source, check_data=check_data)


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"schedule.train_verifier": False``) in a recipe dict, in place."""
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{p}' is not a section")
        node[parts[-1]] = value
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["generator_update.learning_rate=1e-4", ...]`` -> ``{"generator_update.learning_rate": 1e-4}``
    (docs/method.md §3).

    Values are parsed as YAML; a pair without ``=`` raises, naming it.
    """
    out: dict[str, Any] = {}
    for kv in pairs:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise ConfigError(f"'{kv}' is not KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def parse_recipe(text: str) -> dict[str, Any]:
    """Metaflow ``Config`` parser for recipes (docs/method.md §3-§7): YAML (or JSON) text to a plain dict.

    Validation is NOT done here but in TangoFlow's ``start`` (errors then name the field and no
    training has started). The only change: ``resources`` is filled with an entry for every step of
    ``RESOURCE_STEPS`` (the schema's defaults under the recipe's values; ``round0`` from ``evaluate``
    when the recipe has none: :func:`step_resources_entry`), so that
    ``@resources(cpu=config.resources.rollout.cpu)`` always resolves.
    """
    try:
        data = yaml.safe_load(text) if text and text.strip() else {}
    except yaml.YAMLError as e:
        raise ConfigError(f"the configuration is not valid YAML: {e}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"the configuration must hold a mapping at the top level, got {type(data).__name__}")
    res = data.get("resources")
    if res is None or isinstance(res, dict):
        filled = dict(res or {})
        for step in RESOURCE_STEPS:  # the round steps first: a TangoFlow step may take one's filled entry
            entry = step_resources_entry(filled, step) or {}
            filled[step] = {**StepResources().model_dump(), **entry} if isinstance(entry, dict) else entry
        data["resources"] = filled
    return data


def resolved(cfg: TangoConfig) -> dict[str, Any]:
    """The whole configuration, every default filled in, as a JSON-safe dict (docs/method.md §3-§7).

    This is what a TangoFlow run stores and hands to each round run, so a recipe is reproducible
    even after the defaults in this file change.
    """
    return cfg.model_dump(mode="json")

"""How a recipe spreads over devices: what one update process holds in memory, by estimate, and how
its sampling splits over shards (docs/method.md §7 hardware; docs/scaling.md).

The estimate follows what :func:`tango_steps.training.update.rl_update` does, not a generic trainer:

- the policy is loaded in fp32 and trained under bf16 autocast on GPUs: 4 bytes of weights, 4 of
  gradients and 8 of AdamW moments per parameter, 16 in all, divided by P under ``fsdp`` and not
  under ``ddp`` (DDP's gradients are views of its reduction buckets: one copy). FSDP reduce-scatters
  every micro-batch's gradients (``distributed.gradient_sync``), so they stay sharded; it also holds
  the all-gathered weights of about two decoder layers at a time (the one computing and the one
  prefetched; bf16 under its mixed-precision policy, else fp32) and one layer's unsharded gradient
  while it is reduced (fp32);
- the frozen KL reference (``kl_coef`` > 0) is a second copy of the model on EVERY process,
  unsharded, in the update's dtype: 2 bytes per parameter in bf16, 4 in fp32;
- activations of one micro-batch: with gradient checkpointing each layer keeps its bf16 input
  (2 bytes x tokens x hidden) and one layer is recomputed at a time (about 34 bytes x tokens x hidden,
  the usual transformer-layer figure without attention scores, which flash/SDPA kernels do not keep);
  without it every layer keeps its 34 bytes x tokens x hidden;
- the log-probs of one chunk of ``logprob_chunk_size`` positions: fp32 logits and their softmax.

It leaves out the CUDA context and allocator slack (budget ~10% and a few GB), so a layout should
keep a margin under the device's memory (:func:`fits`).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only model that set its memory."""

    params: float
    hidden: int
    layers: int
    vocab: int


# Published configurations (config.json of Qwen/Qwen2.5-*; parameter counts from the model cards).
SHAPES: dict[str, ModelShape] = {
    "qwen2.5-0.5b": ModelShape(0.49e9, 896, 24, 151_936),
    "qwen2.5-1.5b": ModelShape(1.54e9, 1536, 28, 151_936),
    "qwen2.5-7b": ModelShape(7.62e9, 3584, 28, 152_064),
    # the builtins: SmolLM2-135M-Instruct (its config.json), the tiny default (models/tiny.py's TinyConfig)
    "smollm2-135m": ModelShape(134.5e6, 576, 30, 49_152),
    "tiny": ModelShape(3.3e6, 256, 4, 384),
}


def update_memory_gib(
    shape: ModelShape,
    processes: int,
    strategy: str,
    micro_batch_size: int,
    tokens: int,
    kl: bool = True,
    gradient_checkpointing: bool = True,
    logprob_chunk_size: int = 2048,
    lora: bool = False,
    bf16: bool = True,
) -> dict[str, float]:
    """GiB one update process holds, by part, and their ``total`` (see the module docstring).

    Args:
        shape: the model's size.
        processes / strategy: the update's layout (``ddp`` keeps a full replica per process).
        micro_batch_size: sequences per forward/backward on one process.
        tokens: prompt + response tokens of the longest sequence.
        kl: a KL term (a frozen reference model on every process).
        lora: LoRA training: the fp32 base only (4 bytes per parameter; the adapter's states are
            negligible) and no reference copy (the reference is the base with adapters disabled).
        bf16: the update runs in bf16 (``dtype: bfloat16``, or ``auto`` on a GPU): FSDP gathers layers in bf16.
    """
    if processes < 1 or strategy not in ("ddp", "fsdp"):
        raise ValueError(f"need processes >= 1 and strategy ddp or fsdp, got {processes}, {strategy!r}")
    p = shape.params
    shard = processes if strategy == "fsdp" else 1
    parts = {
        "weights, gradients, AdamW": (4 * p if lora else 16 * p) / shard,
        "gathered layers (fsdp)": (2 * (2 if bf16 else 4) + 4) * p / shape.layers if strategy == "fsdp" else 0.0,
        "KL reference": (2 if bf16 else 4) * p if kl and not lora else 0.0,
    }
    per_layer = micro_batch_size * tokens * shape.hidden
    if gradient_checkpointing:
        parts["activations"] = 2 * per_layer * shape.layers + 34 * per_layer
    else:
        parts["activations"] = 34 * per_layer * shape.layers
    parts["log-prob chunk"] = 2 * 4 * min(logprob_chunk_size, micro_batch_size * tokens) * shape.vocab
    out = {k: v / GIB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def fits(total_gib: float, device_gib: float, margin: float = 0.85) -> bool:
    """Whether an estimate leaves the allocator and CUDA context their share (``1 - margin``)."""
    return total_gib <= margin * device_gib


def recipe_update_memory(cfg, role: str, shape: ModelShape) -> dict[str, float]:
    """:func:`update_memory_gib` for the ``generator`` or ``verifier`` update of a recipe (a
    ``TangoConfig``): its layout, micro-batch, longest sequence (prompt limit + sampled tokens), KL
    term, checkpointing and LoRA."""
    u = getattr(cfg, f"{role}_update")
    sampling = cfg.generator_sampling if role == "generator" else cfg.verifier_sampling
    return update_memory_gib(
        shape,
        u.processes,
        u.strategy,
        u.micro_batch_size,
        cfg.rollout.max_prompt_tokens + sampling.max_tokens,
        kl=u.kl_coef > 0,
        gradient_checkpointing=u.gradient_checkpointing,
        logprob_chunk_size=u.logprob_chunk_size,
        lora=u.lora is not None,
        bf16=u.dtype != "float32",  # auto is bf16 on the GPUs this estimate is for
    )


def sampling_layout(cfg) -> dict[str, int]:
    """How a recipe's sampling spreads over ``rollout.shards`` engines (a ``TangoConfig``; docs/scaling.md).

    A shard is a contiguous run of whole engine calls (``rollout.chunk_samples`` samples each), so
    with fewer calls than shards some shards idle; ``busy_*`` counts the shards with work in a
    generator round (B_g prompts x M samples) and in a verifier round (B_v prompts x 1). Each shard's
    engine spans ``tensor_parallel_size`` GPUs.
    """
    from tango_steps.round.sampling import sampling_chunks

    r = cfg.rollout
    calls = {
        "generator_round_calls": len(
            sampling_chunks(cfg.batch.generator_prompts, cfg.generator_sampling.n, r.chunk_samples)
        ),
        "verifier_round_calls": len(sampling_chunks(cfg.batch.verifier_prompts, 1, r.chunk_samples)),
    }
    return {
        "shards": r.shards,
        "gpus_per_shard": r.tensor_parallel_size,
        "gpus": r.shards * r.tensor_parallel_size,
        **calls,
        "busy_shards_generator_round": min(r.shards, calls["generator_round_calls"]),
        "busy_shards_verifier_round": min(r.shards, calls["verifier_round_calls"]),
    }

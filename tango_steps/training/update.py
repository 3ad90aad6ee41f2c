"""The RL update step of both models (TANGO.md §6), from one policy checkpoint to the next.

A policy checkpoint is a directory:

    model/              standard safetensors + config + tokenizer: HF and vLLM load it directly
                        (with LoRA: the MERGED weights, so inference never needs peft)
    adapter/            LoRA only: the peft adapter that training continues from
    optimizer.pt        AdamW state (absent before the first update)
    rng_state.pt        torch / python RNG states at save time
    trainer_state.json  update counter, reference model, LoRA base, provenance (``extra``), settings
                        used (the verifier's reweighting EMAs live in the round state, not here)

:func:`rl_update` loads one, computes old and reference log-probs, runs the configured number of
optimizer steps (paper: one, fully on-policy) over micro-batches with gradient accumulation through
``accelerate`` (bf16 on GPU, fp32 on CPU), and writes the next checkpoint atomically (a temporary
directory renamed into place), so a failed step (e.g. a NaN loss) leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tango_steps.atomic import atomic_directory, disk_full_error, free_bytes, is_disk_full
from tango_steps.config import LoraConfig, UpdateConfig, schema_default
from tango_steps.method.loss import get_policy_loss, token_logprobs

STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA via peft (TANGO.md §6 alternative to full fine-tuning on small GPUs).

    Attributes:
        r / alpha / dropout: adapter rank, scaling numerator, dropout.
        target_modules: module names, or "all-linear".
    """

    r: int = schema_default(LoraConfig, "r")
    alpha: int = schema_default(LoraConfig, "alpha")
    dropout: float = schema_default(LoraConfig, "dropout")
    target_modules: str | list[str] = schema_default(LoraConfig, "target_modules")  # noqa: RUF009 (a str)


@dataclass(frozen=True)
class UpdateSettings:
    """One RL update (TANGO.md §6 numbers for 7B models; tiny models need a far larger learning rate).

    Attributes:
        learning_rate: AdamW learning rate, constant (paper: 1e-6 for 7B).
        weight_decay / betas / adam_eps: AdamW settings.
        grad_clip: max gradient norm (paper: 1.0).
        optimizer_steps: optimizer steps per update, each on an equal slice of the batch
            (paper: 1, one mini-batch, fully on-policy).
        micro_batch_size: sequences per forward/backward (paper: 4), gradients accumulated.
        loss: policy loss name (``ppo_clip``).
        clip_eps / kl_coef / entropy_coef: PPO clip range, beta of the k3 KL, entropy bonus
            (paper: 0.2, 0.001, 0.001; entropy 0 for REINFORCE++).
        logprob_chunk_size: tokens per chunk of the chunked log-prob computation.
        logprob_backend: ``chunked``, or ``liger`` (liger-kernel's fused kernel on CUDA; needs
            ``entropy_coef`` 0; :func:`tango_steps.method.loss.token_logprobs`).
        temperature: sampling temperature; logits are divided by it for log-probs (1.0 = raw).
        dtype: "auto" (bf16 on GPU, fp32 on CPU), "float32" or "bfloat16".
        gradient_checkpointing: recompute activations in backward (saves memory).
        processes / strategy: the update on this many processes (torchrun), ``ddp`` (replicas) or
            ``fsdp`` (parameters, gradients and optimizer state sharded); :mod:`tango_steps.training.distributed`.
        lora: LoRA settings, or None for full fine-tuning.
        seed: seeds the update's RNG when the checkpoint has no saved RNG state.
        ratio_to_current: every optimizer step takes the current policy as the old one (ratio 1), so
            its gradient is the plain -A * grad log p on every step; the ``sft`` objective sets it,
            because with several steps per update the PPO clip would otherwise stop gold tokens whose
            probability already rose by 20% (continued SFT, not a trust region).
    """

    learning_rate: float = schema_default(UpdateConfig, "learning_rate")
    weight_decay: float = schema_default(UpdateConfig, "weight_decay")
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = schema_default(UpdateConfig, "grad_clip")
    optimizer_steps: int = schema_default(UpdateConfig, "optimizer_steps")
    micro_batch_size: int = schema_default(UpdateConfig, "micro_batch_size")
    loss: str = "ppo_clip"
    clip_eps: float = schema_default(UpdateConfig, "clip_eps")
    kl_coef: float = schema_default(UpdateConfig, "kl_coef")
    entropy_coef: float = schema_default(UpdateConfig, "entropy_coef")
    logprob_chunk_size: int = schema_default(UpdateConfig, "logprob_chunk_size")
    logprob_backend: str = schema_default(UpdateConfig, "logprob_backend")
    temperature: float = 1.0
    dtype: str = schema_default(UpdateConfig, "dtype")
    gradient_checkpointing: bool = schema_default(UpdateConfig, "gradient_checkpointing")
    processes: int = schema_default(UpdateConfig, "processes")
    strategy: str = schema_default(UpdateConfig, "strategy")
    lora: LoraSettings | None = None
    seed: int = 0
    ratio_to_current: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.optimizer_steps >= 1, f"optimizer_steps must be >= 1, got {self.optimizer_steps}"),
            (self.micro_batch_size >= 1, f"micro_batch_size must be >= 1, got {self.micro_batch_size}"),
            (self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip}"),
            (
                self.dtype in ("auto", "float32", "bfloat16"),
                f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}",
            ),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (
                self.logprob_backend in ("chunked", "liger"),
                f"logprob_backend must be chunked or liger, got {self.logprob_backend!r}",
            ),
            (
                not (self.logprob_backend == "liger" and self.entropy_coef),
                f"logprob_backend liger needs entropy_coef 0 (it returns no entropy), got {self.entropy_coef}",
            ),
            (self.processes >= 1, f"processes must be >= 1, got {self.processes}"),
            (self.strategy in ("ddp", "fsdp"), f"strategy must be ddp or fsdp, got {self.strategy!r}"),
            (
                not (self.strategy == "fsdp" and self.processes > 1 and self.lora is not None),
                "strategy fsdp with LoRA is not supported (an adapter is small: use ddp)",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"update settings: {msg}")


def update_settings(section: UpdateConfig, temperature: float = 1.0, seed: int = 0) -> UpdateSettings:
    """The :class:`UpdateSettings` a config section describes (TANGO.md §6), with the sampling temperature.

    ``processes`` is the whole process group: ``processes`` per node x ``nodes``.
    """
    data = section.model_dump(exclude={"lora", "nodes"})
    data["processes"] = section.processes * section.nodes
    lora = LoraSettings(**section.lora.model_dump()) if section.lora is not None else None
    return UpdateSettings(**data, lora=lora, temperature=temperature, seed=seed)


@dataclass
class RLBatch:
    """What an update trains on: token ids, per-token advantages and optional sample weights (TANGO.md §4-§6).

    Attributes:
        prompt_ids: token ids of each prompt.
        response_ids: token ids of each sampled response (eos included if sampled).
        advantages: per-response-token advantages, one list per response, same lengths.
        sample_weights: per-sample weights on the policy-gradient term (verifier reweighting), or None.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    advantages: list[list[float]]
    sample_weights: list[float] | None = None

    def __post_init__(self) -> None:
        n = len(self.prompt_ids)
        if len(self.response_ids) != n or len(self.advantages) != n:
            raise ValueError(
                f"RLBatch: {n} prompts, {len(self.response_ids)} responses, {len(self.advantages)} advantage rows"
            )
        if self.sample_weights is not None and len(self.sample_weights) != n:
            raise ValueError(f"RLBatch: {len(self.sample_weights)} sample weights for {n} samples")
        for i, (p, r, a) in enumerate(zip(self.prompt_ids, self.response_ids, self.advantages, strict=True)):
            if not p:
                raise ValueError(f"RLBatch sample {i}: empty prompt (at least one token is needed)")
            if len(r) != len(a):
                raise ValueError(f"RLBatch sample {i}: {len(r)} response tokens but {len(a)} advantages")
        if n == 0:
            raise ValueError("RLBatch is empty")

    def __len__(self) -> int:
        return len(self.prompt_ids)


@dataclass
class TrainerState:
    """Training state saved beside the weights (TANGO.md §9: resume must restore everything).

    Attributes:
        updates: optimizer updates done so far.
        reference_model: path of the frozen reference for the KL term (full fine-tuning).
        lora_base: path of the base model the LoRA adapter sits on (LoRA only).
        extra: provenance carried with the checkpoint, e.g. ``{"source": <the model it started from>}``.
    """

    updates: int = 0
    reference_model: str | None = None
    lora_base: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def read_state(ckpt: str | Path) -> TrainerState:
    """The trainer state of a policy checkpoint (TANGO.md §9 resume)."""
    data = json.loads((Path(ckpt) / STATE_FILE).read_text())
    return TrainerState(**{k: data[k] for k in ("updates", "reference_model", "lora_base", "extra")})


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_checkpoint(
    out_dir: Path,
    model,
    tokenizer,
    optimizer_state: dict | None,
    state: TrainerState,
    settings: UpdateSettings,
    model_state: dict | None = None,
) -> Path:
    """Write a checkpoint to a temporary sibling directory, then rename it into place (never overwrites).

    ``model_state``: the full weights when ``model`` holds only a shard of them (FSDP). A disk too
    small for it is refused before anything is written, and a disk that fills up while it is written
    (another process) is named as such; either way nothing is left behind.
    """
    if settings.lora is None or state.updates == 0:
        weights = model_state if model_state is not None else _causal_lm(model).state_dict()
    else:  # the adapter only
        weights = {n: p for n, p in model.named_parameters() if p.requires_grad}
    needed = _tensor_bytes(weights) + _tensor_bytes(optimizer_state)

    def full() -> OSError:
        what = f"writing the checkpoint '{out_dir}'"
        return disk_full_error("the disk", what, needed, Path(out_dir).parent, "Free space, then `resume`.")

    if free_bytes(Path(out_dir).parent) < needed:  # (of the nearest existing folder: nothing is made yet)
        raise full()
    with atomic_directory(out_dir) as tmp:
        try:
            _write_checkpoint_files(tmp, model, tokenizer, optimizer_state, state, settings, model_state)
        except Exception as e:
            if is_disk_full(e, where=tmp):
                raise full() from e
            raise
    return out_dir


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct tensors in a nested dict / list (tied weights once): what will be written."""
    seen: dict[int, int] = {}

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            seen[x.untyped_storage().data_ptr() if x.device.type != "meta" else id(x)] = x.numel() * x.element_size()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v)

    walk(obj)
    return sum(seen.values())


def _write_checkpoint_files(tmp: Path, model, tokenizer, optimizer_state, state, settings, model_state) -> None:
    """The files of a checkpoint (``_write_checkpoint``), into the temporary directory ``tmp``."""
    if settings.lora is None:
        model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=model_state)
    elif state.updates == 0:  # the first checkpoint holds the base (the adapter is still zero) once
        model.save_pretrained(tmp / "adapter")
        model.merge_and_unload(safe_merge=True).save_pretrained(tmp / "model", safe_serialization=True)
    else:  # later ones only the adapter: small I/O per update; engines merge it at load (servable_model)
        model.save_pretrained(tmp / "adapter")
        _causal_lm(model).config.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / "rng_state.pt")
    payload = {**asdict(state), "settings": json.loads(json.dumps(asdict(settings), default=str))}
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))


def servable_model(ckpt: str | Path, log=None) -> Path:
    """The model directory an engine loads for a policy checkpoint (TANGO.md §3, §6).

    A full checkpoint's ``model/``. A LoRA checkpoint after its first update holds only the adapter
    (and the tokenizer and config in ``model/``); its servable model is the base with the adapter
    merged, built once per adapter (keyed by the adapter's bytes and the base's path) under
    ``<cache_dir>/merged/`` and reused by every later rollout, judge and evaluation on this machine.
    """
    import hashlib

    from tango_steps.atomic import exclusive_lock
    from tango_steps.models.loading import cache_dir, load_model, load_tokenizer
    from tango_steps.models.tiny import save_pretrained_atomic

    ckpt = Path(ckpt)
    model_dir = ckpt / "model"
    if any(model_dir.glob("*.safetensors")) or not (ckpt / "adapter").exists():
        return model_dir
    base = read_state(ckpt).lora_base
    if base is None or not (Path(base) / "config.json").exists():
        raise ValueError(f"LoRA checkpoint '{ckpt}' names the base '{base}', which is not a model directory here")
    h = hashlib.sha256(str(Path(base).resolve()).encode())
    for f in sorted((ckpt / "adapter").glob("*")):
        h.update(f.name.encode() + f.read_bytes())
    out = cache_dir() / "merged" / h.hexdigest()[:20]
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f"{out.name}.lock", f"waiting for another process to merge {ckpt}", log or print):
        if not (out / "config.json").exists():
            from peft import PeftModel

            merged = PeftModel.from_pretrained(load_model(base, "float32"), str(ckpt / "adapter")).merge_and_unload()
            save_pretrained_atomic(merged, load_tokenizer(str(model_dir)), out, extra={"adapter_of": str(ckpt)})
    return out


def init_checkpoint(model_ref: str, out_dir: str | Path, settings: UpdateSettings, extra: dict | None = None) -> Path:
    """Make the first policy checkpoint from a model (TANGO.md §6: it is also the frozen reference).

    With LoRA the adapter is created (seeded) on top of the model, which becomes ``lora_base``.
    """
    from tango_steps.models.loading import load_model, load_tokenizer, resolve_model_ref

    path = resolve_model_ref(model_ref)
    tok = load_tokenizer(path)
    model = load_model(path, "float32")
    state = TrainerState(updates=0, reference_model=path, extra=dict(extra or {}))
    if settings.lora is not None:
        model = _add_lora(model, settings)
        state.lora_base = path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        random.seed(settings.seed)
        return _write_checkpoint(Path(out_dir), model, tok, None, state, settings)


def _add_lora(model, settings: UpdateSettings):
    from peft import LoraConfig, get_peft_model

    lora = settings.lora
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
        return get_peft_model(model, cfg)


def load_policy(
    ckpt: str | Path,
    settings: UpdateSettings,
    device: str | torch.device = "cpu",
    lora_base: str | None = None,
    with_optimizer: bool = True,
):
    """Load model (with adapter), tokenizer, optimizer and state from a policy checkpoint (TANGO.md §6).

    ``lora_base`` overrides the base model path recorded in the checkpoint (e.g. after moving it).
    ``with_optimizer`` False: the optimizer is None (FSDP builds it over the sharded parameters).
    """
    from tango_steps.models.loading import load_model, load_tokenizer

    ckpt = Path(ckpt)
    if not (ckpt / STATE_FILE).exists():
        raise ValueError(f"'{ckpt}' is not a policy checkpoint (no {STATE_FILE})")
    state = read_state(ckpt)
    tok = load_tokenizer(str(ckpt / "model"))
    if lora_base is not None:
        state.lora_base = lora_base
    if settings.lora is not None:
        if state.lora_base is None:
            raise ValueError(f"checkpoint '{ckpt}' was made without LoRA but the settings ask for LoRA")
        from peft import PeftModel

        base = load_model(state.lora_base, "float32")
        model = PeftModel.from_pretrained(base, str(ckpt / "adapter"), is_trainable=True)
    else:
        if state.lora_base is not None:
            raise ValueError(f"checkpoint '{ckpt}' holds a LoRA adapter but the settings ask for full fine-tuning")
        model = load_model(str(ckpt / "model"), "float32")
    model.to(device)
    optimizer = None
    if with_optimizer:
        optimizer = adamw(model, settings)
        if (ckpt / "optimizer.pt").exists():
            optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))
            apply_optimizer_settings(optimizer, settings)
    if (ckpt / "rng_state.pt").exists():
        _set_rng_state(torch.load(ckpt / "rng_state.pt", weights_only=False))
    return model, tok, optimizer, state


def adamw(model, settings: UpdateSettings) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, in ``model.parameters()`` order (optimizer.pt's positions)."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr, wd = settings.learning_rate, settings.weight_decay
    return torch.optim.AdamW(params, lr=lr, betas=settings.betas, eps=settings.adam_eps, weight_decay=wd)


def apply_optimizer_settings(optimizer, settings: UpdateSettings) -> None:
    """Settings win over the hyper-parameters saved with a loaded optimizer state."""
    for g in optimizer.param_groups:
        g["lr"], g["betas"], g["eps"], g["weight_decay"] = (
            settings.learning_rate,
            settings.betas,
            settings.adam_eps,
            settings.weight_decay,
        )


# ----------------------------------------------------------------------------------------------
# Log-probs of a batch
# ----------------------------------------------------------------------------------------------


def _pack(batch: RLBatch, idx: list[int], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded (B, L) input ids, attention mask, and (B, L-1) response mask/advantages for shifted labels."""
    seqs = [batch.prompt_ids[i] + batch.response_ids[i] for i in idx]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    attn = torch.zeros(len(idx), width, dtype=torch.long)
    resp = torch.zeros(len(idx), width - 1)
    adv = torch.zeros(len(idx), width - 1)
    for r, i in enumerate(idx):
        p, s = len(batch.prompt_ids[i]), seqs[r]
        ids[r, : len(s)] = torch.tensor(s)
        attn[r, : len(s)] = 1
        # logits at position t predict token t+1: response token j sits at label index p - 1 + j
        n = len(batch.response_ids[i])
        resp[r, p - 1 : p - 1 + n] = 1.0
        adv[r, p - 1 : p - 1 + n] = torch.tensor(batch.advantages[i], dtype=torch.float32)
    return {k: v.to(device) for k, v in {"ids": ids, "attn": attn, "resp": resp, "adv": adv}.items()}


def _causal_lm(model):
    """The underlying *ForCausalLM of a (possibly peft-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def sequence_logprobs(
    model,
    ids: torch.Tensor,
    attn: torch.Tensor,
    chunk_size: int,
    temperature: float = 1.0,
    backend: str = "chunked",
    with_entropy: bool = True,
):
    """Log-probs and entropies of tokens 1..L-1 given their prefixes, (B, L-1) each (TANGO.md §6).

    Runs the decoder for hidden states and the LM head chunk by chunk (or liger-kernel's fused
    kernel, ``backend``), never building full logits. The entropies are None only for the liger
    backend without ``with_entropy`` (the no-grad passes that discard them).
    """
    lm = _causal_lm(model)
    hidden = lm.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state  # (B, L, H)
    head = lm.get_output_embeddings()
    return token_logprobs(
        hidden[:, :-1],
        head.weight,
        ids[:, 1:],
        lm_head_bias=head.bias,
        chunk_size=chunk_size,
        temperature=temperature,
        backend=backend,
        with_entropy=with_entropy,
    )


# ----------------------------------------------------------------------------------------------
# The update
# ----------------------------------------------------------------------------------------------


def _micro_batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[s : s + size] for s in range(0, len(indices), size)]


def _stack_padded(per_sample: dict[int, torch.Tensor], idx: list[int], width: int) -> torch.Tensor:
    """(len(idx), width) log-probs of the samples ``idx``, each cut or zero-padded to ``width``.

    Old and reference log-probs are computed over other micro-batches than the training ones when
    ``optimizer_steps > 1``, so their padded widths differ; the padding sits outside the response
    mask and never enters the loss.
    """
    out = torch.zeros(len(idx), width, device=per_sample[idx[0]].device)
    for r, i in enumerate(idx):
        v = per_sample[i][:width]
        out[r, : v.shape[0]] = v
    return out


def _reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state: each update is a single-process job with its own settings."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def rl_update(
    ckpt: str | Path,
    batch: RLBatch,
    settings: UpdateSettings,
    out_dir: str | Path,
    log=None,
    reference_model: str | None = None,
    lora_base: str | None = None,
) -> dict[str, float]:
    """One RL update from checkpoint ``ckpt`` to a new checkpoint ``out_dir`` (TANGO.md §6).

    Set up the policy, compute the frozen old and reference log-probs, take the optimizer steps,
    write the checkpoint: each a function below.

    Args:
        ckpt: the policy checkpoint to start from.
        batch: prompts, sampled responses and per-token advantages.
        settings: update settings.
        out_dir: where the new checkpoint goes (must not exist; written atomically).
        log: optional callable for progress lines.
        reference_model / lora_base: override the paths recorded in the checkpoint (the frozen
            reference, the LoRA base) when the models moved, e.g. to another machine's datastore cache.

    Returns:
        Metrics: ``loss``, ``pg_loss``, ``kl``, ``entropy``, ``clip_frac``, ``grad_norm``, ``tokens``,
        ``seconds``, ``updates`` (after this one), ``lr``.

    Raises:
        FloatingPointError: a non-finite loss or gradient norm; ``out_dir`` is not created.

    With ``settings.processes`` > 1 and no process group yet, the update is launched on that many
    processes (:func:`tango_steps.training.distributed.launch_update`), each of which calls this function.
    """
    import torch.distributed as dist

    if settings.processes > 1 and not dist.is_initialized():
        from tango_steps.training.distributed import launch_update

        return launch_update(ckpt, batch, settings, out_dir, log, reference_model, lora_base)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"checkpoint directory '{out_dir}' already exists; refusing to overwrite it")
    run = _setup_update(ckpt, settings, reference_model, lora_base)
    old_lp, ref_lp = _frozen_logprobs(run, batch, settings, ckpt)
    where = f"checkpoint '{ckpt}' is left as it was and '{out_dir}' was not written"
    sums, grad_norms, tokens = _optimizer_steps(run, batch, settings, old_lp, ref_lp, where, t0, log)
    if run.world == 1:
        optimizer_state, model_state = run.optimizer.state_dict(), None
    else:
        from tango_steps.training.distributed import all_reduce_sums, full_states

        sums, tokens = all_reduce_sums(sums, tokens)
        model_state, optimizer_state = full_states(run.model, run.optimizer, run.policy, settings.strategy)
    if run.rank == 0:
        _write_checkpoint(out_dir, run.policy, run.tok, optimizer_state, run.state, settings, model_state)
    if run.world > 1:
        dist.barrier()  # no process reports success before the checkpoint exists
    metrics = {k: v / max(tokens, 1) for k, v in sums.items() if k != "loss"}
    metrics.update(
        loss=sums.get("loss", 0.0) / settings.optimizer_steps,
        grad_norm=sum(grad_norms) / max(len(grad_norms), 1),
        tokens=float(tokens),
        seconds=time.perf_counter() - t0,
        updates=float(run.state.updates),
        lr=settings.learning_rate,
    )
    return metrics


@dataclass
class _UpdateRun:
    """What one update works on: the accelerator, the prepared policy and optimizer, its saved state.

    On several processes ``accelerator`` is a :class:`tango_steps.training.distributed.Runtime` and ``model``
    the DDP- or FSDP-wrapped :class:`~tango_steps.training.distributed.LogprobModule` around ``policy``.
    """

    accelerator: Any
    model: Any
    tok: Any
    optimizer: Any
    state: TrainerState
    policy: Any = None  # the HF model itself (saving, adapters)
    rank: int = 0
    world: int = 1
    strategy: str = "ddp"

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = self.accelerator.unwrap_model(self.model)


def _setup_update(
    ckpt: str | Path, settings: UpdateSettings, reference_model: str | None, lora_base: str | None
) -> _UpdateRun:
    """Load the policy, optimizer and RNG state of ``ckpt`` onto this machine's device (TANGO.md §6, §9)."""
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    bf16 = settings.dtype == "bfloat16" or (settings.dtype == "auto" and cuda)
    if dist.is_initialized() and dist.get_world_size() > 1:
        return _setup_distributed_update(ckpt, settings, reference_model, lora_base, bf16)
    from accelerate import Accelerator

    _reset_accelerate_state()  # an earlier Accelerator in this process (a TRL trainer, say) must not leak in
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if bf16 else "no")
    model, tok, optimizer, state = load_policy(ckpt, settings, accelerator.device, lora_base=lora_base)
    _ready_to_train(model, state, ckpt, settings, reference_model)
    model, optimizer = accelerator.prepare(model, optimizer)
    return _UpdateRun(accelerator, model, tok, optimizer, state)


def _ready_to_train(model, state: TrainerState, ckpt, settings: UpdateSettings, reference_model: str | None) -> None:
    """What every process does to a loaded policy before training: the reference override, the seed
    when the checkpoint has no RNG state, gradient checkpointing."""
    if reference_model is not None:
        state.reference_model = reference_model
    if not (Path(ckpt) / "rng_state.pt").exists():
        torch.manual_seed(settings.seed)
    if settings.gradient_checkpointing:
        _causal_lm(model).gradient_checkpointing_enable()


def _setup_distributed_update(
    ckpt: str | Path, settings: UpdateSettings, reference_model: str | None, lora_base: str | None, bf16: bool
) -> _UpdateRun:
    """The same on one process of a torchrun group: the policy wrapped for DDP or sharded by FSDP."""
    from tango_steps.training import distributed

    rt = distributed.Runtime(bf16)
    if rt.world != settings.processes:
        raise ValueError(f"update.processes is {settings.processes} but the process group has {rt.world}")
    fsdp = settings.strategy == "fsdp"
    policy, tok, optimizer, state = load_policy(ckpt, settings, rt.device, lora_base=lora_base, with_optimizer=not fsdp)
    _ready_to_train(policy, state, ckpt, settings, reference_model)
    model = distributed.wrap_policy(policy, settings.strategy, settings, rt.device)
    if fsdp:  # AdamW over the shards; the saved full state is scattered onto them
        optimizer = adamw(policy, settings)
        distributed.load_sharded_optimizer(model, optimizer, policy, Path(ckpt))
        apply_optimizer_settings(optimizer, settings)
    return _UpdateRun(rt, model, tok, optimizer, state, policy, rt.rank, rt.world, settings.strategy)


def _logprobs(
    run: _UpdateRun, model, ids: torch.Tensor, attn: torch.Tensor, settings: UpdateSettings, with_entropy: bool = True
):
    """Token log-probs and entropies through ``model``: the policy itself, or the distributed wrapper."""
    if run.world == 1:
        return sequence_logprobs(
            model, ids, attn, settings.logprob_chunk_size, settings.temperature, settings.logprob_backend, with_entropy
        )
    return model(ids, attn)


def _step_micro_batches(run: _UpdateRun, mini: list[int], settings: UpdateSettings) -> list[list[int]]:
    """This process's micro-batches of one optimizer step (all of them on one process)."""
    if run.world == 1:
        return _micro_batches(mini, settings.micro_batch_size)
    from tango_steps.training.distributed import rank_micro_batches

    return rank_micro_batches(mini, settings.micro_batch_size, run.rank, run.world)


def _gradient_sync(run: _UpdateRun, last: bool):
    """One process: nothing to do. Several: reduce gradients only in each step's last backward."""
    if run.world == 1:
        return contextlib.nullcontext()
    from tango_steps.training.distributed import gradient_sync

    return gradient_sync(run.model, run.strategy, sync=last)


def _clip_grad_norm(run: _UpdateRun, max_norm: float) -> float:
    """Clip the (reduced) gradient to ``max_norm``; its norm before clipping, the same on every process."""
    if run.world == 1:
        return float(run.accelerator.clip_grad_norm_(run.model.parameters(), max_norm))
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor


def _step_slices(n: int, settings: UpdateSettings) -> list[list[int]]:
    """The samples of each optimizer step: equal interleaved slices of the batch."""
    all_idx = list(range(n))
    return [all_idx[s :: settings.optimizer_steps] for s in range(settings.optimizer_steps)]


def _frozen_logprobs(
    run: _UpdateRun, batch: RLBatch, settings: UpdateSettings, ckpt: str | Path
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Old and reference log-probs of every sample, before any step (TANGO.md §6), by sample index.

    With ONE optimizer step the policy that sampled is the current one, so old = current log-probs
    detached (identical, one forward saved) and none are computed here; ``ratio_to_current`` (the sft
    objective) asks for that on every step. Reference log-probs only when ``kl_coef`` > 0.
    """
    need_old = settings.optimizer_steps > 1 and not settings.ratio_to_current
    need_ref = settings.kl_coef > 0
    accelerator, model = run.accelerator, run.model
    reference = None
    if need_ref and settings.lora is None:
        from tango_steps.models.loading import load_model

        if run.state.reference_model is None:
            raise ValueError(f"checkpoint '{ckpt}' names no reference model but kl_coef > 0")
        reference = load_model(run.state.reference_model, "float32").to(accelerator.device).eval()
    old_lp: dict[int, torch.Tensor] = {}
    ref_lp: dict[int, torch.Tensor] = {}
    if run.world == 1:
        groups = _micro_batches(list(range(len(batch))), settings.micro_batch_size)
        policy = model
    else:  # only this process's samples; DDP's replica runs without its wrapper (no collective needed)
        groups = [mb for mini in _step_slices(len(batch), settings) for mb in _step_micro_batches(run, mini, settings)]
        policy = model if run.strategy == "fsdp" else model.module
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        for mb in groups:
            if not mb:  # an empty micro-batch: an FSDP forward all-gathers, so every process runs one
                if need_old and run.strategy == "fsdp":
                    t = _pack(batch, [0], run.tok.pad_token_id, accelerator.device)
                    _logprobs(run, policy, t["ids"], t["attn"], settings)
                continue
            t = _pack(batch, mb, run.tok.pad_token_id, accelerator.device)
            if need_old:
                lp, _ = _logprobs(run, policy, t["ids"], t["attn"], settings, with_entropy=False)
                for r, i in enumerate(mb):
                    old_lp[i] = lp[r].float()
            if need_ref:
                if reference is not None:
                    lp, _ = sequence_logprobs(
                        reference,
                        t["ids"],
                        t["attn"],
                        settings.logprob_chunk_size,
                        settings.temperature,
                        settings.logprob_backend,
                        with_entropy=False,
                    )
                else:  # LoRA: the reference is the base model with adapters disabled, no second copy
                    with run.policy.disable_adapter():
                        lp, _ = _logprobs(run, policy, t["ids"], t["attn"], settings, with_entropy=False)
                for r, i in enumerate(mb):
                    ref_lp[i] = lp[r].float()
    return old_lp, ref_lp


def _optimizer_steps(
    run: _UpdateRun,
    batch: RLBatch,
    settings: UpdateSettings,
    old_lp: dict[int, torch.Tensor],
    ref_lp: dict[int, torch.Tensor],
    where: str,
    t0: float,
    log,
) -> tuple[dict[str, float], list[float], int]:
    """``optimizer_steps`` steps over equal slices of the batch, micro-batched with gradient accumulation (§6).

    Returns the token-weighted metric sums (``loss`` summed per micro-batch), each step's gradient
    norm and the response tokens trained on. ``where`` ends the error of a non-finite loss or norm.
    """
    accelerator, model, optimizer = run.accelerator, run.model, run.optimizer
    need_old, need_ref = bool(old_lp), bool(ref_lp)
    loss_fn = get_policy_loss(settings.loss)
    weights = torch.tensor(batch.sample_weights, dtype=torch.float32) if batch.sample_weights is not None else None
    model.train()
    sums: dict[str, float] = {}
    grad_norms: list[float] = []
    tokens_total = 0
    slices = _step_slices(len(batch), settings)
    for step_idx, mini in enumerate(slices):
        if not mini:
            continue
        # the step's GLOBAL token count: each process's loss is a share of the one-process loss
        n_tokens = float(sum(len(batch.response_ids[i]) for i in mini)) or 1.0
        optimizer.zero_grad(set_to_none=True)
        mbs = _step_micro_batches(run, mini, settings)
        for mb_idx, mb in enumerate(mbs):
            if log is not None and (mb_idx % max(1, len(mbs) // 10) == 0 or mb_idx == len(mbs) - 1):
                rate = tokens_total / max(time.perf_counter() - t0, 1e-9)
                log(f"update step {step_idx + 1}: micro-batch {mb_idx + 1}/{len(mbs)}, {rate:.0f} tokens/s so far")
            with _gradient_sync(run, last=mb_idx == len(mbs) - 1):
                if not mb:  # several processes: this one has no samples left, but joins the collectives
                    t = _pack(batch, mini[:1], run.tok.pad_token_id, accelerator.device)
                    with accelerator.autocast():
                        logp, ent = _logprobs(run, model, t["ids"], t["attn"], settings)
                    accelerator.backward((logp.sum() + ent.sum()) * 0.0)
                    continue
                t = _pack(batch, mb, run.tok.pad_token_id, accelerator.device)
                with accelerator.autocast():
                    logp, ent = _logprobs(run, model, t["ids"], t["attn"], settings)
                width = logp.shape[1]
                old = _stack_padded(old_lp, mb, width) if need_old else logp.detach()
                ref = _stack_padded(ref_lp, mb, width) if need_ref else None
                loss, m = loss_fn(
                    logp.float(),
                    old,
                    t["adv"],
                    t["resp"],
                    ref_logp=ref,
                    entropy=ent.float(),
                    sample_weights=weights[mb].to(accelerator.device) if weights is not None else None,
                    clip_eps=settings.clip_eps,
                    kl_coef=settings.kl_coef,
                    entropy_coef=settings.entropy_coef,
                    num_tokens=n_tokens,
                )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss ({loss.item()}) in optimizer step {step_idx + 1}, micro-batch of samples "
                        f"{mb}; {where}"
                    )
                # the processes' gradients are averaged: times P, their sum is the one-process gradient
                accelerator.backward(loss * run.world if run.world > 1 else loss)
            mb_tokens = float(t["resp"].sum())
            tokens_total += int(mb_tokens)
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v * mb_tokens
        gn = _clip_grad_norm(run, settings.grad_clip)
        if not math.isfinite(gn):
            raise FloatingPointError(f"non-finite gradient norm ({gn}) in optimizer step {step_idx + 1}; {where}")
        grad_norms.append(gn)
        optimizer.step()
        run.state.updates += 1
        if log is not None:
            log(f"update step {step_idx + 1}/{len(slices)}: grad norm {gn:.4f}")
    return sums, grad_norms, tokens_total

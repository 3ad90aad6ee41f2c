"""The RL update step of both models (docs/method.md §6), from one policy checkpoint to the next.

:func:`rl_update` loads a checkpoint (:mod:`tango_steps.training.checkpoint`), computes the frozen old and
reference log-probs, runs the configured number of optimizer steps (paper: one, fully on-policy) over
micro-batches with gradient accumulation, and writes the next checkpoint atomically (a temporary directory
renamed into place), so a failed step (e.g. a NaN loss) leaves nothing half-written. The same loop runs on
one process and on a torchrun group: what differs is the runtime object (:mod:`tango_steps.training.runtime`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tango_steps.method.loss import ppo_clip_loss
from tango_steps.training.batch import RLBatch, pack, stack_padded, step_slices
from tango_steps.training.checkpoint import TrainerState
from tango_steps.training.launch import launch_update, needs_launch
from tango_steps.training.logprobs import sequence_logprobs
from tango_steps.training.runtime import Runtime, runtime_for
from tango_steps.training.settings import UpdateSettings


def rl_update(
    ckpt: str | Path,
    batch: RLBatch,
    settings: UpdateSettings,
    out_dir: str | Path,
    log=None,
    reference_model: str | None = None,
    lora_base: str | None = None,
) -> dict[str, float]:
    """One RL update from checkpoint ``ckpt`` to a new checkpoint ``out_dir`` (docs/method.md §6).

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
        ``seconds``, ``updates`` (after this one), ``lr``, ``skipped_steps`` (optimizer steps not taken because
        every advantage of their samples was zero: KL and entropy alone would move the policy).

    Raises:
        FloatingPointError: a non-finite loss or gradient norm; ``out_dir`` is not created.

    With ``settings.processes`` > 1 (or the check switch ``TANGO_FORCE_PROCESS_GROUP=1``) and no process group yet,
    the update is launched on that many processes (:func:`tango_steps.training.launch.launch_update`), each of
    which calls this function.
    """
    if needs_launch(settings):
        return launch_update(ckpt, batch, settings, out_dir, log, reference_model, lora_base)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"checkpoint directory '{out_dir}' already exists; refusing to overwrite it")
    run = _setup_update(ckpt, settings, reference_model, lora_base)
    old_lp, ref_lp = _frozen_logprobs(run, batch, settings, ckpt)
    where = f"checkpoint '{ckpt}' is left as it was and '{out_dir}' was not written"
    sums, grad_norms, tokens = _optimizer_steps(run, batch, settings, old_lp, ref_lp, where, t0, log)
    skipped = sums.pop("skipped_steps", 0.0)  # the same on every process: not summed over them
    sums, tokens = run.runtime.reduce(sums, tokens)
    run.runtime.write_checkpoint(out_dir, run.model, run.policy, run.tok, run.optimizer, run.state, settings)
    metrics = {k: v / max(tokens, 1) for k, v in sums.items() if k != "loss"}
    metrics.update(
        loss=sums.get("loss", 0.0) / settings.section.optimizer_steps,
        grad_norm=sum(grad_norms) / max(len(grad_norms), 1),
        tokens=float(tokens),
        seconds=time.perf_counter() - t0,
        updates=float(run.state.updates),
        skipped_steps=skipped,  # optimizer steps not taken: every advantage of their samples was zero
        lr=settings.section.learning_rate,
    )
    return metrics


@dataclass
class _UpdateRun:
    """What one update works on: where it runs, the model its forwards go through, the policy (the HF model
    itself: saving, adapters), its tokenizer, optimizer and saved state."""

    runtime: Runtime
    model: Any
    policy: Any
    tok: Any
    optimizer: Any
    state: TrainerState


def _setup_update(
    ckpt: str | Path, settings: UpdateSettings, reference_model: str | None, lora_base: str | None
) -> _UpdateRun:
    """Load the policy, optimizer and RNG state of ``ckpt`` onto this process's device (docs/method.md §6, §9)."""
    runtime = runtime_for(settings)
    return _UpdateRun(runtime, *runtime.prepare(ckpt, settings, reference_model, lora_base))


def _frozen_logprobs(
    run: _UpdateRun, batch: RLBatch, settings: UpdateSettings, ckpt: str | Path
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Old and reference log-probs of every sample, before any step (docs/method.md §6), by sample index.

    With ONE optimizer step the policy that sampled is the current one, so old = current log-probs
    detached (identical, one forward saved) and none are computed here; ``ratio_to_current`` (the sft
    objective) asks for that on every step. Reference log-probs only when ``kl_coef`` > 0.
    """
    need_old = settings.section.optimizer_steps > 1 and not settings.ratio_to_current
    need_ref = settings.section.kl_coef > 0
    rt = run.runtime
    reference = None
    if need_ref and settings.section.lora is None:
        from tango_steps.models.loading import load_model

        if run.state.reference_model is None:
            raise ValueError(f"checkpoint '{ckpt}' names no reference model but kl_coef > 0")
        # in bf16 when the update runs in bf16: its forward is autocast to bf16 anyway, and an fp32 copy would be
        # the largest item of a sharded update (4 bytes per parameter on every GPU; docs/scaling.md)
        dtype = "bfloat16" if rt.bf16 else "float32"
        reference = load_model(run.state.reference_model, dtype).to(rt.device).eval()
    old_lp: dict[int, torch.Tensor] = {}
    ref_lp: dict[int, torch.Tensor] = {}
    policy = rt.frozen_model(run.model)
    run.model.eval()
    with torch.no_grad(), rt.autocast():
        for mb in rt.frozen_micro_batches(len(batch), settings):
            if not mb:  # an empty micro-batch: an FSDP forward all-gathers, so every process runs one
                if need_old and rt.empty_forwards:
                    t = pack(batch, [0], run.tok.pad_token_id, rt.device)
                    rt.logprobs(policy, t["ids"], t["attn"], settings)
                continue
            t = pack(batch, mb, run.tok.pad_token_id, rt.device)
            if need_old:
                lp, _ = rt.logprobs(policy, t["ids"], t["attn"], settings, with_entropy=False)
                for r, i in enumerate(mb):
                    old_lp[i] = lp[r].float()
            if need_ref:
                if reference is not None:
                    lp, _ = sequence_logprobs(
                        reference,
                        t["ids"],
                        t["attn"],
                        settings.section.logprob_chunk_size,
                        settings.temperature,
                        settings.section.logprob_backend,
                        with_entropy=False,
                    )
                else:  # LoRA: the reference is the base model with adapters disabled, no second copy
                    with run.policy.disable_adapter():
                        lp, _ = rt.logprobs(policy, t["ids"], t["attn"], settings, with_entropy=False)
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
    rt, model, optimizer = run.runtime, run.model, run.optimizer
    need_old, need_ref = bool(old_lp), bool(ref_lp)
    weights = torch.tensor(batch.sample_weights, dtype=torch.float32) if batch.sample_weights is not None else None
    model.train()
    sums: dict[str, float] = {}
    grad_norms: list[float] = []
    tokens_total = 0
    slices = step_slices(len(batch), settings)
    for step_idx, mini in enumerate(slices):
        if not mini:
            continue
        if all(a == 0.0 for i in mini for a in batch.advantages[i]):
            # no policy-gradient signal: the KL and entropy terms alone would still move every weight by about the
            # learning rate (AdamW normalises the step), e.g. shortening answers with nothing rewarding it. Every
            # process holds the whole batch, so all of them skip the same step, before any collective
            sums["skipped_steps"] = sums.get("skipped_steps", 0.0) + 1.0
            if log is not None:
                log(f"update step {step_idx + 1}/{len(slices)}: every advantage is zero; optimizer step skipped")
            continue
        # the step's GLOBAL token count: each process's loss is a share of the one-process loss
        n_tokens = float(sum(len(batch.response_ids[i]) for i in mini)) or 1.0
        optimizer.zero_grad(set_to_none=True)
        mbs = rt.micro_batches(mini, settings)
        for mb_idx, mb in enumerate(mbs):
            if log is not None and (mb_idx % max(1, len(mbs) // 10) == 0 or mb_idx == len(mbs) - 1):
                rate = tokens_total / max(time.perf_counter() - t0, 1e-9)
                log(f"update step {step_idx + 1}: micro-batch {mb_idx + 1}/{len(mbs)}, {rate:.0f} tokens/s so far")
            with rt.gradient_sync(model, last=mb_idx == len(mbs) - 1):
                if not mb:  # several processes: this one has no samples left, but joins the collectives
                    t = pack(batch, mini[:1], run.tok.pad_token_id, rt.device)
                    with rt.autocast():
                        logp, ent = rt.logprobs(model, t["ids"], t["attn"], settings)
                    rt.backward((logp.sum() + ent.sum()) * 0.0)
                    continue
                t = pack(batch, mb, run.tok.pad_token_id, rt.device)
                with rt.autocast():
                    logp, ent = rt.logprobs(model, t["ids"], t["attn"], settings)
                width = logp.shape[1]
                old = stack_padded(old_lp, mb, width) if need_old else logp.detach()
                ref = stack_padded(ref_lp, mb, width) if need_ref else None
                loss, m = ppo_clip_loss(
                    logp.float(),
                    old,
                    t["adv"],
                    t["resp"],
                    ref_logp=ref,
                    entropy=ent.float(),
                    sample_weights=weights[mb].to(rt.device) if weights is not None else None,
                    clip_eps=settings.section.clip_eps,
                    kl_coef=settings.section.kl_coef,
                    entropy_coef=settings.section.entropy_coef,
                    num_tokens=n_tokens,
                )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss ({loss.item()}) in optimizer step {step_idx + 1}, micro-batch of samples "
                        f"{mb}; {where}"
                    )
                rt.backward(loss)
            mb_tokens = float(t["resp"].sum())
            tokens_total += int(mb_tokens)
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v * mb_tokens
        gn = rt.clip_grad_norm(model, settings.section.grad_clip)
        if not math.isfinite(gn):
            raise FloatingPointError(f"non-finite gradient norm ({gn}) in optimizer step {step_idx + 1}; {where}")
        grad_norms.append(gn)
        optimizer.step()
        run.state.updates += 1
        if log is not None:
            log(f"update step {step_idx + 1}/{len(slices)}: grad norm {gn:.4f}")
    return sums, grad_norms, tokens_total

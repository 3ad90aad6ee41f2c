"""Policy loss of both models and memory-safe token log-probabilities (docs/method.md §6).

PPO-clip surrogate (eps 0.2), "k3" KL to a frozen reference in the loss (beta 0.001, clamped to
[-10, 10]), entropy bonus (0.001; 0 for REINFORCE++), optional per-sample weights on the
policy-gradient term only (the verifier's class-aware reweighting, docs/method.md §5), token-mean over the
batch. No critic.

Log-probabilities are computed from the final hidden states in chunks of tokens, each chunk's
``lm_head`` + log-softmax under activation checkpointing, so the (B, T, V) float logits of a whole
batch never exist at once (measured on an H100: a naive version needs 61 GB for a 0.5B model at
16 x 1024 tokens and runs out of memory at 1.5B; ENVIRONMENT.md).
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

KL_CLAMP = 10.0  # docs/method.md §6: k3 clamped to [-10, 10] so one outlier token cannot dominate


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = KL_CLAMP) -> torch.Tensor:
    """k3 estimator of KL(pi || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1, clamped (docs/method.md §6)."""
    d = ref_logp - logp
    return (torch.exp(d) - d - 1.0).clamp(min=-clamp, max=clamp)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, denom: float | torch.Tensor | None = None) -> torch.Tensor:
    """sum(x * mask) / denom, denom defaulting to sum(mask) (token-mean, docs/method.md §6)."""
    mask = mask.to(x.dtype)
    if denom is None:
        denom = mask.sum().clamp(min=1.0)
    return (x * mask).sum() / denom


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_eps: float,
    kl_coef: float,
    entropy_coef: float,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip policy loss with k3 KL and entropy bonus, token-mean (docs/method.md §6).

        ratio = exp(logp - old_logp)
        pg    = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) * s       (s: sample weight, §5)
        loss  = token_mean(pg + beta * k3(logp, ref) - c_ent * entropy)

    Args:
        logp: (B, T) log-probs of the taken tokens under the current policy (with grad).
        old_logp: (B, T) log-probs under the policy that sampled (no grad).
        advantages: (B, T) per-token advantages.
        response_mask: (B, T) 1 on response tokens.
        ref_logp: (B, T) reference log-probs; needed when ``kl_coef`` > 0.
        entropy: (B, T) per-token entropy of the current policy; needed when ``entropy_coef`` > 0.
        sample_weights: (B,) weights on the policy-gradient term only (not KL or entropy).
        clip_eps: PPO clip range, 0.2.
        kl_coef: beta, 0.001.
        entropy_coef: 0.001 (0 for REINFORCE++).
        num_tokens: token-mean denominator; pass the WHOLE batch's token count when micro-batching
            with gradient accumulation, so that the sum of micro-batch losses is the batch token-mean.

    Returns:
        ``loss`` (scalar) and metrics ``pg_loss``, ``kl``, ``entropy``, ``clip_frac``, ``ratio_mean``
        (means over this call's tokens).
    """
    mask = response_mask.to(logp.dtype)
    denom = mask.sum().clamp(min=1.0) if num_tokens is None else float(num_tokens)
    old_logp = old_logp.detach()
    ratio = torch.exp(logp - old_logp)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    pg = torch.maximum(pg1, pg2)  # (B, T)
    if sample_weights is not None:
        pg = pg * sample_weights.to(pg.dtype)[:, None]
    per_token = pg
    metrics: dict[str, float] = {}
    n = mask.sum().clamp(min=1.0)
    if kl_coef > 0.0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp")
        kl = kl_k3(logp, ref_logp.detach())
        per_token = per_token + kl_coef * kl
        metrics["kl"] = float((kl.detach() * mask).sum() / n)
    elif ref_logp is not None:
        metrics["kl"] = float((kl_k3(logp.detach(), ref_logp) * mask).sum() / n)
    if entropy_coef > 0.0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs entropy")
        per_token = per_token - entropy_coef * entropy
    if entropy is not None:
        metrics["entropy"] = float((entropy.detach() * mask).sum() / n)
    loss = masked_mean(per_token, mask, denom)
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > clip_eps).to(mask.dtype)
        metrics["pg_loss"] = float((pg.detach() * mask).sum() / n)
        metrics["clip_frac"] = float((clipped * mask).sum() / n)
        metrics["ratio_mean"] = float((ratio.detach() * mask).sum() / n)
    return loss, metrics


# ----------------------------------------------------------------------------------------------
# Token log-probabilities
# ----------------------------------------------------------------------------------------------


def _chunk_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = F.linear(hidden, weight, bias)  # (n, V)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # log-softmax in fp32 for accuracy
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def chunked_token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    lm_head_bias: torch.Tensor | None = None,
    chunk_size: int = 2048,
    temperature: float = 1.0,
    checkpoint_chunks: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``labels`` and entropies, chunk by chunk of tokens (docs/method.md §6, memory).

    Only one chunk's (chunk_size, V) logits exist at a time; with ``checkpoint_chunks`` (and grad
    enabled) they are recomputed in backward instead of kept, so peak memory is O(chunk_size x V)
    instead of O(B x T x V).

    Args:
        hidden: (B, T, H) final hidden states (after the final norm), aligned with ``labels``.
        lm_head_weight: (V, H) output projection.
        labels: (B, T) long, the token whose log-prob is wanted at each position.
        lm_head_bias: (V,) or None.
        chunk_size: tokens per chunk.
        temperature: logits are divided by it (match the sampling temperature for old/ref log-probs).
        checkpoint_chunks: recompute each chunk in backward (saves memory; costs one extra matmul).

    Returns:
        ``logp`` (B, T) and ``entropy`` (B, T), in float32 (or the input dtype if float64).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, t, h = hidden.shape
    flat_h = hidden.reshape(b * t, h)
    flat_y = labels.reshape(b * t)
    use_ckpt = checkpoint_chunks and torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    logps, ents = [], []
    for s in range(0, b * t, chunk_size):
        args = (flat_h[s : s + chunk_size], lm_head_weight, lm_head_bias, flat_y[s : s + chunk_size], temperature)
        if use_ckpt:
            lp, en = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, en = _chunk_logprobs(*args)
        logps.append(lp)
        ents.append(en)
    return torch.cat(logps).reshape(b, t), torch.cat(ents).reshape(b, t)


def liger_unavailable(device: torch.device) -> str | None:
    """Why liger-kernel cannot compute the update's log-probs (docs/method.md §6) on ``device``, or None when it can.

    Its kernels are Triton kernels: they run on CUDA devices, or anywhere under Triton's
    interpreter (``TRITON_INTERPRET=1``, numpy-speed, what the CPU tests use).
    """
    if importlib.util.find_spec("liger_kernel") is None or importlib.util.find_spec("triton") is None:
        return "liger-kernel (and triton) is not installed: pip install liger-kernel"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"its Triton kernels run on CUDA devices, and the model is on {device.type}"
    return None


def liger_token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    lm_head_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-probabilities of ``labels`` through liger-kernel's fused linear cross-entropy (docs/method.md §6).

    The kernel projects and normalises chunk by chunk on the GPU and never keeps the logits: what
    :func:`chunked_token_logprobs` does in PyTorch, fused, and with its backward recomputing the
    chunks itself (``reduction="none"`` folds each token's upstream gradient in before the weight
    gradient is summed). It returns no entropy. The temperature divides the logits, so it divides
    the hidden states and the bias ((h / T) W^T + b / T = logits / T). Weight and bias are cast to
    the hidden states' dtype, as autocast would cast them for the matmul (the cast is differentiable,
    so fp32 master weights still get their gradient).

    Args:
        hidden: (B, T, H) final hidden states, aligned with ``labels``.
        lm_head_weight: (V, H) output projection.
        labels: (B, T) long.
        lm_head_bias: (V,) or None.
        temperature: logits are divided by it.

    Returns:
        ``logp`` (B, T), float32.
    """
    from liger_kernel.ops import LigerFusedLinearCrossEntropyFunction

    b, t, h = hidden.shape
    x = hidden.reshape(b * t, h)
    weight = lm_head_weight.to(x.dtype)
    bias = lm_head_bias.to(x.dtype) if lm_head_bias is not None else None
    if temperature != 1.0:
        x = x / temperature
        bias = bias / temperature if bias is not None else None
    # positional: input, weight, target, bias, ce_weight, ignore_index, lse_square_scale,
    # label_smoothing, reduction (every label is a real token, so nothing is ignored)
    nll, *_ = LigerFusedLinearCrossEntropyFunction.apply(
        x.contiguous(), weight, labels.reshape(b * t), bias, None, -100, 0.0, 0.0, "none"
    )
    return -nll.float().reshape(b, t)


def token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    lm_head_bias: torch.Tensor | None = None,
    chunk_size: int = 2048,
    temperature: float = 1.0,
    backend: str = "chunked",
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``labels`` (and entropies) by the configured backend
    (docs/method.md §6; ``update.logprob_backend``).

    ``chunked`` is :func:`chunked_token_logprobs`. ``liger`` is :func:`liger_token_logprobs` where
    liger-kernel can run (:func:`liger_unavailable`), and the chunked path, with a warning, where it
    cannot. The liger path has no entropy: with ``with_entropy`` (the training pass's metric; the
    config requires ``entropy_coef`` 0 with liger, so no gradient goes through it) it is computed
    by the chunked path without gradient, else None.
    """
    if backend not in ("chunked", "liger"):
        raise ValueError(f"logprob backend must be chunked or liger, got {backend!r}")
    if backend == "liger":
        why = liger_unavailable(hidden.device)
        if why is None:
            logp = liger_token_logprobs(hidden, lm_head_weight, labels, lm_head_bias, temperature)
            if not with_entropy:
                return logp, None
            with torch.no_grad():
                _, entropy = chunked_token_logprobs(
                    hidden.detach(), lm_head_weight, labels, lm_head_bias, chunk_size, temperature
                )
            return logp, entropy
        warnings.warn(f"logprob_backend liger: {why}; using the chunked path", stacklevel=2)
    return chunked_token_logprobs(hidden, lm_head_weight, labels, lm_head_bias, chunk_size, temperature)

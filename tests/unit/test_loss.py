"""Tests of tango_steps.method.loss (docs/method.md §6)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tango_steps.method.loss import (
    chunked_token_logprobs,
    kl_k3,
    ppo_clip_loss,
)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive reference: log p(label) and entropy from the full (B, T, V) logits."""
    logp_all = F.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def test_ppo_clip_hand_example():
    # Two tokens of one response, advantage +1 on both.
    # token 0: ratio e^0.5 = 1.6487 > 1.2 -> clipped: pg = -1 * 1.2 (max(-1.6487, -1.2) = -1.2)
    # token 1: ratio e^-0.1 = 0.9048 inside the range: pg = -0.9048
    logp = torch.tensor([[0.5, -0.1]], requires_grad=True)
    old = torch.zeros(1, 2)
    adv = torch.ones(1, 2)
    mask = torch.ones(1, 2)
    loss, m = ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2, kl_coef=0.0, entropy_coef=0.0)
    assert loss.item() == pytest.approx((-1.2 - math.exp(-0.1)) / 2, abs=1e-6)
    assert m["clip_frac"] == 0.5
    loss.backward()
    # clipped token has no gradient; the other has d/dlogp (-ratio) / 2
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -math.exp(-0.1) / 2], abs=1e-6)


def test_negative_advantage_clips_below():
    # A = -1, ratio 0.5 < 0.8: max(0.5, 0.8) = 0.8 -> clipped, no gradient
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    loss, m = ppo_clip_loss(
        logp, torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1), clip_eps=0.2, kl_coef=0.0, entropy_coef=0.0
    )
    assert loss.item() == pytest.approx(0.8)
    loss.backward()
    assert logp.grad.item() == 0.0
    assert m["clip_frac"] == 1.0


def test_kl_k3_values_and_clamp():
    logp = torch.tensor([0.0, -1.0, -30.0])
    ref = torch.tensor([0.0, 0.0, 0.0])
    k3 = kl_k3(logp, ref)
    assert k3[0].item() == 0.0
    assert k3[1].item() == pytest.approx(math.exp(1) - 1 - 1)  # d = 1: e - 1 - 1
    assert k3[2].item() == 10.0  # clamped
    assert torch.all(kl_k3(torch.randn(100), torch.randn(100)) >= 0)


def test_kl_entropy_and_sample_weights_enter_the_loss():
    torch.manual_seed(0)
    logp = torch.randn(2, 3)
    old = logp + 0.05 * torch.randn(2, 3)
    ref = logp + 0.3 * torch.randn(2, 3)
    adv = torch.randn(2, 3)
    ent = torch.rand(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    w = torch.tensor([0.5, 1.5])
    loss, m = ppo_clip_loss(
        logp, old, adv, mask, ref_logp=ref, entropy=ent, sample_weights=w, clip_eps=0.2, kl_coef=0.1, entropy_coef=0.01
    )
    ratio = torch.exp(logp - old)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)) * w[:, None]
    d = ref - logp
    kl = torch.exp(d) - d - 1
    expected = ((pg + 0.1 * kl - 0.01 * ent) * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert m["kl"] == pytest.approx(((kl * mask).sum() / mask.sum()).item(), abs=1e-6)
    assert m["entropy"] == pytest.approx(((ent * mask).sum() / mask.sum()).item(), abs=1e-6)
    # weights do not touch KL/entropy: all-zero weights leave exactly the KL and entropy terms
    loss0, _ = ppo_clip_loss(logp, old, adv, mask, ref_logp=ref, entropy=ent, sample_weights=torch.zeros(2),
                             clip_eps=0.2, kl_coef=0.1, entropy_coef=0.01)  # fmt: skip
    assert loss0.item() == pytest.approx((((0.1 * kl - 0.01 * ent) * mask).sum() / mask.sum()).item(), abs=1e-6)


def test_num_tokens_makes_micro_batches_add_up_to_the_batch_token_mean():
    torch.manual_seed(1)
    logp, old, adv = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    mask = (torch.rand(4, 5) > 0.3).float()
    full, _ = ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2, kl_coef=0.0, entropy_coef=0.0)
    n = mask.sum().item()
    parts = [ppo_clip_loss(logp[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], clip_eps=0.2, kl_coef=0.0,
                           entropy_coef=0.0, num_tokens=n)[0] for i in (0, 2)]  # fmt: skip
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 8), st.integers(0, 2**16))
def test_gradient_is_zero_with_zero_advantages_and_beta_zero(b, t, seed):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(b, t, generator=g, dtype=torch.float64, requires_grad=True)
    old = torch.randn(b, t, generator=g, dtype=torch.float64)
    ref = torch.randn(b, t, generator=g, dtype=torch.float64)
    loss, _ = ppo_clip_loss(logp, old, torch.zeros(b, t, dtype=torch.float64), torch.ones(b, t), ref_logp=ref,
                            clip_eps=0.2, kl_coef=0.0, entropy_coef=0.0)  # fmt: skip
    loss.backward()
    assert torch.all(logp.grad == 0)


def test_missing_inputs_are_named():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_logp"):
        ppo_clip_loss(x, x, x, x, clip_eps=0.2, kl_coef=0.1, entropy_coef=0.0)
    with pytest.raises(ValueError, match="entropy_coef > 0 needs entropy"):
        ppo_clip_loss(x, x, x, x, clip_eps=0.2, kl_coef=0.0, entropy_coef=0.1)


# ----------------------------------------------------------------------------------------------
# Chunked log-probs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_equals_naive_float64(chunk_size, bias):
    torch.manual_seed(0)
    b, t, h, v = 3, 11, 16, 37
    hidden = torch.randn(b, t, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    lm_bias = torch.randn(v, dtype=torch.float64) if bias else None
    labels = torch.randint(0, v, (b, t))

    logits = hidden @ weight.T + (lm_bias if bias else 0)
    lp_naive, ent_naive = logprobs_from_logits(logits / 0.7, labels)
    (lp_naive.sum() + 0.3 * ent_naive.sum()).backward()
    g_hidden, g_weight = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None

    lp, ent = chunked_token_logprobs(
        hidden, weight, labels, lm_head_bias=lm_bias, chunk_size=chunk_size, temperature=0.7
    )
    assert lp.dtype == torch.float64
    torch.testing.assert_close(lp, lp_naive, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent, ent_naive, atol=1e-6, rtol=0)
    (lp.sum() + 0.3 * ent.sum()).backward()
    torch.testing.assert_close(hidden.grad, g_hidden, atol=1e-6, rtol=0)
    torch.testing.assert_close(weight.grad, g_weight, atol=1e-6, rtol=0)


def test_chunked_without_grad_and_without_checkpoint():
    torch.manual_seed(2)
    hidden, weight = torch.randn(2, 5, 8), torch.randn(13, 8)
    labels = torch.randint(0, 13, (2, 5))
    with torch.no_grad():
        lp, _ = chunked_token_logprobs(hidden, weight, labels, chunk_size=3)
    lp2, _ = chunked_token_logprobs(hidden, weight, labels, chunk_size=3, checkpoint_chunks=False)
    torch.testing.assert_close(lp, lp2)
    torch.testing.assert_close(lp, logprobs_from_logits(hidden @ weight.T, labels)[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunked_token_logprobs(hidden, weight, labels, chunk_size=0)


def test_bf16_hidden_gives_fp32_logprobs():
    hidden = torch.randn(1, 4, 8, dtype=torch.bfloat16)
    weight = torch.randn(10, 8, dtype=torch.bfloat16)
    lp, ent = chunked_token_logprobs(hidden, weight, torch.zeros(1, 4, dtype=torch.long))
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    lp_naive, _ = logprobs_from_logits(hidden @ weight.T, torch.zeros(1, 4, dtype=torch.long))
    torch.testing.assert_close(lp, lp_naive)


def test_chunking_bounds_the_largest_logits_tensor():
    """The autograd graph keeps no (B*T, V) tensor: saved tensors are at most one chunk of logits."""
    b, t, h, v, chunk = 4, 64, 16, 500, 32
    hidden = torch.randn(b, t, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    labels = torch.randint(0, v, (b, t))
    largest = 0

    def pack(x):
        nonlocal largest
        largest = max(largest, x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        lp, _ = chunked_token_logprobs(hidden, weight, labels, chunk_size=chunk)
    assert largest < b * t * v / 4  # naive would save the full (256, 500) log-softmax
    lp.sum().backward()
    assert hidden.grad is not None

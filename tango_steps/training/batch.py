"""What an update trains on and how it is dealt out (docs/method.md §4-§6): the RL batch, its padded tensors,
the samples of each optimizer step and each process's micro-batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tango_steps.training.settings import UpdateSettings


@dataclass
class RLBatch:
    """What an update trains on: token ids, per-token advantages and optional sample weights (docs/method.md §4-§6).

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


def pack(batch: RLBatch, idx: list[int], pad_id: int, device) -> dict[str, torch.Tensor]:
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


def stack_padded(per_sample: dict[int, torch.Tensor], idx: list[int], width: int) -> torch.Tensor:
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


def micro_batches(indices: list[int], size: int) -> list[list[int]]:
    """``indices`` in consecutive micro-batches of ``size`` (the last may be shorter)."""
    return [indices[s : s + size] for s in range(0, len(indices), size)]


def step_slices(n: int, settings: UpdateSettings) -> list[list[int]]:
    """The samples of each optimizer step: equal interleaved slices of the batch."""
    all_idx = list(range(n))
    return [all_idx[s :: settings.section.optimizer_steps] for s in range(settings.section.optimizer_steps)]


def rank_micro_batches(indices: list[int], size: int, rank: int, world: int) -> list[list[int]]:
    """This process's micro-batches of one optimizer step: samples ``indices[rank::world]`` in
    micro-batches of ``size``, padded with empty ones to the count of the busiest process.

    Every process must run as many forwards and backwards (FSDP all-gathers parameters in each
    forward, DDP reduces gradients in one backward per step), so a process with fewer samples runs
    an empty micro-batch: a forward whose loss is multiplied by zero.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    count = max(-(-len(indices[r::world]) // size) for r in range(world))
    mine = micro_batches(indices[rank::world], size)
    return mine + [[] for _ in range(count - len(mine))]

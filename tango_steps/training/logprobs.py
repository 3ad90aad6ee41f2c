"""Token log-probs and entropies of a policy on packed sequences (docs/method.md §6), never building full logits."""

from __future__ import annotations

import torch

from tango_steps.method.loss import token_logprobs
from tango_steps.training.checkpoint import causal_lm


def sequence_logprobs(
    model,
    ids: torch.Tensor,
    attn: torch.Tensor,
    chunk_size: int,
    temperature: float = 1.0,
    backend: str = "chunked",
    with_entropy: bool = True,
):
    """Log-probs and entropies of tokens 1..L-1 given their prefixes, (B, L-1) each (docs/method.md §6).

    Runs the decoder for hidden states and the LM head chunk by chunk (or liger-kernel's fused
    kernel, ``backend``), never building full logits. The entropies are None only for the liger
    backend without ``with_entropy`` (the no-grad passes that discard them).
    """
    lm = causal_lm(model)
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


class LogprobModule(torch.nn.Module):
    """The policy's token log-probs and entropies as ONE module forward (what DDP and FSDP wrap).

    :func:`~tango_steps.training.update.sequence_logprobs` calls the decoder and the LM head separately
    (chunked, never full logits); DDP prepares its gradient reduction and FSDP all-gathers the root's
    parameters (embeddings, final norm, head) only inside the wrapped module's forward, so that call
    is this module's forward.
    """

    def __init__(self, policy: torch.nn.Module, chunk_size: int, temperature: float, backend: str = "chunked") -> None:
        super().__init__()
        self.policy = policy
        self.chunk_size = chunk_size
        self.temperature = temperature
        self.backend = backend

    def forward(self, ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L-1) log-probs and entropies of tokens 1..L-1, as ``sequence_logprobs``."""
        from tango_steps.training.logprobs import sequence_logprobs

        logp, entropy = sequence_logprobs(self.policy, ids, attn, self.chunk_size, self.temperature, self.backend)
        # FSDP hooks the outputs for its backward; a view's hook would be lost to an in-place op
        return logp.clone(), entropy.clone()

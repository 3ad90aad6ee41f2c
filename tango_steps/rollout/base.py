"""The rollout-engine interface shared by the HF and vLLM engines (docs/method.md §3 sampling).

An engine samples ``n`` completions per prompt and returns, for each, the text, the sampled token
ids, the log-probability of each sampled token under the model's raw distribution (temperature 1,
before top-p: what the trainer recomputes as old log-probs) and why it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tango_steps.config import ModelConfig, RolloutConfig, SamplingConfig, schema_default


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample (docs/method.md §3: T = 1.0, top-p 1, up to 2048 new tokens for the generator).

    Attributes:
        n: completions per prompt (M for the generator, N for the verifier).
        temperature: 0 means greedy.
        top_p: nucleus mass.
        max_tokens: new-token limit; a completion that hits it has finish_reason "length".
        seed: sampling seed; the same prompts, settings and weights give the same samples.
        logprobs: also return each sampled token's log-prob (nothing in a round reads them: engine checks do).
    """

    n: int = schema_default(SamplingConfig, "n")
    temperature: float = schema_default(SamplingConfig, "temperature")
    top_p: float = schema_default(SamplingConfig, "top_p")
    max_tokens: int = schema_default(SamplingConfig, "max_tokens")
    seed: int = 0
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"sampling.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Completion:
    """One sampled completion (docs/method.md §3).

    Attributes:
        text: decoded completion (special tokens dropped).
        token_ids: sampled token ids, the eos token included when it was sampled.
        logprobs: log p(token) of each sampled token under the raw model distribution, when asked for
            (``SamplingSettings.logprobs``), else None.
        finish_reason: "stop" (eos) or "length" (hit max_tokens: truncated).
        prompt_truncated: the prompt was cut to the maximum prompt length first.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    prompt_truncated: bool = False

    @property
    def truncated(self) -> bool:
        """Whether the completion hit the token limit (docs/method.md §3 max length)."""
        return self.finish_reason == "length"


class RolloutEngine:
    """Base class (docs/method.md §3): ``generate`` n completions per prompt."""

    name = "base"
    tokenizer: Any = None  # the model's tokenizer: callers count prompt tokens and align steps with it
    max_prompt_tokens: int = schema_default(RolloutConfig, "max_prompt_tokens")
    on_long_prompt: str = schema_default(RolloutConfig, "on_long_prompt")
    prompt_format: str = schema_default(ModelConfig, "prompt_format")

    def prompt_ids(self, prompts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """The token ids this engine samples from for ``prompts`` (formatted, tokenised, fitted: see
        :func:`prepare_prompts`) and which were cut; the RL batch trains on exactly these."""
        return prepare_prompts(self.tokenizer, prompts, self.max_prompt_tokens, self.on_long_prompt, self.prompt_format)

    @classmethod
    def from_config(cls, cfg, model_path: str, seed: int = 0, **common: Any) -> RolloutEngine:
        """The engine a ``RolloutConfig`` section describes; ``common``: prompt limits and dtype (docs/method.md §3)."""
        return cls(model_path, **common)

    def generate(self, prompts: list[str], sampling: SamplingSettings) -> list[list[Completion]]:  # pragma: no cover
        """n completions for each prompt, in prompt order (docs/method.md §3)."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the engine's resources (docs/method.md §3)."""

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_prompts(tokenizer, prompts: list[str], prompt_format: str, what: str = "model") -> list[str]:
    """The prompts as the model expects them (``ModelConfig.prompt_format``).

    A chat model answers a bare prompt badly (SmolLM2-135M-Instruct scored 0/50 on GSM8K without its
    template): ``chat`` (and ``auto`` when the tokenizer has a chat template) puts each prompt in a
    user turn and opens the assistant's turn (``add_generation_prompt``); ``raw`` keeps it as is. The
    result is text whose special tokens the tokenizer maps back to their ids (tokenised without
    adding special tokens, so a template that writes its own BOS does not get a second one).
    """
    if prompt_format not in ("auto", "chat", "raw"):
        raise ValueError(f"{what}.prompt_format must be 'auto', 'chat' or 'raw', got {prompt_format!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt_format == "raw" or (prompt_format == "auto" and not has_template):
        return list(prompts)
    if not has_template:
        raise ValueError(f"{what}.prompt_format is 'chat' but its tokenizer has no chat template (use 'auto' or 'raw')")
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def prepare_prompts(
    tokenizer, prompts: list[str], max_prompt_tokens: int, on_long_prompt: str, prompt_format: str = "raw"
) -> tuple[list[list[int]], list[bool]]:
    """Format (:func:`format_prompts`) and tokenise prompts and apply the long-prompt policy (docs/method.md §3;
    bad input is counted).

    ``on_long_prompt``: "truncate" keeps the LAST ``max_prompt_tokens`` tokens (the question's end
    and the answer cue survive); "reject" raises naming the first offending prompt.
    """
    if on_long_prompt not in ("truncate", "reject"):
        raise ValueError(f"on_long_prompt must be 'truncate' or 'reject', got {on_long_prompt!r}")
    prompts = format_prompts(tokenizer, prompts, prompt_format)
    ids, cut = [], []
    for i, p in enumerate(prompts):
        toks = tokenizer(p, add_special_tokens=False)["input_ids"]
        if len(toks) > max_prompt_tokens:
            if on_long_prompt == "reject":
                raise ValueError(
                    f"prompt {i} has {len(toks)} tokens, more than max_prompt_tokens={max_prompt_tokens} "
                    f"(set on_long_prompt='truncate' to cut it): {p[:80]!r}..."
                )
            toks = toks[-max_prompt_tokens:]
            cut.append(True)
        else:
            cut.append(False)
        if not toks:
            toks = [tokenizer.eos_token_id]
        ids.append(toks)
    return ids, cut

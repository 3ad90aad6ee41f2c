"""The @parallel check's fixed update and its comparison with one process (tests/flows/parallel_update_flow.py).

Test machinery: a small fixed update to run on N nodes, and whether its result matches the same update on one
process within float tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def check_case(folder: Path, processes: int, strategy: str = "ddp"):
    """A small fixed update to run on N nodes: a random tiny model's first checkpoint, a batch that
    gives some process an empty micro-batch, settings with two optimizer steps and a KL term, and
    the same update on ONE process (the reference). Returns (ckpt0, batch, settings, reference)."""
    from tango_steps.models.tiny import (
        TinyModelSpec,
        build_model,
        build_tokenizer,
        save_pretrained_atomic,
        tokenizer_corpus,
    )
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template
    from tango_steps.training.batch import RLBatch
    from tango_steps.training.checkpoint import init_checkpoint
    from tango_steps.training.settings import UpdateSettings
    from tango_steps.training.update import rl_update

    folder = Path(folder)
    tok = build_tokenizer(tokenizer_corpus(get_task("arithmetic"), get_template("compact"), n=300), vocab_size=384)
    spec = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=128, seed=3)
    model_dir = save_pretrained_atomic(
        build_model(spec, len(tok), tok.eos_token_id, tok.pad_token_id), tok, folder / "model"
    )
    settings = UpdateSettings.of(learning_rate=5e-3, kl_coef=0.01, micro_batch_size=2, optimizer_steps=2)
    g = torch.Generator().manual_seed(0)
    prompts = [tok(f"Problem: {i} + 1\nSolution:\n")["input_ids"] for i in range(10)]
    responses = [torch.randint(3, len(tok), (n,), generator=g).tolist() for n in (5, 9, 3, 7, 8, 4, 6, 2, 9, 5)]
    advantages = [[(1.0 if i % 3 else -1.0) * (1 + 0.1 * t) for t in range(len(r))] for i, r in enumerate(responses)]
    batch = RLBatch(prompts, responses, advantages)
    ckpt0 = init_checkpoint(str(model_dir), folder / "ckpt0", settings)
    reference = folder / "reference"
    rl_update(ckpt0, batch, settings, reference)
    return ckpt0, batch, settings.with_section(processes=processes, strategy=strategy), reference


def max_weight_difference(a: Path, b: Path) -> float:
    """The largest |a - b| over all weights of two checkpoints."""
    from safetensors.torch import load_file

    wa, wb = (load_file(Path(c) / "model" / "model.safetensors") for c in (a, b))
    if wa.keys() != wb.keys():
        raise ValueError(f"checkpoints '{a}' and '{b}' hold different tensors")
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def compare_with_one_process(updated: Path, reference: Path, start: Path, learning_rate: float) -> dict[str, Any]:
    """Whether an update on several processes/nodes matches the one-process ``reference`` from ``start``.

    AdamW moves a weight by up to lr a step whatever the gradient's size, so gradients summed in
    another order can move a weight whose gradient is near zero by a visible fraction of lr: the
    weights must agree to 1% of lr, and the update must have moved them by far more than that.
    """
    diff, moved, tolerance = (
        max_weight_difference(updated, reference),
        max_weight_difference(reference, start),
        0.01 * learning_rate,
    )
    return {"max_difference": diff, "moved": moved, "tolerance": tolerance, "matches": diff <= tolerance < moved / 100}

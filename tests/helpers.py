"""Test data shared by several lanes' tests (tests/ is on the import path through tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

# hostile model answers: each must be graded in bounded time and never evaluated (tests/unit/test_hostile.py one by
# one, tests/integration/test_hostile_batch.py as a batch)
HEAVY = {
    "one megabyte": "Step 1: " + "x" * (1 << 20) + "\n\\boxed{7}",
    "10,000 nested boxes": "\\boxed{" * 10_000 + "7" + "}" * 10_000,
    "unbalanced tags": "<answer>" * 5_000 + "\\boxed{" * 5_000 + "</step>" * 5_000,
    "NUL bytes": "Step 1: 3\x00+4\x00\n\\boxed{7\x00}",
    "invalid Unicode": "Step 1: \ud800\udfff\ufffe\n\\boxed{7\ud800}",
    "a power tower": "\\boxed{9^{9^{9^{9}}}}",  # sympy would evaluate it for hours: the grader's time-out
}

# the RL update on the tiny random model of tests/conftest.py (tests/unit/test_training.py, the full-disk test)
UPDATE = {"learning_rate": 5e-3, "kl_coef": 0.01, "entropy_coef": 0.0, "micro_batch_size": 2}


def update_batch(tokenizer):
    """Six prompts with random responses of mixed lengths and alternating-sign per-token advantages."""
    import torch

    from tango_steps.training.batch import RLBatch

    g = torch.Generator().manual_seed(0)
    prompts = [tokenizer(f"Problem: {i} + 1\nSolution:\n")["input_ids"] for i in range(6)]
    responses = [torch.randint(3, len(tokenizer), (int(n),), generator=g).tolist() for n in (5, 9, 3, 7, 8, 4)]
    advantages = [[(1.0 if i % 2 else -1.0) * (1 + 0.1 * t) for t in range(len(r))] for i, r in enumerate(responses)]
    return RLBatch(prompts, responses, advantages)


def fake_model_dir(root: Path) -> Path:
    """A checkpoint-shaped folder of random bytes (the model store moves files, it does not read them)."""
    d = root / "src"
    (d / "model").mkdir(parents=True)
    (d / "model" / "model.safetensors").write_bytes(os.urandom(4096))
    (d / "model" / "config.json").write_text('{"a": 1}')
    (d / "trainer_state.json").write_text("{}")
    return d

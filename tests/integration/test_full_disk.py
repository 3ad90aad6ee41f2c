"""A checkpoint that does not fit on the disk (a size-limited tmpfs mounted for the test: needs root)."""

from __future__ import annotations

import pytest
import torch

from tango_steps.training.batch import RLBatch
from tango_steps.training.checkpoint import init_checkpoint
from tango_steps.training.settings import UpdateSettings
from tango_steps.training.update import rl_update

SETTINGS = UpdateSettings.of(learning_rate=5e-3, kl_coef=0.01, entropy_coef=0.0, micro_batch_size=2)


@pytest.fixture()
def batch(tiny_tokenizer):
    g = torch.Generator().manual_seed(0)
    prompts = [tiny_tokenizer(f"Problem: {i} + 1\nSolution:\n")["input_ids"] for i in range(6)]
    responses = [torch.randint(3, len(tiny_tokenizer), (int(n),), generator=g).tolist() for n in (5, 9, 3, 7, 8, 4)]
    advantages = [[(1.0 if i % 2 else -1.0) * (1 + 0.1 * t) for t in range(len(r))] for i, r in enumerate(responses)]
    return RLBatch(prompts, responses, advantages)


@pytest.fixture()
def ckpt0(tmp_path, tiny_model_dir):
    return init_checkpoint(str(tiny_model_dir), tmp_path / "ckpt0", SETTINGS)


def test_a_checkpoint_that_does_not_fit_is_refused_or_named_and_leaves_nothing(ckpt0, batch, small_disk, monkeypatch):
    """The update's checkpoint (weights + AdamW state, 1.5 MiB) on a 1 MiB disk: refused before anything is
    written, naming what, how much and how much is free. And when the disk fills up during the write (the
    check passed: another process took the space), the writer's own error (torch.save says only
    "unexpected pos") is named as a full disk too. Neither leaves a file behind."""
    import re

    import tango_steps.training.checkpoint as training

    disk = small_disk(1)
    with pytest.raises(OSError, match=r"the disk is full: writing the checkpoint '.*c1' needs .* MiB are free"
                       r" on .* Nothing of it was kept .* then `resume`") as e:  # fmt: skip
        rl_update(ckpt0, batch, SETTINGS, disk / "c1")
    needed, free = map(float, re.search(r"needs ([\d.]+) MiB and ([\d.]+) MiB", str(e.value)).groups())
    assert e.value.errno == 28 and 1.0 < needed < 3.0 and 0.9 < free <= 1.0 and list(disk.iterdir()) == []
    monkeypatch.setattr(training, "free_bytes", lambda path: 1 << 40)  # the check passes; the write fails
    with pytest.raises(OSError, match=r"the disk is full: writing the checkpoint .* and 0\.\d MiB are free") as e:
        rl_update(ckpt0, batch, SETTINGS, disk / "c1")
    assert e.value.errno == 28 and list(disk.iterdir()) == []
    assert e.value.__cause__ is not None and "full" not in str(e.value.__cause__)  # the writer's own words

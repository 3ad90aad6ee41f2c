"""A checkpoint that does not fit on the disk (a size-limited tmpfs mounted for the test: needs root)."""

from __future__ import annotations

import pytest
from helpers import UPDATE, update_batch

from tango_steps.training.checkpoint import init_checkpoint
from tango_steps.training.settings import UpdateSettings
from tango_steps.training.update import rl_update

SETTINGS = UpdateSettings.of(**UPDATE)


@pytest.fixture()
def batch(tiny_tokenizer):
    return update_batch(tiny_tokenizer)


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

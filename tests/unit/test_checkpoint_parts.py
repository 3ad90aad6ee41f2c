"""Issue #35: a checkpoint keeps the serving weights apart from the training state, so a step fetches only what it
uses (docs/scaling.md): engines ``model/`` in the serving dtype, updates the fp32 master weights and the optimizer."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from helpers import UPDATE, update_batch
from safetensors.torch import load_file

from tango_steps.models.store import part_files
from tango_steps.training.checkpoint import MASTER, init_checkpoint, load_policy, master_weights, servable_model
from tango_steps.training.settings import UpdateSettings
from tango_steps.training.update import rl_update

FP32 = UpdateSettings.of(**UPDATE)
BF16 = dataclasses.replace(FP32, serving_dtype="bfloat16")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _size(root: Path, names: list[str]) -> int:
    return sum((root / n).stat().st_size for n in names)


def test_a_bf16_served_checkpoint_trains_on_its_fp32_master_weights(tmp_path, tiny_model_dir, tiny_tokenizer):
    """Served in bf16: ``model/`` holds bf16 weights (the engines' half), ``master/`` the fp32 ones, and the update
    continues from ``master/``: its weights are bit for bit those of the same update served in fp32."""
    batch = update_batch(tiny_tokenizer)
    a0 = init_checkpoint(str(tiny_model_dir), tmp_path / "a0", FP32)
    b0 = init_checkpoint(str(tiny_model_dir), tmp_path / "b0", BF16)
    assert not (a0 / MASTER).exists() and master_weights(a0) == a0 / "model"  # fp32 serving: one copy, as before
    assert master_weights(b0) == b0 / MASTER
    served = load_file(b0 / "model" / "model.safetensors")
    master = load_file(b0 / MASTER / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in served.values())
    assert all(t.dtype == torch.float32 for t in master.values())
    assert json.loads((b0 / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    rl_update(a0, batch, FP32, tmp_path / "a1")
    rl_update(b0, batch, BF16, tmp_path / "b1")
    a1 = load_file(tmp_path / "a1/model/model.safetensors")
    b1 = load_file(tmp_path / "b1" / MASTER / "model.safetensors")
    for k in a1:
        assert torch.equal(a1[k], b1[k]), k
    b1_served = load_file(tmp_path / "b1/model/model.safetensors")
    assert all(torch.equal(b1_served[k], b1[k].to(torch.bfloat16)) for k in b1)
    assert servable_model(tmp_path / "b1") == tmp_path / "b1" / "model"


def test_each_step_fetches_only_its_part(tmp_path, tiny_model_dir, tiny_tokenizer):
    """The model store's parts: an engine's (``serving``) is the bf16 weights and what loads them, about a sixth of
    an updated checkpoint; an update's (``training``) lacks only those, and the update runs from it alone."""
    b0 = init_checkpoint(str(tiny_model_dir), tmp_path / "b0", BF16)
    ckpt = tmp_path / "b1"
    rl_update(b0, update_batch(tiny_tokenizer), BF16, ckpt)
    names = _files(ckpt)
    serving, training = part_files(names, "serving"), part_files(names, "training")
    assert "model/model.safetensors" in serving and not any(n.startswith(MASTER) or "optimizer" in n for n in serving)
    assert "model/model.safetensors" not in training
    assert {"optimizer.pt", f"{MASTER}/model.safetensors"} <= set(training)
    assert set(serving) | set(training) == set(names)
    assert _size(ckpt, serving) < _size(ckpt, names) / 5  # bf16 weights of a checkpoint holding fp32 + 2 moments
    alone = tmp_path / "training-part"  # what an update step has after fetching its part
    for n in training:
        (alone / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt / n, alone / n)
    _, _, optimizer, state = load_policy(alone, BF16)
    assert state.updates == 1 and optimizer.state  # weights from master/, moments from optimizer.pt
    assert part_files(names, "all") == names

"""GPU-path defects of policy checkpoints (issue #35; tango_steps.training.checkpoint, docs/method.md §9).

None of these needs a GPU: the CUDA RNG is exercised through a stand-in for ``torch.cuda`` that behaves as
torch's does (``FakeCuda``), a fresh pod through empty caches, and the shared optimizer state through the
process's own memory map.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from helpers import UPDATE, update_batch
from safetensors.torch import load_file

from tango_steps.training.checkpoint import (
    STATE_FILE,
    init_checkpoint,
    load_policy,
    read_state,
    rng_state,
    servable_model,
    set_rng_state,
)
from tango_steps.training.settings import UpdateSettings
from tango_steps.training.update import rl_update

SETTINGS = UpdateSettings.of(**UPDATE)
LORA = UpdateSettings.of(learning_rate=2e-2, kl_coef=0.0, entropy_coef=0.0, lora={"r": 4, "alpha": 8})


class FakeCuda:
    """The RNG functions of ``torch.cuda`` for ``devices`` visible GPUs, this process on ``current``.

    Mirrors torch/cuda/random.py (torch 2.11-2.13): one generator per visible device in a tuple
    (``torch.cuda.default_generators``); ``get_rng_state(device="cuda")`` / ``set_rng_state(state,
    device="cuda")`` take an int, a str or a torch.device, "cuda" meaning the current device, and index
    that tuple, so a device past the visible ones raises IndexError as ``default_generators[idx]`` does;
    ``get_rng_state_all()`` is ``[get_rng_state(i) for i in range(device_count())]`` and
    ``set_rng_state_all(states)`` calls ``set_rng_state(state, i)`` for each saved state. A state is a
    16-byte ByteTensor (CUDA's Philox generator: seed and offset), returned as a copy.
    """

    def __init__(self, devices: int, current: int = 0) -> None:
        self.default_generators = tuple(torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(devices))
        self._current = current

    def is_available(self) -> bool:
        return len(self.default_generators) > 0

    def device_count(self) -> int:
        return len(self.default_generators)

    def current_device(self) -> int:
        return self._current

    def _index(self, device: int | str | torch.device) -> int:
        if isinstance(device, str):
            device = torch.device(device)
        elif isinstance(device, int):
            device = torch.device("cuda", device)
        return self._current if device.index is None else device.index

    def get_rng_state(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        return self.default_generators[self._index(device)].clone()

    def set_rng_state(self, new_state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        self.default_generators[self._index(device)].copy_(new_state)

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [self.get_rng_state(i) for i in range(self.device_count())]

    def set_rng_state_all(self, new_states) -> None:
        for i, state in enumerate(new_states):
            self.set_rng_state(state, i)


def _as_torch_cuda(monkeypatch, fake: FakeCuda) -> None:
    """Make ``torch.cuda``'s RNG functions the fake's for this test (the code's default ``cuda`` module)."""
    for name in ("is_available", "device_count", "current_device", "get_rng_state", "set_rng_state"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    for name in ("get_rng_state_all", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))


def test_fake_cuda_fails_as_torch_does_on_a_device_that_is_not_visible():
    """The stand-in refuses what torch refuses: 8 saved states set where 1 device is visible."""
    with pytest.raises(IndexError, match="tuple index out of range"):
        FakeCuda(1).set_rng_state_all(FakeCuda(8).get_rng_state_all())


def test_checkpoint_rng_state_from_8_visible_gpus_continues_where_1_is_visible(tmp_path, monkeypatch):
    """A rank of an 8-GPU node (all 8 visible under torchrun) saves; a 1-GPU pod resumes (issue #35, defect 6)."""
    eight = FakeCuda(devices=8, current=3)
    eight.set_rng_state(torch.arange(16, dtype=torch.uint8))  # this rank's device has drawn numbers
    _as_torch_cuda(monkeypatch, eight)
    torch.save(rng_state(), tmp_path / "rng_state.pt")  # as _write_checkpoint_files does

    one = FakeCuda(devices=1)
    _as_torch_cuda(monkeypatch, one)
    saved = torch.load(tmp_path / "rng_state.pt", weights_only=False)
    set_rng_state(saved)  # as load_policy does
    assert torch.equal(one.get_rng_state(0), torch.arange(16, dtype=torch.uint8))
    assert torch.equal(saved["cuda"], torch.arange(16, dtype=torch.uint8))  # its own device's, not 8 of them


def test_injected_cuda_module_and_old_checkpoints_holding_every_devices_state():
    """``cuda`` is injectable; a list (``get_rng_state_all``, before the fix) gives this device's entry, or
    the first where the writer saw fewer devices."""
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    eight = FakeCuda(devices=8, current=5)
    state = rng_state(cuda=eight)
    assert torch.equal(state["cuda"], eight.get_rng_state(5))
    old = {**state, "cuda": eight.get_rng_state_all()}
    two = FakeCuda(devices=2, current=1)
    set_rng_state(old, cuda=two)
    assert torch.equal(two.get_rng_state(1), eight.get_rng_state(1))
    assert torch.equal(two.get_rng_state(0), FakeCuda(2).get_rng_state(0))  # other devices untouched
    four = FakeCuda(devices=4, current=3)
    set_rng_state({**state, "cuda": [eight.get_rng_state(0)]}, cuda=four)
    assert torch.equal(four.get_rng_state(3), eight.get_rng_state(0))
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state


def _hub_cache(root: Path, repo: str, model_dir: Path) -> Path:
    """A Hugging Face hub cache at ``root`` holding ``repo`` as huggingface_hub lays out a download
    (``models--org--name/refs/main`` naming a ``snapshots/<revision>`` folder), as a pod that downloaded
    it has; ``snapshot_download(local_files_only=True)`` (resolve_model_ref, offline) reads it."""
    folder, revision = root / f"models--{repo.replace('/', '--')}", "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dir, folder / "snapshots" / revision)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return root


def _pod(monkeypatch, root: Path, repo: str, model_dir: Path) -> None:
    """This process as a pod whose caches are under ``root``: its hub cache (holding ``repo``) and an empty
    ``$TANGO_CACHE`` (where merged LoRA models are built)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hub_cache(root / "hub", repo, model_dir)))
    monkeypatch.setenv("TANGO_CACHE", str(root / "tango"))


def test_lora_checkpoint_names_its_base_by_reference_and_loads_on_a_fresh_pod(
    tmp_path, monkeypatch, tiny_model_dir, tiny_tokenizer
):
    """A LoRA run started from a hub model continues and is served on a pod with other caches (defect 9)."""
    repo = "tango-test/tiny-base"
    _pod(monkeypatch, tmp_path / "pod-a", repo, Path(tiny_model_dir))
    c0 = init_checkpoint(repo, tmp_path / "store/l0", LORA)
    rl_update(c0, update_batch(tiny_tokenizer), LORA, tmp_path / "store/l1")
    served_a = load_file(servable_model(tmp_path / "store/l1") / "model.safetensors")

    shutil.rmtree(tmp_path / "pod-a")  # a fresh pod: pod A's caches are not there ...
    _pod(monkeypatch, tmp_path / "pod-b", repo, Path(tiny_model_dir))  # ... its own are (the base downloaded)
    policy, _, optimizer, state = load_policy(tmp_path / "store/l1", LORA)
    assert state.lora_base == repo and optimizer is not None and state.updates == 1
    served = servable_model(tmp_path / "store/l1")
    assert served.is_relative_to(tmp_path / "pod-b/tango")
    merged = load_file(served / "model.safetensors")
    assert merged.keys() == served_a.keys() and all(torch.equal(merged[k], served_a[k]) for k in merged)
    ids = torch.tensor([tiny_tokenizer("Problem: 1 + 1\nSolution:\n")["input_ids"]])
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        want = policy.eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(served)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    for ckpt in ("l0", "l1"):  # the reference, not a path under the first pod's caches
        text = (tmp_path / "store" / ckpt / STATE_FILE).read_text()
        recorded = json.loads(text)
        assert recorded["lora_base"] == repo and recorded["reference_model"] == repo, recorded
        assert str(tmp_path / "pod-a") not in text


def test_lora_base_as_an_absolute_path_still_loads_and_a_missing_one_is_named(tmp_path, monkeypatch, tiny_model_dir):
    """Checkpoints written before the fix name an absolute path: it loads where it exists; where it does
    not, the error names the checkpoint, the field and the path."""
    monkeypatch.setenv("TANGO_CACHE", str(tmp_path / "cache"))
    c0 = init_checkpoint(str(tiny_model_dir), tmp_path / "l0", LORA)
    assert read_state(c0).lora_base == str(tiny_model_dir)  # absolute already: recorded as it is
    assert load_policy(c0, LORA, with_optimizer=False)[3].lora_base == str(tiny_model_dir)
    payload = json.loads((c0 / STATE_FILE).read_text())
    (c0 / STATE_FILE).write_text(json.dumps({**payload, "lora_base": str(tmp_path / "gone/model")}))
    with pytest.raises(ValueError, match=r"l0': its lora_base '.*gone/model' is not a model here.*does not exist"):
        load_policy(c0, LORA, with_optimizer=False)


def _mapped_file(t: torch.Tensor) -> str | None:
    """The file whose memory mapping holds ``t``'s storage (Linux ``/proc/self/maps``); None for memory
    of the process's own (a tensor read into the heap)."""
    addr = t.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= addr < hi:
            return fields[5] if len(fields) == 6 and fields[5].startswith("/") else None
    return None


def test_load_policy_maps_the_optimizer_state_from_its_file(tmp_path, tiny_model_dir, tiny_tokenizer):
    """The AdamW moments stay in the page cache (shared by every rank of a node), not read into each
    process's own memory (issue #35, defect 5)."""
    c0 = init_checkpoint(str(tiny_model_dir), tmp_path / "c0", SETTINGS)
    rl_update(c0, update_batch(tiny_tokenizer), SETTINGS, tmp_path / "c1")
    _, _, optimizer, _ = load_policy(tmp_path / "c1", SETTINGS)
    path = os.path.realpath(tmp_path / "c1/optimizer.pt")
    moments = [s[k] for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert len(moments) == 2 * len(optimizer.param_groups[0]["params"])
    assert [_mapped_file(t) for t in moments] == [path] * len(moments)
    read = torch.load(path, weights_only=True)  # the observable tells a copy in memory apart
    assert _mapped_file(read["state"][0]["exp_avg"]) is None

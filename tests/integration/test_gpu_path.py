"""Issue #35: the multi-process update's GPU-only rules, checked on CPU (docs/scaling.md).

NCCL has no CPU collectives and FSDP2's unsynced micro-batches hold unsharded gradients: neither shows on gloo
unless a test looks for it. These tests run the process-group code path in this process (a gloo group of one,
as torchrun's worker would see it) and through torchrun with one process (``TANGO_FORCE_PROCESS_GROUP``).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from helpers import UPDATE, update_batch
from safetensors.torch import load_file

from tango_steps.training import distributed, launch
from tango_steps.training.batch import pack
from tango_steps.training.checkpoint import init_checkpoint
from tango_steps.training.runtime import ProcessGroup, runtime_for
from tango_steps.training.settings import UpdateSettings
from tango_steps.training.update import rl_update


@pytest.fixture
def group_of_one(monkeypatch, tmp_path_factory):
    """This process as the only member of a gloo process group, as an update worker (torchrun) sees itself."""
    monkeypatch.setenv(launch.WORKER_ENV, "1")
    monkeypatch.setenv(distributed.STRICT_COLLECTIVES_ENV, "1")
    store = tmp_path_factory.mktemp("group") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_the_metric_reduction_puts_its_tensor_on_the_groups_device(group_of_one):
    """Defect 1: ``all_reduce_sums`` made a float64 tensor on the CPU whatever the group (NCCL raises on it after
    the update's compute, before its checkpoint). Under the strict check a tensor without a device fails here."""
    sums, tokens = distributed.all_reduce_sums({"kl": 1.5, "loss": -2.0}, 7)
    assert sums == {"kl": 1.5, "loss": -2.0} and tokens == 7


def test_the_strict_check_refuses_a_tensor_off_the_groups_device(group_of_one):
    """The check itself can fail: a collective given a tensor on another device is refused, naming both."""

    @distributed.collective
    def careless() -> None:
        dist.all_reduce(torch.ones(2))  # no device: the strict check's default device ("meta")

    with pytest.raises(RuntimeError, match=r"careless: dist.all_reduce got a tensor on meta.*device is cpu"):
        careless()


def test_fsdp_keeps_gradients_sharded_between_micro_batches(group_of_one, tiny_model_dir, tiny_tokenizer, tmp_path):
    """Defect 4: with the gradient sync off for all but a step's last micro-batch, FSDP2 holds each parameter's
    UNSHARDED gradient on every process (28 GiB per GPU for 7B) and leaves ``.grad`` empty until the last one.
    Every micro-batch's backward must reduce-scatter: each parameter's gradient is its shard, at once."""
    settings = UpdateSettings.of(**UPDATE, strategy="fsdp")
    ckpt = init_checkpoint(str(tiny_model_dir), tmp_path / "ckpt0", settings)
    rt = runtime_for(settings)
    assert isinstance(rt, ProcessGroup)
    model, _, tok, _, _ = rt.prepare(ckpt, settings, None, None)
    t = pack(update_batch(tiny_tokenizer), [0, 1], tok.pad_token_id, rt.device)
    with rt.gradient_sync(model, last=False):  # the first of several micro-batches
        logp, _ = rt.logprobs(model, t["ids"], t["attn"], settings)
        rt.backward((logp * t["resp"]).sum())
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.grad is not None for p in params)
    assert all(type(p.grad).__name__ == "DTensor" for p in params)  # a shard of the gradient, not a full copy


def test_an_update_through_a_process_group_of_one_ends_where_one_process_does(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                              monkeypatch):  # fmt: skip
    """``TANGO_FORCE_PROCESS_GROUP=1``: ``processes: 1`` still runs torchrun and the process-group path (what the
    device check uses to put the collectives on NCCL with one GPU), and lands where the one-process update does."""
    settings = UpdateSettings.of(**UPDATE, strategy="fsdp")  # micro-batches of 2: accumulation
    batch = update_batch(tiny_tokenizer)
    ckpt0 = init_checkpoint(str(tiny_model_dir), tmp_path / "ckpt0", settings)
    one = rl_update(ckpt0, batch, settings, tmp_path / "one")
    monkeypatch.setenv(launch.FORCE_GROUP_ENV, "1")
    monkeypatch.setenv(distributed.STRICT_COLLECTIVES_ENV, "1")
    lines: list[str] = []
    group = rl_update(ckpt0, batch, settings, tmp_path / "group", log=lines.append)
    assert any("torchrun" in line for line in lines), lines  # the group path ran, not this process's
    assert group["launch_seconds"] > 0
    assert group["loss"] == pytest.approx(one["loss"], rel=1e-5)
    a, b = load_file(tmp_path / "one/model/model.safetensors"), load_file(tmp_path / "group/model/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # the group's one writer keeps the one-process layout (optimizer.pt by position): one process continues from it
    monkeypatch.delenv(launch.FORCE_GROUP_ENV)
    rl_update(tmp_path / "one", batch, settings, tmp_path / "one2")
    rl_update(tmp_path / "group", batch, settings, tmp_path / "group2")
    a, b = load_file(tmp_path / "one2/model/model.safetensors"), load_file(tmp_path / "group2/model/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_the_group_waits_for_the_checkpoint_write_as_long_as_it_may_take(tmp_path):
    """Defect 5 (timeout): the other processes wait at a barrier while rank 0 writes the checkpoint; NCCL's default
    10 minutes is less than a 7B checkpoint's write (91 GB). The timeout grows with what will be written."""
    small = tmp_path / "small" / "model"
    small.mkdir(parents=True)
    (small / "model.safetensors").write_bytes(b"0" * 1000)
    assert launch.collective_timeout_seconds(small.parent) == launch.MIN_TIMEOUT_SECONDS
    big = tmp_path / "big" / "model"
    big.mkdir(parents=True)
    with open(big / "model.safetensors", "wb") as f:  # a sparse 30.5 GB file: 7.6B fp32 weights, no disk used
        f.truncate(int(30.5e9))
    seconds = launch.collective_timeout_seconds(big.parent)
    assert seconds >= 3 * 30.5e9 / launch.WRITE_BYTES_PER_SECOND > 600  # weights + two moments at a slow disk
    assert launch.collective_timeout_seconds(big.parent, lora=True) < seconds

"""Issue #35, defect 5 and 'hash while writing': a checkpoint's files written in shares, one per writing process,
hashed as they are written (tango_steps.training.checkpoint_files, tango_steps.models.digests)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tango_steps.models import store as model_store
from tango_steps.models.digests import WRITTEN, record_written, written_hashes
from tango_steps.models.store import ModelStore, file_sha256
from tango_steps.training.checkpoint import init_checkpoint, load_policy, write_checkpoint
from tango_steps.training.checkpoint_files import (
    read_optimizer_state,
    remove_staging,
    save_hashed,
    shard_file,
    start_staging,
    write_safetensors,
    writer_shares,
)
from tango_steps.training.settings import UpdateSettings


def test_streamed_safetensors_load_as_written_and_the_digest_is_the_files():
    """Every dtype a checkpoint holds, an empty and a non-contiguous tensor, the bf16 cast; the digest taken while
    writing equals a later read's."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(5, 7, generator=g),
        "t": torch.randn(7, 5, generator=g).t(),  # a view: not contiguous
        "half": torch.randn(3, generator=g).to(torch.bfloat16),
        "ids": torch.arange(6, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
        "empty": torch.zeros(0, 4),
    }
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"st-{os.getpid()}.safetensors"
    try:
        digest = write_safetensors(path, tensors)
        assert digest == file_sha256(path)
        back = load_file(path)
        assert back.keys() == tensors.keys()
        for k, v in tensors.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
        cast = write_safetensors(path, tensors, torch.bfloat16)
        back = load_file(path)
        assert cast == file_sha256(path)
        assert back["w"].dtype == torch.bfloat16 and torch.equal(back["w"], tensors["w"].to(torch.bfloat16))
        assert back["ids"].dtype == torch.int64 and back["mask"].dtype == torch.bool  # only floats are cast
    finally:
        path.unlink(missing_ok=True)


def test_an_unsupported_dtype_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"'c'.*complex64"):
        write_safetensors(tmp_path / "x.safetensors", {"c": torch.zeros(2, dtype=torch.complex64)})


def test_writer_shares_split_by_bytes_keep_order_and_cover_every_name():
    sizes = {"embed": 100, "a": 10, "b": 30, "c": 30, "d": 20, "head": 90}
    shares = writer_shares(sizes, 3)
    assert sorted(n for s in shares for n in s) == sorted(sizes)
    loads = [sum(sizes[n] for n in s) for s in shares]
    assert max(loads) <= 100  # the largest tensor alone bounds the busiest share here
    for s in shares:  # each share in the names' order
        assert s == [n for n in sizes if n in s]
    assert writer_shares(sizes, 3) == shares  # the same on every process
    assert writer_shares(sizes, 1) == [list(sizes)]
    assert writer_shares({"a": 1}, 4)[1:] == [[], [], []]  # more writers than tensors: some write none
    with pytest.raises(ValueError, match="writers"):
        writer_shares(sizes, 0)
    assert shard_file("model", "safetensors", 0, 1) == "model.safetensors"
    assert shard_file("model", "safetensors", 1, 8) == "model-00002-of-00008.safetensors"


def test_a_digest_is_trusted_only_while_the_file_is_as_written(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"y" * 100)
    record_written(tmp_path, {"a.bin": "digest-a", "b.bin": "digest-b"})
    assert written_hashes(tmp_path, ["a.bin", "b.bin", "c.bin"]) == {"a.bin": "digest-a", "b.bin": "digest-b"}
    b.write_bytes(b"z" * 100)  # rewritten: same size, a new time
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 1))  # touched
    assert written_hashes(tmp_path, ["a.bin", "b.bin"]) == {}
    (tmp_path / WRITTEN).write_text("not json")
    assert written_hashes(tmp_path, ["a.bin"]) == {}


def test_save_hashed_is_torch_save(tmp_path):
    obj = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    digest = save_hashed(obj, tmp_path / "o.pt")
    assert digest == file_sha256(tmp_path / "o.pt")
    assert torch.equal(torch.load(tmp_path / "o.pt", weights_only=True)["state"][0]["exp_avg"], torch.ones(3))


def test_the_store_takes_the_written_digests_and_hashes_only_the_other_files(tmp_path, monkeypatch, tiny_model_dir):
    """A checkpoint's weights are hashed as they are written: storing it reads only its small files; a weight file
    changed after its write is read again; the stored digests are the files' (a load verifies them)."""
    settings = dataclasses.replace(UpdateSettings.of(), serving_dtype="bfloat16")
    ckpt = init_checkpoint(str(tiny_model_dir), tmp_path / "c0", settings)
    written = json.loads((ckpt / WRITTEN).read_text())
    assert set(written) == {"master/model.safetensors", "model/model.safetensors"}
    for name, (_, _, digest) in written.items():
        assert digest == file_sha256(ckpt / name)

    from metaflow.plugins.datastores.local_storage import LocalStorage

    calls: list[Path] = []
    real = model_store.file_sha256
    monkeypatch.setattr(model_store, "file_sha256", lambda p: calls.append(Path(p)) or real(p))
    store = ModelStore(LocalStorage(str(tmp_path / "ds")))
    ref = store.save(ckpt, "flow/1/step/2/0/c0")
    assert calls and not any(p.suffix == ".safetensors" for p in calls)  # only config, tokenizer, state files
    assert WRITTEN not in ref["files"]
    for name in written:
        assert ref["sha256"][name] == file_sha256(ckpt / name)
    calls.clear()
    data = (ckpt / "master/model.safetensors").read_bytes()
    (ckpt / "master/model.safetensors").write_bytes(data)  # rewritten after its digest: read again
    store.save(ckpt, "flow/1/step/2/0/c0b")
    assert [p.name for p in calls if p.suffix == ".safetensors"] == ["model.safetensors"]


def test_a_one_process_checkpoint_keeps_its_layout_and_digests(tmp_path, tiny_model_dir):
    """One writer: model.safetensors and optimizer.pt as before (no index, no optimizer/), both hashed as written."""
    settings = UpdateSettings.of()
    ckpt = init_checkpoint(str(tiny_model_dir), tmp_path / "c0", settings)
    model, tok, optimizer, state = load_policy(ckpt, settings)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    state.updates = 1
    out = write_checkpoint(tmp_path / "c1", model, tok, optimizer.state_dict(), state, settings)
    assert sorted(p.name for p in (out / "model").glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model" / "model.safetensors.index.json").exists() and not (out / "optimizer").exists()
    written = json.loads((out / WRITTEN).read_text())
    assert set(written) == {"model/model.safetensors", "optimizer.pt"}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    saved = read_optimizer_state(out, names)
    assert set(saved["state"]) == set(names) and saved["param_groups"][0]["params"] == names


def test_a_share_missing_or_a_foreign_parameter_is_named(tmp_path):
    (tmp_path / "optimizer").mkdir()
    group = [{"lr": 0.1, "params": ["a", "b"]}]
    torch.save({"state": {"a": {"step": torch.tensor(1.0)}}, "param_groups": group, "writers": 2},
               tmp_path / "optimizer" / "optimizer-00001-of-00002.pt")  # fmt: skip
    with pytest.raises(ValueError, match="holds 1 files, written as \\[2\\]"):
        read_optimizer_state(tmp_path, ["a", "b"])
    torch.save({"state": {"z": {"step": torch.tensor(1.0)}}, "param_groups": group, "writers": 2},
               tmp_path / "optimizer" / "optimizer-00002-of-00002.pt")  # fmt: skip
    with pytest.raises(ValueError, match="parameters the model lacks: \\['z'\\]"):
        read_optimizer_state(tmp_path, ["a", "b"])
    assert read_optimizer_state(tmp_path / "none", ["a"]) is None  # before the first update


def test_staging_refuses_an_existing_checkpoint_and_a_small_disk_and_is_removed_after_a_failure(tmp_path):
    out = tmp_path / "c1"
    tmp = start_staging(out, needed=1)
    assert tmp.parent == tmp_path and tmp.name.startswith(".c1.tmp-")
    assert remove_staging(out) == [tmp] and not tmp.exists()
    with pytest.raises(OSError, match=r"No space left|disk"):
        start_staging(out, needed=1 << 62)
    out.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        start_staging(out, needed=1)

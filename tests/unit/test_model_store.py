"""ModelStore: model directories in a Metaflow datastore (local folder, and S3 on a real local moto server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import fake_model_dir

from tango_steps.models.store import MANIFEST, ModelStore, load_model_dir


def _local_store(root: Path) -> ModelStore:
    from metaflow.plugins.datastores.local_storage import LocalStorage

    return ModelStore(LocalStorage(str(root / "ds")))


def test_local_round_trip_and_reference(tmp_path):
    src = fake_model_dir(tmp_path)
    store = _local_store(tmp_path)
    ref = store.save(src, "Flow/1/step/2/0/generator", meta={"round": 3})
    assert ref["ds_type"] == "local" and ref["meta"] == {"round": 3}
    assert ref["files"]["model/model.safetensors"] == 4096 and ref["bytes"] > 4096
    json.dumps(ref)  # a small, JSON-safe artifact
    out = load_model_dir(ref)
    assert (out / "model" / "model.safetensors").read_bytes() == (src / "model" / "model.safetensors").read_bytes()
    # saving again under the same key (a retried task) replaces the copy
    (src / "extra.txt").write_text("x")
    ref2 = store.save(src, "Flow/1/step/2/0/generator")
    assert "extra.txt" in ref2["files"] and (store.load(ref2) / "extra.txt").exists()
    # a loaded copy (it holds a manifest) can be saved again under another key
    ref3 = store.save(store.load(ref2), "Flow/1/next/3/0/generator")
    assert MANIFEST not in ref3["files"] and store.load(ref3).exists()


def test_damaged_or_interrupted_copies_are_refused(tmp_path):
    store = _local_store(tmp_path)
    ref = store.save(fake_model_dir(tmp_path), "k/generator")
    path = store.load(ref)
    with open(path / "model" / "model.safetensors", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match=r"file 'model/model.safetensors' is truncated or damaged \(10 of 4096"):
        store.load(ref)
    (path / MANIFEST).unlink()
    with pytest.raises(ValueError, match="interrupted save"):
        store.load(ref)


def test_a_corrupted_or_missing_file_is_named_with_its_run_and_round(tmp_path):
    """Issue #17: sizes AND hashes are checked on load; the error names the file, the run and the round."""
    store = _local_store(tmp_path)
    ref = store.save(fake_model_dir(tmp_path), "TangoRoundFlow/17/generator_update/5/0/generator",
                     meta={"role": "generator", "round": 3})  # fmt: skip
    assert set(ref["sha256"]) == set(ref["files"])
    path = store.load(ref)
    assert (path / "VERIFIED.json").exists() and "VERIFIED.json" not in ref["files"]
    weights = path / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))
    where = r"\(run TangoRoundFlow/17, step generator_update, round 3, role generator\)"
    with pytest.raises(ValueError, match=where + r": file 'model/model.safetensors' is corrupted"):
        store.load(ref)
    (path / "model" / "config.json").unlink()
    with pytest.raises(ValueError, match=where + r": file 'model/config.json' is missing"):
        store.load(ref)


def test_verification_hashes_once_while_files_are_unchanged(tmp_path, monkeypatch):
    from tango_steps.models import store as model_store

    store = _local_store(tmp_path)
    ref = store.save(fake_model_dir(tmp_path), "k/generator")
    calls = []
    real = model_store.file_sha256
    monkeypatch.setattr(model_store, "file_sha256", lambda p: calls.append(p) or real(p))
    store.load(ref)
    first = len(calls)
    store.load(ref)
    assert first == len(ref["files"]) and len(calls) == first  # the second load trusts the stamp
    legacy = {k: v for k, v in ref.items() if k != "sha256"}  # a reference from before hashes: sizes only
    assert store.load(legacy).exists()


def test_bad_sources_and_references(tmp_path):
    store = _local_store(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        store.save(tmp_path / "missing", "k")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        store.save(tmp_path / "empty", "k")
    with pytest.raises(ValueError, match="not a Tango model reference"):
        load_model_dir({"uri": "x"})
    with pytest.raises(ValueError, match="unknown Metaflow datastore type"):
        load_model_dir({"key": "k", "ds_type": "ftp", "ds_root": "/x"})

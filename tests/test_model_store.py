"""ModelStore: model directories in a Metaflow datastore (local folder, and S3 on a real local moto server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tango_steps.pipeline.model_store import MANIFEST, ModelStore, load_model_dir


def _model_dir(root: Path) -> Path:
    d = root / "src"
    (d / "model").mkdir(parents=True)
    (d / "model" / "model.safetensors").write_bytes(os.urandom(4096))
    (d / "model" / "config.json").write_text('{"a": 1}')
    (d / "trainer_state.json").write_text("{}")
    return d


def _local_store(root: Path) -> ModelStore:
    from metaflow.plugins.datastores.local_storage import LocalStorage

    return ModelStore(LocalStorage(str(root / "ds")))


def test_local_round_trip_and_reference(tmp_path):
    src = _model_dir(tmp_path)
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
    ref = store.save(_model_dir(tmp_path), "k/generator")
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
    ref = store.save(_model_dir(tmp_path), "TangoRoundFlow/17/generator_update/5/0/generator",
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
    from tango_steps.pipeline import model_store

    store = _local_store(tmp_path)
    ref = store.save(_model_dir(tmp_path), "k/generator")
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


def test_s3_round_trip_on_a_local_s3_server(tmp_path, s3_server):
    """Save through Metaflow's S3 back-end, then load from the reference alone (as another machine would)."""
    src = _model_dir(tmp_path)
    env = {
        **os.environ,
        "METAFLOW_S3_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TANGO_CACHE": str(tmp_path / "cache"),
    }
    code = textwrap.dedent(
        f"""
        import json, boto3
        boto3.client("s3", endpoint_url={s3_server!r}).create_bucket(Bucket="tango")
        from metaflow.plugins.datastores.s3_storage import S3Storage
        from tango_steps.pipeline.model_store import ModelStore, load_model_dir
        ref = ModelStore(S3Storage("s3://tango/mf")).save({str(src)!r}, "Flow/1/update/3/0/verifier")
        out = load_model_dir(ref)
        again = load_model_dir(ref)  # cached: no second download
        # issue #17: retention on S3 deletes the objects, leaves its note; the cached copy is refused too
        from tango_steps.pipeline import retention
        store = ModelStore(S3Storage("s3://tango/mf"))
        other = store.save({str(src)!r}, "Flow/2/update/3/0/.verifier.tmp-abc")
        before = retention._files(store, "Flow")
        retention.remove_checkpoint(store, ref, {{"when": "today", "run": "TangoFlow/1", "kept_rounds": [0, 4]}})
        retention._remove_prefix(store, "tango_models/Flow/2", None)
        try:
            load_model_dir(ref)
            refused = ""
        except ValueError as e:
            refused = str(e)
        print(json.dumps({{"ref": ref, "out": str(out), "again": str(again), "refused": refused,
                          "before": before, "after": retention._files(store, "Flow")}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["ref"]["ds_type"] == "s3" and res["ref"]["uri"].startswith("s3://tango/mf/tango_models/")
    out = Path(res["out"])
    assert res["again"] == res["out"] and str(tmp_path / "cache") in res["out"]
    assert (out / "model" / "model.safetensors").read_bytes() == (src / "model" / "model.safetensors").read_bytes()
    assert (out / MANIFEST).exists()
    assert "removed by the retention command" in res["refused"] and "TangoFlow/1" in res["refused"], res["refused"]
    assert {k for k, _ in res["before"]} >= {"Flow/1/update/3/0/verifier/model/model.safetensors",
                                             "Flow/2/update/3/0/.verifier.tmp-abc/MANIFEST.json"}  # fmt: skip
    assert [k for k, _ in res["after"]] == ["Flow/1/update/3/0/verifier/REMOVED.json"]

"""The model store on S3: a real local S3 server (moto), saved from one process and loaded in another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import fake_model_dir

from tango_steps.models.store import MANIFEST


def _s3_env(s3_server: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a process that stores on the local S3 server, with a model cache of its own."""
    return {
        **os.environ,
        "METAFLOW_S3_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TANGO_CACHE": str(tmp_path / "cache"),
    }


def test_s3_round_trip_on_a_local_s3_server(tmp_path, s3_server):
    """Save through Metaflow's S3 back-end, then load from the reference alone (as another machine would)."""
    src = fake_model_dir(tmp_path)
    env = _s3_env(s3_server, tmp_path)
    code = textwrap.dedent(
        f"""
        import json, boto3
        boto3.client("s3", endpoint_url={s3_server!r}).create_bucket(Bucket="tango")
        from metaflow.plugins.datastores.s3_storage import S3Storage
        from tango_steps.models.store import ModelStore, load_model_dir
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


def test_s3_fetches_only_the_part_a_step_uses_once_into_the_cache(tmp_path, s3_server):
    """Issue #35: an engine's step fetches the serving weights only, an update's the training state only; each file
    is downloaded once, moved into the cache (no second copy on disk), hashed once; a later fetch of the other part
    adds only its files, and a damaged cached file is fetched again."""
    src = tmp_path / "src"
    files = {"model/model.safetensors": 3000, "model/config.json": 10, "master/model.safetensors": 6000,
             "master/config.json": 10, "optimizer.pt": 12000, "rng_state.pt": 100,
             "trainer_state.json": 20}  # fmt: skip
    for name, size in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(os.urandom(size))
    env = _s3_env(s3_server, tmp_path)
    code = textwrap.dedent(
        f"""
        import json, os, boto3
        from pathlib import Path
        boto3.client("s3", endpoint_url={s3_server!r}).create_bucket(Bucket="tango")
        from metaflow.plugins.datastores.s3_storage import S3Storage
        from tango_steps import traffic
        from tango_steps.models.store import ModelStore, load_model_dir, model_reference
        from tango_steps.models.loading import resolve_model_ref
        ref = ModelStore(S3Storage("s3://tango/mf")).save({str(src)!r}, "Flow/1/update/3/0/generator")
        out = {{}}
        traffic.reset()
        serving = load_model_dir(ref, "serving")
        out["serving"] = traffic.snapshot()
        out["serving_files"] = sorted(p.relative_to(serving).as_posix() for p in serving.rglob("*") if p.is_file())
        traffic.reset()
        training = load_model_dir(ref, "training")
        out["training"] = traffic.snapshot()
        traffic.reset()
        load_model_dir(ref, "training")
        out["again"] = traffic.snapshot()
        (training / "optimizer.pt").write_bytes(b"x" * 12000)  # damaged in the cache, same size
        os.utime(training / "optimizer.pt", (1, 1))
        traffic.reset()
        load_model_dir(ref, "training")
        out["repaired"] = traffic.snapshot()
        out["same"] = (training / "optimizer.pt").read_bytes() == Path({str(src)!r}, "optimizer.pt").read_bytes()
        out["leftovers"] = sorted(p.name for p in training.parent.iterdir() if p.name.startswith(".fetch-"))
        out["resolved"] = resolve_model_ref(model_reference(ref, "serving", "model"))
        out["cache"] = str(serving)
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["serving_files"] == ["MANIFEST.json", "VERIFIED.json", "model/config.json", "model/model.safetensors",
                                    "trainer_state.json"]  # fmt: skip
    assert res["serving"]["bytes_downloaded"] == 3000 + 10 + 20 == res["serving"]["bytes_hashed"]
    assert res["training"]["bytes_downloaded"] == 6000 + 10 + 12000 + 100  # master/, optimizer, RNG: nothing twice
    assert res["again"]["bytes_downloaded"] == 0 and res["again"]["bytes_hashed"] == 0
    # the damaged file is found by its hash (its stamp changed), dropped and fetched again
    assert res["repaired"]["bytes_downloaded"] == 12000 and res["same"]
    assert res["leftovers"] == []
    assert res["resolved"] == str(Path(res["cache"]) / "model")

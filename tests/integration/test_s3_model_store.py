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


def test_s3_round_trip_on_a_local_s3_server(tmp_path, s3_server):
    """Save through Metaflow's S3 back-end, then load from the reference alone (as another machine would)."""
    src = fake_model_dir(tmp_path)
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

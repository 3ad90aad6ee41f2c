"""Model checkpoints to and from the datastore: local folder against S3 on a local S3 server (issue #16).

    python benchmarks/speed/model_transfer.py                      # the tiny default's policy checkpoint
    python benchmarks/speed/model_transfer.py --model smollm2-135m # SmolLM2-135M-Instruct's (needs .[smollm2])

A round step saves one checkpoint (``ModelStore.save``) and the next steps load it
(``load_model_dir``: read in place from a local datastore, downloaded once into ``$TANGO_CACHE``
from S3). This script builds the round-0 policy checkpoint of the model (weights, optimizer and RNG
state, as an update writes it), then saves and loads it ``--repeats`` times into a local datastore
and into an S3 datastore served by moto's server mode on this machine (loopback, so the S3 figures
are Metaflow's S3 client and moto, not a network or AWS), each load into a fresh cache, and prints
seconds and MB/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> subprocess.Popen:
    """moto's S3 server on a free loopback port, with a bucket ``tango``."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
         "METAFLOW_S3_ENDPOINT_URL": url}
    )  # fmt: skip
    import boto3

    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="tango")
    return proc


def checkpoint(model: str, folder: Path) -> Path:
    """The round-0 policy checkpoint of ``model`` (``tiny``: the tiny default's generator)."""
    from tango_steps.config import load_config
    from tango_steps.pipeline.driver import initial_checkpoints

    overrides = {} if model == "tiny" else {"generator.path": model, "verifier.path": model}
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml", overrides)
    return initial_checkpoints(cfg, folder, log=lambda m: None)["generator"]


def measure(store, src: Path, repeats: int, cache_root: Path) -> dict[str, float]:
    """Mean seconds of a save and of a load into a fresh cache."""
    from tango_steps.models.store import load_model_dir

    saves, loads = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        ref = store.save(src, f"Bench/1/step/{i}/generator")
        saves.append(time.perf_counter() - t0)
        os.environ["TANGO_CACHE"] = str(cache_root / f"c{len(loads)}-{store.__class__.__name__}-{i}")
        t0 = time.perf_counter()
        load_model_dir(ref)
        loads.append(time.perf_counter() - t0)
    return {"save": sum(saves) / repeats, "load": sum(loads) / repeats, "bytes": ref["bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny (the default's generator) or smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    server = start_s3()  # first: Metaflow reads METAFLOW_S3_ENDPOINT_URL once, when it is imported
    from metaflow.plugins.datastores.local_storage import LocalStorage
    from metaflow.plugins.datastores.s3_storage import S3Storage

    from tango_steps.models.store import ModelStore

    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            src = checkpoint(args.model, tmp / "src")
            rows = {
                "local": measure(ModelStore(LocalStorage(str(tmp / "local"))), src, args.repeats, tmp / "cache"),
                "s3 (moto, loopback)": measure(
                    ModelStore(S3Storage("s3://tango/mf")), src, args.repeats, tmp / "cache"
                ),
            }
    finally:
        server.terminate()
    mb = next(iter(rows.values()))["bytes"] / 2**20
    print(f"\n{args.model} round-0 policy checkpoint: {mb:.1f} MiB, mean of {args.repeats}\n")
    print("| datastore | save s | save MiB/s | load s (fresh cache) | load MiB/s |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['save']:.2f} | {mb / r['save']:.0f} | {r['load']:.2f} | {mb / r['load']:.0f} |")


if __name__ == "__main__":
    main()

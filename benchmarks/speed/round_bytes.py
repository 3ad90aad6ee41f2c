"""What each step of a round moves and starts, measured, then set beside the run plan's model of it (issue #35).

Runs TangoFlow for a few rounds on a real S3 datastore (a local moto server, as the tests use: every step fetches
from it what a pod on a cluster would) and reads each round step's ``traffic`` artifact (tango_steps/traffic.py,
counted where it happens): bytes downloaded from the store, uploaded to it, written locally, hashed; model loads
and engine starts. Beside each step it prints what the plan (tango_steps/plan.py) predicts for the same recipe and
the same model size, now (``parts``: a step fetches the part it uses) and before (every step fetched whole
checkpoints, staged then copied), so the plan's byte model is checked against a run. The 7B and 1.5B projections
are then the plan's, with the throughputs it assumes as named inputs (``--set assume.<name>=<value>``; their
sources are in docs/scaling.md).

    python benchmarks/speed/round_bytes.py                          # the tiny default, 3 rounds (~6 minutes)
    python benchmarks/speed/round_bytes.py --model smollm2-135m     # SmolLM2-135M (its recipe, small batches)

Needs moto's server (``pip install 'moto[server]'``, a dev dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

STEPS = ("rollout", "judge", "sample_shard", "reward", "verifier_update", "generator_update", "evaluate")
RECIPES = {
    "tiny": ("configs/tiny.yaml", {}),
    "smollm2-135m": (
        "configs/smollm2-135m.yaml",
        {"batch": {"generator_prompts": 4, "verifier_prompts": 4}, "generator_sampling": {"n": 2, "max_tokens": 64},
         "verifier_sampling": {"n": 2, "max_tokens": 96}, "evaluation": {"heldout_problems": 8, "max_tokens": 64}},
    ),
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, str]:
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def run_flow(model: str, rounds: int, work: Path, url: str) -> dict[str, str]:
    """A TangoFlow run on the S3 store at ``url``; round 1 updates the verifier, round 2 the generator."""
    import boto3
    import yaml

    recipe, extra = RECIPES[model]
    cfg = yaml.safe_load((REPO / recipe).read_text())
    for key, value in {**extra, "schedule": {**cfg.get("schedule", {}), "verifier_warmup_rounds": 1}}.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    cfg.setdefault("evaluation", {})["every"] = 1
    if model == "smollm2-135m":
        cfg["task"]["params"]["path"] = str(REPO.parent / "shared/data/benchmarks/gsm8k/train.jsonl")
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_DATASTORE_SYSROOT_S3": "s3://tango/mf",
           "METAFLOW_S3_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(work),
           "TANGO_CACHE": os.environ.get("TANGO_CACHE", str(Path.home() / ".cache/tango")),
           "USERNAME": os.environ.get("USERNAME", "tango-bench")}  # fmt: skip
    os.environ.update({k: v for k, v in env.items() if k.startswith(("METAFLOW_", "AWS_"))})
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="tango")
    # every step process fetches from S3 into a cache of its own, as a fresh pod would (models.store.store_cache)
    env["TANGO_STORE_CACHE"] = str(work / "pod-caches" / "{pid}")
    t0 = time.perf_counter()
    cmd = [sys.executable, str(REPO / "flows/tango_flow.py"), "--config", "config", str(path), "run",
           "--rounds", str(rounds)]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"{model}: {rounds} rounds in {time.perf_counter() - t0:.0f} s", flush=True)
    return {"recipe": str(path)}


def measured() -> list[dict]:
    """Each round step's traffic artifact, from the latest TangoFlow run's round runs."""
    from metaflow import Flow, Run, namespace

    namespace(None)
    end = Flow("TangoFlow").latest_successful_run["end"].task
    rows = []
    for pathspec in end["round_runs"].data:
        run = Run(pathspec)
        plan = run["start"].task["plan"].data
        for step in run:
            if step.id not in STEPS:
                continue
            for task in step:
                traffic = task["traffic"].data if "traffic" in task else None
                if traffic is not None:
                    rows.append({"round": plan["round_idx"], "slot": plan["slot"], "step": step.id, **traffic})
    return sorted(rows, key=lambda r: (r["round"], STEPS.index(r["step"])))


def model_params(recipe: str) -> float:
    """The parameter count of the run's generator (its stored checkpoint's fp32 weights / 4)."""
    from metaflow import Flow, namespace

    from tango_steps.models.store import load_model_dir

    namespace(None)
    state = Flow("TangoFlow").latest_successful_run["start"].task["state"].data
    ref = state["generator"]
    weights = sum(size for name, size in ref["files"].items() if name.startswith("model/") and name.endswith(
        ".safetensors"))  # fmt: skip
    load_model_dir(ref, "serving")  # (verifies it is there)
    return weights / 4


def planned(recipe: str, params: float, parts: bool) -> dict[tuple[str, str], dict]:
    """The plan's bytes per (slot, step) for the run's recipe, with the run's model size."""
    from dataclasses import replace

    from tango_steps import plan
    from tango_steps.config import load_config
    from tango_steps.pipeline.layout import SHAPES

    cfg = load_config(recipe, check_data=False)
    shape = replace(SHAPES["tiny"], params=params)
    run = plan.plan_run(cfg, shapes={"generator": shape, "verifier": shape}, parts=parts)
    out = {}
    for kind, steps in run.rounds.items():
        for s in steps:
            out[(kind.split()[0], s.step)] = {"download": s.download_gb * 1e9, "upload": s.upload_gb * 1e9,
                                               "starts": s.engine_starts}  # fmt: skip
    return out


def mb(x: float) -> str:
    return f"{x / 1e6:,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=sorted(RECIPES))
    ap.add_argument("--rounds", type=int, default=3, help="3: round 3 updates a model a second time (steady state)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tango-round-bytes-"))
    server, url = start_s3()
    try:
        info = run_flow(args.model, args.rounds, work, url)
        rows = measured()
        params = model_params(info["recipe"])
        now, before = planned(info["recipe"], params, True), planned(info["recipe"], params, False)
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n### {args.model} ({params / 1e6:.1f}M parameters): per round step, MB (measured | plan now | plan before)\n"
    )
    cols = ["round", "slot", "step", "downloaded", "plan", "before", "uploaded", "plan", "before", "written",
            "hashed", "model loads", "engine starts", "plan"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        p, b = now.get((r["slot"], r["step"]), {}), before.get((r["slot"], r["step"]), {})
        print("| " + " | ".join([
            str(r["round"]), r["slot"], r["step"], mb(r["bytes_downloaded"]), mb(p.get("download", 0)),
            mb(b.get("download", 0)), mb(r["bytes_uploaded"]), mb(p.get("upload", 0)), mb(b.get("upload", 0)),
            mb(r["bytes_written"]), mb(r["bytes_hashed"]), str(r["model_loads"]), str(r["engine_starts"]),
            str(p.get("starts", "-")),
        ]) + " |")  # fmt: skip
    print(json.dumps({"model": args.model, "params": params, "rows": rows}))


if __name__ == "__main__":
    main()

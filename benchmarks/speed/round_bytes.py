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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.speed.model_transfer import start_s3  # noqa: E402  (moto's server, its keys and bucket)

STEPS = ("rollout", "judge", "sample_shard", "reward", "verifier_update", "generator_update", "evaluate")
RECIPES = {
    "tiny": ("configs/tiny.yaml", {}),
    "smollm2-135m": (
        "configs/smollm2-135m.yaml",
        {"batch": {"generator_prompts": 4, "verifier_prompts": 4}, "generator_sampling": {"n": 2, "max_tokens": 64},
         "verifier_sampling": {"n": 2, "max_tokens": 96}, "evaluation": {"heldout_problems": 8, "max_tokens": 64}},
    ),
}  # fmt: skip


def run_flow(model: str, rounds: int, work: Path) -> Path:
    """A TangoFlow run on the local S3 server ``start_s3`` started (its endpoint and keys in the environment);
    round 1 updates the verifier, rounds 2 and 3 the generator. Returns the run's recipe."""
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
    os.environ.update(
        {
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": "s3://tango/mf",
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(work),
        }
    )  # (also what the client queries read)
    os.environ.setdefault("USERNAME", "tango-bench")
    # every step process fetches from S3 into a cache of its own, as a fresh pod would (models.store.store_cache)
    env = {**os.environ, "TANGO_STORE_CACHE": str(work / "pod-caches" / "{pid}")}
    t0 = time.perf_counter()
    cmd = [sys.executable, str(REPO / "flows/tango_flow.py"), "--config", "config", str(path), "run",
           "--rounds", str(rounds)]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"{model}: {rounds} rounds in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


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


def model_params() -> float:
    """The parameter count of the run's generator: its stored round-0 checkpoint's fp32 weights / 4 (read off the
    reference's file sizes, nothing fetched)."""
    from metaflow import Flow, namespace

    namespace(None)
    ref = Flow("TangoFlow").latest_successful_run["start"].task["state"].data["generator"]
    return sum(size for name, size in ref["files"].items() if name.startswith("model/") and name.endswith(
        ".safetensors")) / 4  # fmt: skip


def planned(recipe: str, params: float, parts: bool) -> dict[tuple[str, str], dict]:
    """The plan's bytes per (slot, step) for the run's recipe, with the run's model size."""
    from dataclasses import replace

    from tango_steps import plan
    from tango_steps.config import load_config
    from tango_steps.pipeline.layout import SHAPES

    cfg = load_config(recipe, check_data=False)
    shape = replace(SHAPES["tiny"], params=params)  # bytes depend on the parameter count alone
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
    server = start_s3()
    try:
        recipe = str(run_flow(args.model, args.rounds, work))
        rows = measured()
        params = model_params()
        now, before = planned(recipe, params, True), planned(recipe, params, False)
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

"""One generator round of the tiny default at P update processes and S sampling shards (issue #15).

    python benchmarks/speed/round_layouts.py                    # (S, P) in (1, 1), (2, 1), (1, 2), (2, 2)

The stages of round 2 (a generator round: rollout, judge, reward, generator update) of
``configs/tiny.yaml`` from its shipped warmed-up models, in this process (``tango_steps.round.in_process``):
S shards run one after another, each loading its own engine (on a cluster they would run at once on
S devices), and the update runs on P processes through torchrun (``tango_steps/training/distributed.py``).
On a CPU machine the figures are the COST of scaling out (engine loads, process launch, collectives),
not its speed-up, which needs a device per shard and per process.

    python benchmarks/speed/round_layouts.py --flow             # the same layouts as real TangoFlow runs

``--flow`` runs round 1 of the same recipe (a generator round; 50 held-out problems instead of 500,
so that the evaluation stays small) as a one-round TangoFlow run per layout, in a fresh temporary
datastore, and reads the round run's task timestamps: the sampling phase (``start`` done to
``judge`` / ``join_shards`` done: S > 1 adds the ``split_prompts`` and ``join_shards`` tasks and
runs the S shard tasks at once, here on 2 cores), the reward step and the update (``reward`` done
to ``generator_update`` done: P > 1 adds torchrun and P processes). The engine seconds are the
``compute_seconds`` the sampling tasks store (summed over shards).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tango_steps.config import load_config
from tango_steps.pipeline.driver import initial_checkpoints
from tango_steps.round.in_process import QUIET, InProcessRun

REPO = Path(__file__).resolve().parents[2]


def overrides(shards: int, processes: int, strategy: str) -> dict:
    """The tiny default with a generator round first, S shards and a P-process generator update."""
    # 64 samples an engine call: 4 calls of 8 prompts in the rollout, 4 of 64 solutions in the judge, so
    # that S shards have work each (the default 256 would make the default round ONE call); every layout
    # uses it, so they all sample the same thing
    out = {
        "schedule.verifier_warmup_rounds": 0,
        "generator_update.processes": processes,
        "rollout.chunk_samples": 64,
        "rollout.shards": shards,
    }
    if processes > 1:
        out["generator_update.strategy"] = strategy
    return out


def one_round(shards: int, processes: int, work: Path, strategy: str) -> dict[str, float]:
    """Seconds of each stage of round 2 (a generator round) with S shards and a P-process update."""
    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides(shards, processes, strategy))
    run = InProcessRun(cfg, initial_checkpoints(cfg, work / "r0", log=QUIET), work)
    t0 = time.perf_counter()
    r = run.round()
    assert r.plan.update_generator
    t = dict(r.seconds)
    t["total"] = time.perf_counter() - t0
    t["samples"] = len(r.rollouts)
    return t


def flow_round(shards: int, processes: int, root: Path, strategy: str) -> dict[str, float]:
    """Phase seconds of round 1 of a one-round TangoFlow run of the layout, from its tasks' timestamps."""
    import subprocess

    import yaml

    from tango_steps.config import apply_overrides, load_yaml

    root.mkdir(parents=True)
    data = apply_overrides(load_yaml(REPO / "configs" / "tiny.yaml"), overrides(shards, processes, strategy))
    data = apply_overrides(data, {"evaluation.heldout_problems": 50})
    (root / "cfg.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root), "USERNAME": os.environ.get("USERNAME", "bench")}
    flow = str(REPO / "flows" / "tango_flow.py")
    cmd = [sys.executable, flow, "--config", "config", "cfg.yaml", "run", "--rounds", "1"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the S={shards} P={processes} run failed:\n{proc.stderr[-4000:]}")
    query = """
import json
from metaflow import Flow, Run, namespace
namespace(None)
r = Run(Flow("TangoFlow").latest_run["end"].task["round_runs"].data[0])
done = {s.id: max(t.finished_at for t in s) for s in r}
sampled = done.get("join_shards") or done.get("judge") or done["rollout"]
engine = sum(t["compute_seconds"].data for s in ("rollout", "judge", "sample_shard") if s in done for t in r[s])
print(json.dumps({"sampling": (sampled - done["start"]).total_seconds(), "engine": engine,
                  "reward": (done["reward"] - sampled).total_seconds(),
                  "update": (done["generator_update"] - done["reward"]).total_seconds(),
                  "round": (done["generator_update"] - r.created_at).total_seconds()}))
"""
    out = subprocess.run([sys.executable, "-c", query], cwd=root, env=env, capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def main_flow(layouts: list[tuple[int, int]], strategy: str) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (s, p) in enumerate(layouts):
            r = flow_round(s, p, Path(tmp) / f"run{i}", strategy)
            rows.append((s, p, r))
            print(f"S={s} P={p}: round {r['round']:.1f} s", flush=True)
    print(f"\ntiny default, round 1 (generator round) as a TangoFlow run, {os.cpu_count()} CPUs, update {strategy}\n")
    print("| shards S | update processes P | sampling s (engine s) | reward s | update s | round s (to update end) |")
    print("|---|---|---|---|---|---|")
    for s, p, r in rows:
        print(
            f"| {s} | {p} | {r['sampling']:.1f} ({r['engine']:.1f}) | {r['reward']:.1f} | {r['update']:.1f} | "
            f"{r['round']:.1f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", default="1x1,2x1,1x2,2x2", help="SxP pairs: sampling shards x update processes")
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"], help="the update's strategy when P > 1")
    ap.add_argument("--flow", action="store_true", help="run each layout as a one-round TangoFlow run")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    layouts = [tuple(int(x) for x in pair.split("x")) for pair in args.layouts.split(",")]
    if args.flow:
        return main_flow(layouts, args.strategy)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        one_round(1, 1, Path(tmp) / "warm", args.strategy)  # imports and first-call costs out of the figures
        for i, (s, p) in enumerate(layouts):
            r = one_round(s, p, Path(tmp) / f"r{i}", args.strategy)
            rows.append((s, p, r))
            print(f"S={s} P={p}: {r['total']:.1f} s", flush=True)
    print(f"\ntiny default, round 2 (generator round), {os.cpu_count()} CPUs, update strategy {args.strategy}\n")
    print("| shards S | update processes P | samples | rollout s | judge s | reward s | update s | total s |")
    print("|---|---|---|---|---|---|---|---|")
    for s, p, r in rows:
        print(
            f"| {s} | {p} | {int(r['samples'])} | {r['rollout']:.1f} | {r['judge']:.1f} | {r['reward']:.1f} | "
            f"{r['update']:.1f} | {r['total']:.1f} |"
        )


if __name__ == "__main__":
    main()

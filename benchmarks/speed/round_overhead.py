"""Per-step wall time versus model compute of TangoRoundFlow runs: the orchestration overhead (issue #4).

Either launches a TangoFlow run in a fresh temporary datastore (tiny default unless --config), or
reads an existing one (--run TangoFlow/<id>, with METAFLOW_DATASTORE_SYSROOT_LOCAL pointing at its
datastore), then prints, per round step, the mean wall time, the mean time inside model compute
(the ``compute_seconds`` artifact each step stores: engine/model load, generation, grading, the
update) and their difference: process start, imports, artifact and model I/O, Metaflow
bookkeeping. A step's wall time is the time from the previous task's end to its own end (steps run
one after another), so nothing between tasks is left out; tasks that run at once (shards, nodes)
split their common time between them this way.

    python benchmarks/speed/round_overhead.py --rounds 3
    python benchmarks/speed/round_overhead.py --run TangoFlow/1795...   # e.g. the 20-round default run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = (
    "start", "rollout", "judge", "split_prompts", "sample_shard", "join_shards", "reward", "verifier_update",
    "generator_update", "split_nodes", "update_nodes", "join_nodes", "after_nodes", "evaluate", "end",
)  # fmt: skip


def launch(rounds: int, config: str | None) -> tuple[str, float, str]:
    root = tempfile.mkdtemp(prefix="tango-overhead-")
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = root
    os.environ.setdefault("USERNAME", "tango-bench")
    cmd = [sys.executable, str(REPO / "flows" / "tango_flow.py")]
    if config:
        cmd += ["--config", "config", config]
    cmd += ["run", "--rounds", str(rounds)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"the run failed:\n{proc.stderr[-4000:]}")
    from metaflow import Flow, namespace

    namespace(None)
    return Flow("TangoFlow").latest_run.pathspec, wall, root


def step_times(run) -> list[dict]:
    """Wall (previous task end -> this task end) and compute seconds of each task of a linear run."""
    tasks = sorted((t for s in run for t in s), key=lambda t: t.finished_at)
    out, prev = [], run.created_at
    for t in tasks:
        compute = t["compute_seconds"].data if "compute_seconds" in t else 0.0
        rss = t["peak_rss_mb"].data if "peak_rss_mb" in t else float("nan")
        wall = (t.finished_at - prev).total_seconds()
        out.append({"step": t.parent.id, "wall": wall, "compute": compute, "rss": rss})
        prev = t.finished_at
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an existing TangoFlow run pathspec (default: launch one)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the launched run")
    ap.add_argument("--config", help="recipe of the launched run (default: configs/tiny.yaml)")
    args = ap.parse_args()
    total = None
    if args.run is None:
        # launch() points METAFLOW_DATASTORE_SYSROOT_LOCAL at a new folder: metaflow must not be
        # imported before it (its configuration is read once, at import)
        pathspec, total, root = launch(args.rounds, args.config)
        print(f"launched {pathspec} in {root}: {total:.1f} s wall (process included)")
    else:
        pathspec = args.run
    from metaflow import Run, namespace

    namespace(None)
    top = Run(pathspec)
    rounds = top["end"].task["round_runs"].data
    rows = [r for rp in rounds for r in step_times(Run(rp))]
    print(f"\n{len(rounds)} round runs of {pathspec}\n")
    cols = ["step", "tasks", "wall s (mean)", "compute s (mean)", "overhead s (mean)", "overhead s (max)", "peak MiB"]
    print("| " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|---|")
    for step in STEPS:
        rs = [r for r in rows if r["step"] == step]
        if not rs:
            continue
        over = [r["wall"] - r["compute"] for r in rs]
        wall = sum(r["wall"] for r in rs) / len(rs)
        comp = sum(r["compute"] for r in rs) / len(rs)
        rss = max(r["rss"] for r in rs)
        mean_over = sum(over) / len(over)
        print(f"| {step} | {len(rs)} | {wall:.2f} | {comp:.2f} | {mean_over:.2f} | {max(over):.2f} | {rss:.0f} |")
    walls = [sum(r["wall"] for r in step_times(Run(rp))) for rp in rounds]
    print(f"\nround wall time: mean {sum(walls) / len(walls):.1f} s, min {min(walls):.1f}, max {max(walls):.1f}")
    start = top["start"].task
    tstart = (start.finished_at - top.created_at).total_seconds()
    run_wall = (top["end"].task.finished_at - top.created_at).total_seconds()
    print(f"TangoFlow start (validation, initial models, round-0 evaluation): {tstart:.1f} s")
    print(f"TangoFlow run, first task to last: {run_wall:.1f} s" + (f"; command wall {total:.1f} s" if total else ""))


if __name__ == "__main__":
    main()

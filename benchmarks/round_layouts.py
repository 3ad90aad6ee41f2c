"""One generator round of the tiny default at P update processes and S sampling shards (issue #15).

    python benchmarks/round_layouts.py                    # (S, P) in (1, 1), (2, 1), (1, 2), (2, 2)

The stages of round 2 (a generator round: rollout, judge, reward, generator update) of
``configs/tiny.yaml`` from its shipped warmed-up models, in this process (``tango_steps.local``):
S shards run one after another, each loading its own engine (on a cluster they would run at once on
S devices), and the update runs on P processes through torchrun (``tango_steps/distributed.py``).
On a CPU machine the figures are the COST of scaling out (engine loads, process launch, collectives),
not its speed-up, which needs a device per shard and per process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tango_steps.config import load_config
from tango_steps.driver import initial_checkpoints
from tango_steps.local import QUIET, InProcessRun

REPO = Path(__file__).resolve().parent.parent


def one_round(shards: int, processes: int, work: Path, strategy: str) -> dict[str, float]:
    """Seconds of each stage of round 2 (a generator round) with S shards and a P-process update."""
    # 64 samples an engine call: 4 calls of 8 prompts in the rollout, 4 of 64 solutions in the judge, so
    # that S shards have work each (the default 256 would make the default round ONE call); every layout
    # uses it, so they all sample the same thing
    overrides = {
        "schedule.verifier_warmup_rounds": 0,
        "generator_update.processes": processes,
        "rollout.chunk_samples": 64,
        "rollout.shards": shards,
    }
    if processes > 1:
        overrides["generator_update.strategy"] = strategy
    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides)
    run = InProcessRun(cfg, initial_checkpoints(cfg, work / "r0", log=QUIET), work)
    t0 = time.perf_counter()
    r = run.round()
    assert r.plan.update_generator
    t = dict(r.seconds)
    t["total"] = time.perf_counter() - t0
    t["samples"] = len(r.rollouts)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", default="1x1,2x1,1x2,2x2", help="SxP pairs: sampling shards x update processes")
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"], help="the update's strategy when P > 1")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    layouts = [tuple(int(x) for x in pair.split("x")) for pair in args.layouts.split(",")]
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

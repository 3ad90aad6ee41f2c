"""How a round's compute grows with batch size and response length (docs/method.md §3), printed as tables.

    python benchmarks/speed/round_scaling.py                       # prompts 16,32,64 at L=96; L 48,96,192 at 32 prompts
    python benchmarks/speed/round_scaling.py --prompts 8,16 --lengths 32,64 --n 4

Runs the stages of one generator round (rollout, judge, reward, generator update) in this process
through the same ``tango_steps.round`` functions the flow calls, on a RANDOMLY initialised tiny Qwen2
of the default shape: it almost never emits EOS, so every response is as long as the limit and the
length axis is really the response length (a warmed-up model stops at ~40 tokens whatever the limit).
Orchestration (a process per step, artifacts, cards) adds a constant ~13 s per round on top; see
``round_overhead.py``. The held-out evaluation does not depend on either axis and is not included.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout_throughput import tiny_model

from tango_steps.config import load_config
from tango_steps.pipeline.driver import initial_checkpoints
from tango_steps.round.in_process import QUIET, InProcessRun

REPO = Path(__file__).resolve().parents[2]


def one_round(model: str, prompts: int, n: int, length: int, work: Path) -> dict[str, float]:
    """Seconds of each stage of one generator round with ``prompts`` x ``n`` responses of up to ``length`` tokens."""
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        {
            "generator.path": model,
            "verifier.path": model,
            "rollout.engine": "hf",
            "rollout.max_prompt_tokens": 256,
            "generator_sampling.n": n,
            "generator_sampling.max_tokens": length,
            "verifier_sampling.max_tokens": length,
            "batch.generator_prompts": prompts,
            "schedule.verifier_warmup_rounds": 0,
        },
    )
    run = InProcessRun(cfg, initial_checkpoints(cfg, work / "r0", log=QUIET), work)
    r = run.round()
    assert r.plan.update_generator
    t = dict(r.seconds)
    rollouts = r.rollouts
    t["total"] = sum(t.values())
    t["samples"] = len(rollouts)
    t["mean_len"] = float(rollouts["response_ids"].map(len).mean())
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default="16,32,64", help="batch sizes (prompts per round) at --length")
    ap.add_argument("--lengths", default="48,96,192", help="response lengths at --batch prompts")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (M)")
    ap.add_argument("--length", type=int, default=96, help="response length of the batch-size sweep")
    ap.add_argument("--batch", type=int, default=32, help="prompts of the length sweep")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(tmp)
        sweeps = [("prompts", int(p), args.length) for p in args.prompts.split(",")]
        sweeps += [("length", args.batch, int(v)) for v in args.lengths.split(",")]
        one_round(model, 4, 2, 16, Path(tmp) / "warm")  # imports and first-call costs out of the figures
        rows = []
        for i, (axis, p, length) in enumerate(sweeps):
            r = one_round(model, p, args.n, length, Path(tmp) / f"r{i}")
            rows.append((axis, p, length, r))
            print(f"{axis} sweep: {p} prompts x {args.n}, up to {length} tokens: {r['total']:.1f} s", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\ntiny Qwen2 (random init), HF engine, {os.cpu_count()} CPUs, torch threads from OMP_NUM_THREADS or all\n")
    print("| sweep | prompts x M | max tokens | mean length | rollout s | judge s | reward s | update s | total s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for axis, p, length, r in rows:
        print(
            f"| {axis} | {p} x {args.n} = {int(r['samples'])} | {length} | {r['mean_len']:.0f} | {r['rollout']:.1f} | "
            f"{r['judge']:.1f} | {r['reward']:.1f} | {r['update']:.1f} | {r['total']:.1f} |"
        )
    print(f"\npeak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()

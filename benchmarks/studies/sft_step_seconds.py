"""Seconds per optimizer step of the ``sft`` study arm's update, and the steps that fill a budget.

    OMP_NUM_THREADS=1 python benchmarks/studies/sft_step_seconds.py --config configs/study.yaml \
        --steps 10 --per-step 32 --budget 1451 --updates 16

Times ONE generator update of the ``sft`` arm (``tango_steps.study.ablation.VARIANTS["sft"]``: gold
solutions of a round's problems, advantage 1, each optimizer step a plain NLL step) on the recipe's
warmed-up generator, exactly as a round runs it (``tango_steps.round.update.sft_batch`` + ``update``),
with ``--steps`` optimizer steps of ``--per-step`` gold solutions. Prints the seconds per step and,
given a budget in seconds over ``--updates`` generator updates, the steps per update that fill it
(docs/results.md, Study 2: the floor at equal compute). Measure it under the load the budget was
measured under (e.g. two jobs on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tango_steps.config import load_config, parse_overrides
from tango_steps.models.loading import load_tokenizer
from tango_steps.pipeline.driver import initial_checkpoints
from tango_steps.round.plan import round_plan
from tango_steps.round.update import sft_batch, update
from tango_steps.study.ablation import VARIANTS

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "study.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps in the timed update")
    ap.add_argument("--per-step", type=int, default=32, help="gold solutions per optimizer step")
    ap.add_argument("--budget", type=float, help="seconds to fill over --updates generator updates")
    ap.add_argument("--updates", type=int, default=16)
    ap.add_argument("--round", type=int, default=2, help="the round whose problems are trained on")
    args = ap.parse_args()
    sft = {
        **VARIANTS["sft"],
        "algorithm.sft_sequences": args.steps * args.per_step,
        "generator_update.optimizer_steps": args.steps,
    }
    cfg = load_config(args.config, {**sft, **parse_overrides(args.set)})
    with tempfile.TemporaryDirectory() as tmp:
        dirs = initial_checkpoints(cfg, Path(tmp) / "r0", log=lambda s: None)
        gen = dirs["generator"]
        t0 = time.perf_counter()
        batch = sft_batch(cfg, args.round, load_tokenizer(str(gen / "model")))
        prep = time.perf_counter() - t0
        plan = round_plan(cfg, args.round)  # the update tokenises the same gold solutions itself
        m = update(cfg, plan, "generator", gen, gen, None, Path(tmp) / "out", log=lambda s: None)
    seconds = m["generator_update/seconds"]
    per_step = seconds / args.steps
    print("| steps | gold solutions | tokens | batch prep s | update s | s per step |")
    print("|---|---|---|---|---|---|")
    tokens = sum(len(r) for r in batch["response_ids"])
    print(f"| {args.steps} | {len(batch['response_ids'])} | {tokens} | {prep:.1f} | {seconds:.1f} | {per_step:.2f} |")
    if args.budget:
        per_update = args.budget / args.updates
        steps = max(1, round(per_update / per_step))
        print(
            f"budget {args.budget:.0f} s over {args.updates} updates = {per_update:.1f} s per update -> "
            f"{steps} optimizer steps of {args.per_step} (--set generator_update.optimizer_steps={steps} "
            f"--set algorithm.sft_sequences={steps * args.per_step})"
        )


if __name__ == "__main__":
    main()

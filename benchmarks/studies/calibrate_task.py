"""Calibrate an embedded task for the tiny generator: its SFT warm-up's held-out accuracy curve (docs/results.md).

    python benchmarks/studies/calibrate_task.py --param min_ops=4 --param max_ops=5 --seed 0
    python benchmarks/studies/calibrate_task.py --param min_ops=4 --param max_ops=5 --param max_value=12 --seed 0

Runs (or reuses from the cache, ``$TANGO_CACHE/tiny/generators/<key>``) the generator stage of the
tiny warm-up exactly as a run with ``task: {name: ..., params: ...}`` and this seed would, and prints
its held-out greedy accuracy every ``eval_every`` SFT steps, where it stopped (the warm-up stops at
``target_accuracy`` or ``max_steps``) and its seconds. The study
of issue #12 needs a task whose warm-up lands at 25-45%: this is how its ranges were chosen. A run
of the same task and seed later reuses the cached generator, so nothing here is wasted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tango_steps.training import warmup as W


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="task parameter (YAML value)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from tango_steps.config import parse_overrides
    from tango_steps.tasks import get_task

    params = parse_overrides(args.param)

    get_task(args.task, **params)  # a bad parameter fails here, before any training
    settings = W.WarmupSettings(task=args.task, task_params=params, seed=args.seed)
    print(f"{args.task} {params} seed {args.seed}: generator warm-up (key {settings.generator_key()})", flush=True)
    folder, report = W.warmed_up_generator(settings)
    print(f"generator in {folder}")
    sft = report["generator_sft"]
    print("\n| SFT step | held-out accuracy | format rate |\n|---|---|---|")
    for row in sft["history"]:
        print(f"| {row['step']} | {row['accuracy']:.3f} | {row['format_rate']:.3f} |")
    held = report["generator_heldout"]
    print(
        f"\nstopped at step {sft['steps']} (target {settings.target_accuracy}, at most "
        f"{settings.generator_sft.max_steps}); held-out {settings.eval_problems} problems: accuracy "
        f"{held['accuracy']:.3f}, format {held['format_rate']:.3f}; {sft['seconds']:.0f} s"
    )
    print(json.dumps({"task": args.task, "params": params, "seed": args.seed, "key": settings.generator_key(),
                      "steps": sft["steps"], "heldout": held, "seconds": sft["seconds"]}))  # fmt: skip


if __name__ == "__main__":
    main()

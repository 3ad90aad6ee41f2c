"""Seconds of each model stage of a round against the engine's batch size and the update's micro-batch.

    python benchmarks/speed/stage_batch_sizes.py                          # tiny default, hf batch 64, 32, 16
    python benchmarks/speed/stage_batch_sizes.py --hf 64 32 --micro 64 32 --repeats 2

Runs, in this process, the stages a TangoRoundFlow step runs (the same ``tango_steps.round``
functions, engine load included): a generator round's rollout, its judge and its generator update,
a verifier round's judge and verifier update, and the held-out evaluation, once per value of
``rollout.hf_batch_size`` (sampling stages) and of the updates' ``micro_batch_size``. Threads are what
the environment sets (a flow's steps use torch's default: all cores). Both knobs change how the work is
cut into calls, not what is computed: the same prompts, samples, tokens and loss (a different chunking
draws other random numbers, like another seed; the gradient is the same sum in another order).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tango_steps.config import load_config
from tango_steps.pipeline.driver import initial_checkpoints
from tango_steps.round.evaluate import evaluate
from tango_steps.round.judge import judge
from tango_steps.round.plan import alpha_horizon, round_plan
from tango_steps.round.reward import reward
from tango_steps.round.sample import rollout

REPO = Path(__file__).resolve().parents[2]
QUIET = lambda s: None  # noqa: E731


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls of ``fn`` and its last result."""
    secs, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        secs.append(time.perf_counter() - t0)
    return statistics.median(secs), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    ap.add_argument("--hf", type=int, nargs="+", default=[64, 32, 16], help="rollout.hf_batch_size values")
    ap.add_argument("--micro", type=int, nargs="*", default=[64, 32], help="update micro_batch_size values")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    base = load_config(args.config)
    gen_round, ver_round = (next(p for k in range(1, base.rounds + 1)
                                 if (p := round_plan(base, k, alpha_horizon(base))).slot == slot)
                            for slot in ("generator", "verifier"))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        dirs = initial_checkpoints(base, Path(tmp) / "init", log=QUIET)
        print(f"{args.config}: generator round {gen_round.round_idx}, verifier round {ver_round.round_idx}\n")
        print("| hf_batch_size | rollout (gen. round) s | judge (gen. round) s | judge (ver. round) s | evaluate s |")
        print("|---|---|---|---|---|")
        tables = {}
        for bs in args.hf:
            cfg = load_config(args.config, {"rollout.hf_batch_size": bs})
            row = []
            for plan in (gen_round, ver_round):
                s, (roll, _) = timed(partial(rollout, cfg, plan, dirs["generator"], log=QUIET), args.repeats)
                if plan is gen_round:
                    row.append(s)
                s, (judg, _) = timed(partial(judge, cfg, plan, dirs["verifier"], roll, log=QUIET), args.repeats)
                row.append(s)
                tables[plan.slot] = (roll, judg)
            s, _ = timed(partial(evaluate, cfg, dirs["generator"], dirs["verifier"], log=QUIET), args.repeats)
            row.append(s)
            print(f"| {bs} | " + " | ".join(f"{x:.2f}" for x in row) + " |", flush=True)
        if not args.micro:
            return
        print("\n| micro_batch_size | generator update s | verifier update s |")
        print("|---|---|---|")
        fresh = itertools.count()  # an update refuses to overwrite a checkpoint: one folder per call
        for mb in args.micro:
            cfg = load_config(args.config, {f"{r}_update.micro_batch_size": mb for r in ("generator", "verifier")})
            row = []
            for plan, role in ((gen_round, "generator"), (ver_round, "verifier")):
                roll, judg = tables[plan.slot]
                out = reward(cfg, plan, roll, judg, None, log=QUIET)
                batch = out.generator_batch if role == "generator" else out.verifier_batch

                def update(plan=plan, role=role, batch=batch, cfg=cfg):
                    new = Path(tmp) / f"{role}-{next(fresh)}"
                    return update(cfg, plan, role, dirs[role], dirs[role], batch, new, log=QUIET)

                row.append(timed(update, args.repeats)[0])
            print(f"| {mb} | " + " | ".join(f"{x:.2f}" for x in row) + " |", flush=True)


if __name__ == "__main__":
    main()

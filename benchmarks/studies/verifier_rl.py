"""Issue #36, Stage B: can the verifier learn step-level judgment from outcome rewards? (pre-registered in
docs/results.md, "Issue #36"). Verifier-only RL in ONE process with the generator frozen, the verifier re-judging a
FIXED set of sampled solutions every ``--every`` updates.

    python benchmarks/studies/verifier_rl.py --arm b1 --out docs/results/issue36      # the paper's verifier
    python benchmarks/studies/verifier_rl.py --arm b2 --out docs/results/issue36      # final verdict = AND of steps

The fixed set (``<out>/fixed_set.csv.gz``, made once, then read by every arm and every later run): one solution
per held-out problem, sampled at temperature 1 from the round-0 generator (the shipped tiny one), with its exact
labels (correct, each step's label, the first wrong step). Every ``--every`` verifier optimizer steps the current
verifier judges all of them greedily (``round.evaluate.judged``): process F1 (ProcessBench), its two accuracies,
the content-blind chance line (``method.metrics.chance_process_f1``), balanced accuracy, format. The per-solution
predictions go to ``<out>/<arm>_judged.csv.gz``; the gate (process F1 at the end >= its start + 0.10, the paired
95% bootstrap interval of that rise above 0, the end above the chance line, balanced accuracy not below its start)
is printed with its numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tango_steps.config import load_config, parse_overrides
from tango_steps.method.metrics import verifier_metrics
from tango_steps.pipeline.budgets import check_budgets
from tango_steps.pipeline.driver import initial_checkpoints
from tango_steps.round.evaluate import heldout_solutions, judged
from tango_steps.round.in_process import QUIET, InProcessRun

REPO = Path(__file__).resolve().parents[2]
ARMS = {  # dotted keys: they set one field of the tiny recipe, never replace a section
    "b1": {},  # the verifier as the paper specifies: its written final verdict, free-standing
    "b2": {"verifier.final_from_steps": True, "verifier.warmup": "self_check_and"},
}
FIXED_SEED = 36  # the fixed set's sampling seed (one set for every arm and run)
COLUMNS = ["prompt_id", "question", "gold", "text", "truncated", "length", "num_steps", "correct", "first_error",
           "step_labels"]  # fmt: skip


def recipe(arm: str, updates: int, overrides: list[str]):
    """The tiny default with the generator frozen, every round a verifier round: N = 8 verifications of each of 32
    solutions, 2 optimizer steps per round, so ``updates`` optimizer steps take ``updates / 2`` rounds."""
    rounds = updates // 2
    base = {
        "rounds": rounds,
        "schedule.verifier_warmup_rounds": rounds,
        "schedule.generator_per_verifier": 0,
        "schedule.train_generator": False,
        "verifier_sampling.n": 8,
        "verifier_update.optimizer_steps": 2,
        "evaluation.every": 10_000,  # measured here, on the fixed set
    }
    return load_config(REPO / "configs" / "tiny.yaml", {**base, **ARMS[arm], **parse_overrides(overrides)})


def fixed_set(cfg, generator_ckpt: Path, path: Path) -> pd.DataFrame:
    """The fixed solutions: read from ``path``, or sampled once (T = 1, seed :data:`FIXED_SEED`) and written there."""
    if path.exists():
        df = pd.read_csv(path)
        df["step_labels"] = df["step_labels"].map(lambda s: None if pd.isna(s) else json.loads(s))
        return df
    df = heldout_solutions(cfg, generator_ckpt, QUIET, temperature=1.0, seed=FIXED_SEED)[COLUMNS]
    out = df.copy()
    out["step_labels"] = out["step_labels"].map(lambda s: None if s is None else json.dumps(s))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return df


def measure(cfg, ckpt: Path, fixed: pd.DataFrame, updates: int) -> tuple[dict, pd.DataFrame]:
    """The verifier ``ckpt`` on the fixed set: its metrics and per-solution verdicts."""
    t = judged(cfg, ckpt, fixed, QUIET)
    m = verifier_metrics(t)
    m["chance"] = m["eval/verifier_process_f1_chance"]
    rows = pd.DataFrame({"updates": updates, "prompt_id": t["prompt_id"], "final_verdict": t["final_verdict"],
                         "predicted_first_error": t["predicted_first_error"],
                         "format_score": t["verifier_format_score"]})  # fmt: skip
    return m, rows


def process_f1_rise(fixed: pd.DataFrame, start: pd.DataFrame, end: pd.DataFrame, resamples: int = 10_000):
    """End - start process F1 on the fixed set and its paired 95% bootstrap interval over solutions."""
    keep = (fixed["step_labels"].notna() & (fixed["correct"] | (fixed["first_error"] >= 0))).to_numpy()
    fe = fixed["first_error"].to_numpy()[keep]
    err = fe >= 0
    right = [(p["predicted_first_error"].to_numpy()[keep] == np.where(err, fe, -1)) for p in (start, end)]

    def f1(idx: np.ndarray, r: np.ndarray) -> np.ndarray:
        e, c = err[idx], ~err[idx]
        acc_e = (r[idx] & e).sum(axis=-1) / np.maximum(e.sum(axis=-1), 1)
        acc_c = (r[idx] & c).sum(axis=-1) / np.maximum(c.sum(axis=-1), 1)
        return np.where(acc_e + acc_c > 0, 2 * acc_e * acc_c / np.maximum(acc_e + acc_c, 1e-12), 0.0)

    n = len(fe)
    full = np.arange(n)[None, :]
    rise = float(f1(full, right[1])[0] - f1(full, right[0])[0])
    idx = np.random.default_rng(0).integers(0, n, size=(resamples, n))
    boot = f1(idx, right[1]) - f1(idx, right[0])
    return rise, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", choices=list(ARMS), required=True)
    ap.add_argument("--updates", type=int, default=80, help="verifier optimizer steps (2 a round)")
    ap.add_argument("--every", type=int, default=20, help="measure every this many optimizer steps")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "issue36")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    args = ap.parse_args()
    cfg = recipe(args.arm, args.updates, args.set)
    check_budgets(cfg)
    print(f"arm {args.arm}: {cfg.rounds} verifier rounds, {cfg.batch.verifier_prompts} solutions x "
          f"{cfg.verifier_sampling.n} verifications, {cfg.verifier_update.optimizer_steps} optimizer steps a round, "
          f"final_from_steps {cfg.verifier.final_from_steps}, warm-up {cfg.verifier.warmup}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        run = InProcessRun(cfg, initial_checkpoints(cfg, work / "r0", log=print), work)
        fixed = fixed_set(cfg, run.generator_init, args.out / "fixed_set.csv.gz")
        print(f"fixed set: {len(fixed)} solutions, {int(fixed['correct'].sum())} correct, first errors "
              f"{fixed['first_error'].value_counts().sort_index().to_dict()} ({time.perf_counter() - t0:.0f} s)",
              flush=True)  # fmt: skip
        cols = ["updates", "process F1", "acc erroneous", "acc correct", "chance", "balanced acc", "format",
                "says CORRECT", "skipped steps", "s"]  # fmt: skip
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), flush=True)
        results, judged_rows, updates, skipped = [], [], 0, 0
        for k in range(cfg.rounds + 1):
            if k:
                out = run.round()
                skipped += int(out.update_metrics.get("verifier_update/skipped_steps", 0))
                updates = k * cfg.verifier_update.optimizer_steps
            if updates % args.every == 0 and (k == 0 or out.plan.update_verifier):
                m, rows = measure(cfg, run.verifier, fixed, updates)
                results.append({"arm": args.arm, "updates": updates, **m})
                judged_rows.append(rows)
                keys = ["process_f1", "process_acc_erroneous", "process_acc_correct"]
                cells = [f"{m['eval/verifier_' + key]:.3f}" for key in keys] + [f"{m['chance']:.3f}"]
                cells += [f"{m['eval/verifier_' + key]:.3f}" for key in ("balanced_accuracy", "format_ok_frac",
                                                                           "says_correct_frac")]  # fmt: skip
                print(f"| {updates} | " + " | ".join(cells) + f" | {skipped} | {time.perf_counter() - t0:.0f} |",
                      flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(results).to_csv(args.out / f"{args.arm}_metrics.csv", index=False)
    allj = pd.concat(judged_rows)
    allj.to_csv(args.out / f"{args.arm}_judged.csv.gz", index=False)
    start, end = judged_rows[0], judged_rows[-1]
    rise, lo, hi = process_f1_rise(fixed, start, end)
    first, last = results[0], results[-1]
    checks = {
        "process F1 rose by >= 0.10": rise >= 0.10,
        "its 95% interval excludes 0": lo > 0,
        "above the chance line at the end": last["eval/verifier_process_f1"] > last["chance"],
        "balanced accuracy not below its start": last["eval/verifier_balanced_accuracy"]
        >= first["eval/verifier_balanced_accuracy"],
    }
    print(f"\nprocess F1 {first['eval/verifier_process_f1']:.3f} -> {last['eval/verifier_process_f1']:.3f}: "
          f"rise {rise:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap over solutions, 10,000 resamples)")  # fmt: skip
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}: {name}")
    print(f"gate: {'PASSED' if all(checks.values()) else 'NOT PASSED'} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()

"""Quick hyperparameter scans: Tango rounds in ONE process, without Metaflow (a diagnostic, not the pipeline).

    python benchmarks/studies/quick_rounds.py --rounds 12 --set algorithm.step_rewards=false \
        --set schedule.train_verifier=false --set schedule.verifier_warmup_rounds=0 \
        --set schedule.generator_per_verifier=0 --set generator_update.learning_rate=2e-4

Calls the same ``tango_steps.round`` stage functions as TangoRoundFlow's steps, in the same order,
with checkpoints in a temporary folder: about 11 s per tiny round instead of ~41 s, because no step
starts a process, stores artifacts or renders a card. There is no resume, no lineage and nothing
to browse; use it to decide what to run, then run that with TangoFlow / AblationFlow. The figures in
docs/results.md "What was tried" came from this script. ``--set`` values are parsed as YAML.

``--variant`` applies an AblationFlow arm's switches (``tango_steps.study.ablation.VARIANTS``, before the
``--set`` overrides) and ``--finals`` appends every evaluation's per-problem correctness to a CSV in
``benchmarks/studies/study_intervals.py``'s long format, so in-process arms can be compared paired per problem:

    python benchmarks/studies/quick_rounds.py --config configs/study.yaml --rounds 22 --variant oracle \
        --set seed=1 --finals runs/oracle_s1.csv
    python benchmarks/studies/study_intervals.py --csv runs/grpo_s1.csv --csv runs/oracle_s1.csv --out runs
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tango_steps.config import load_config, parse_overrides
from tango_steps.pipeline.budgets import check_budgets
from tango_steps.pipeline.driver import initial_checkpoints
from tango_steps.round.evaluate import rejudge
from tango_steps.round.in_process import QUIET, InProcessRun
from tango_steps.study.ablation import VARIANTS

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    ap.add_argument("--variant", choices=list(VARIANTS), help="an AblationFlow arm's switches (before --set)")
    ap.add_argument("--finals", type=Path, help="append per-problem held-out correctness to this CSV")
    ap.add_argument("--name", help="the arm's name in --finals (default: --variant, else 'custom')")
    args = ap.parse_args()
    overrides = {**(VARIANTS[args.variant] if args.variant else {}), **parse_overrides(args.set)}
    cfg = load_config(args.config, {**overrides, "rounds": args.rounds})
    check_budgets(cfg)  # as TangoFlow's start does: a budget the tokenised prompts or solutions overrun is refused
    variant = args.name or args.variant or "custom"
    if args.finals and args.finals.exists():
        args.finals.unlink()  # one run per file: a rerun replaces it, never doubles its rows

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = InProcessRun(cfg, initial_checkpoints(cfg, work / "r0", log=QUIET), work)
        table, res = run.evaluate()
        cols = ["gen acc", "ver F1", "ver bal acc", "ver format", "says CORRECT", "process F1", "chance",
                "outcome reward", "alpha", "flat groups", "w correct", "w incorrect"]  # fmt: skip
        # s: the round's training seconds (rollout, judge, reward, updates); eval s: its evaluation's
        print("| round | slot | updated | " + " | ".join(cols) + " | s | eval s |")
        print("|" + "---|" * (len(cols) + 5))
        print(f"| 0 | - | - | {_cells(res.metrics, {}, math.nan)} | - | - |", flush=True)
        train_seconds = 0.0
        _save_finals(args.finals, cfg, variant, 0, 0, table)
        for k in range(1, cfg.rounds + 1):
            r = run.round()
            plan, rm, m = r.plan, r.rewards.metrics, {}
            train_seconds += r.train_seconds
            t1 = time.perf_counter()
            if plan.evaluate:  # evaluation.every (e.g. --set evaluation.every=5) skips the others
                table, res = run.evaluate()
                m = res.metrics
                _save_finals(args.finals, cfg, variant, k, run.generator_updates, table)
            alpha = plan.alpha if plan.alpha is not None else math.nan
            updated = "+".join(n for n, u in (("gen", plan.update_generator), ("ver", plan.update_verifier)) if u)
            eval_s = f"{time.perf_counter() - t1:.1f}" if plan.evaluate else "-"
            cells = _cells(m, rm, alpha)
            print(f"| {k} | {plan.slot} | {updated or '-'} | {cells} | {r.train_seconds:.1f} | {eval_s} |")
            if m.get("eval/verifier_alarm"):
                print(f"|   | ALARM: {m['eval/verifier_alarm']} |", flush=True)
        # the sft arm's compute budget is matched to this figure of the tango arm (docs/results.md)
        print(f"training seconds (rounds 1-{cfg.rounds}, evaluations excluded): {train_seconds:.0f}", flush=True)
        if run.verifier != run.verifier_init:  # the verifier's own share of the change (verifier_crossjudge's v0 x sN)
            frozen = rejudge(cfg, run.verifier_init, table, log=QUIET)
            bal, fmt = frozen["eval/verifier_balanced_accuracy"], frozen["eval/verifier_format_ok_frac"]
            print(
                f"round 0's verifier on the last evaluated solutions: balanced accuracy {bal:.3f}, format "
                f"{fmt:.3f}, says CORRECT {frozen['eval/verifier_says_correct_frac']:.3f}, "
                f"process F1 {frozen['eval/verifier_process_f1']:.3f}",
                flush=True,
            )


def _save_finals(path: Path | None, cfg, variant: str, k: int, updates: int, table) -> None:
    """Append one evaluation's per-problem correctness (study_intervals.py's long format), with each solution's first
    wrong step and the verifier's predicted one (-1: none; -2: unusable verdicts), so process F1 and its chance line
    can be recomputed from the file."""
    if path is None:
        return
    import pandas as pd

    run = f"quick_rounds/{cfg.task.name}/{variant}/s{cfg.seed}/r{k}"  # the evaluation's identity in the table
    rows = pd.DataFrame({"task": cfg.task.name, "variant": variant, "seed": cfg.seed, "round": k,
                         "generator_updates": updates, "run": run, "prompt_id": table["prompt_id"],
                         "correct": table["correct"].astype(float), "first_error": table["first_error"],
                         "predicted_first_error": table["predicted_first_error"]})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, mode="a", header=not path.exists(), index=False)


def _cells(m: dict, rm: dict, alpha: float) -> str:
    """The table's cells: held-out metrics (m), the round's reward metrics (rm; '-' when absent)."""

    def f(v) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    return " | ".join(
        [
            f(m.get("eval/generator_accuracy")), f(m.get("eval/verifier_f1")),
            f(m.get("eval/verifier_balanced_accuracy")), f(m.get("eval/verifier_format_ok_frac")),
            f(m.get("eval/verifier_says_correct_frac")), f(m.get("eval/verifier_process_f1")),
            f(m.get("eval/verifier_process_f1_chance")), f(rm.get("reward/outcome_mean")), f"{alpha:.4f}",
            f(rm.get("reward/verifier_flat_groups_frac")), f(rm.get("reward/verifier_weight_correct")),
            f(rm.get("reward/verifier_weight_incorrect")),
        ]
    )  # fmt: skip


if __name__ == "__main__":
    main()

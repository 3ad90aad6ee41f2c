"""Paired per-problem comparisons of a study's arms, with bootstrap intervals (docs/method.md §8; docs/results.md).

    python benchmarks/studies/study_intervals.py --run AblationFlow/<id> [--run AblationFlow/<other>] --out docs/results
    python benchmarks/studies/study_intervals.py --csv docs/results/study_finals.csv --out docs/results
    python benchmarks/studies/study_intervals.py --csv grpo_s0.csv --csv tango=tango_run2_s0.csv --save joined.csv.gz

Each branch's final per-problem score is its correctness on each held-out problem averaged over its
last ``--window`` distinct generator checkpoints (``tango_steps.study.ablation.final_rounds``; read from the
round runs' ``eval_table`` artifacts through the Metaflow client). Every arm is compared with
``--baseline`` (grpo) paired per (seed, problem); the interval is a paired bootstrap over problems
pooled over seeds (``paired_bootstrap``, 10,000 resamples). ``--csv ARM=FILE`` relabels that file's
arm (quick_rounds.py --finals names it after ``--name``). Prints a Markdown table (points), writes the
joined per-problem finals to ``--save`` (default with ``--run``: ``<out>/study_finals.csv``; the
table then redraws without the runs) and
``<out>/study_<task>.png`` (final accuracy per arm and the difference to the baseline, error bars =
95% intervals) and ``<out>/study_<task>_curves.png`` (each arm's accuracy per evaluated round, pooled
over seeds, with its bootstrap interval).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.studies.plot_ablation import markdown
from tango_steps.study.ablation import merge_tables, paired_comparisons


def eval_correct(pathspec: str) -> pd.Series:
    """Held-out correctness by problem id of one evaluation: a round run's, or round 0's (its flow task)."""
    from metaflow import Run, Task

    holder = Task(pathspec) if pathspec.count("/") == 3 else Run(pathspec)["evaluate"].task
    table = holder["eval_table"].data
    return table.set_index("prompt_id")["correct"].astype(float)


def finals_from_runs(runs: list[str], window: int) -> pd.DataFrame:
    """Long table (task, variant, seed, round, run, prompt_id, correct) of every branch's final rounds."""
    from metaflow import Run, namespace

    from tango_steps.study.ablation import final_rounds

    namespace(None)
    table = merge_tables([Run(run)["join"].task["metrics"].data for run in runs])
    rows = []
    for (task, variant, seed), g in table.groupby(["task", "variant", "seed"], sort=False):
        for _, r in final_rounds(g, window).iterrows():
            c = eval_correct(r["run"])
            rows.append(pd.DataFrame({"task": task, "variant": variant, "seed": seed, "round": r["round"],
                                      "generator_updates": r["generator_updates"], "run": r["run"],
                                      "prompt_id": c.index, "correct": c.to_numpy()}))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


def comparisons(finals: pd.DataFrame, baseline: str, window: int, resamples: int) -> pd.DataFrame:
    """``paired_comparisons`` over the saved long table (each run's scores looked up in it)."""
    by_run = {run: g.set_index("prompt_id")["correct"] for run, g in finals.groupby("run")}
    acc = finals.groupby(["task", "variant", "seed", "round", "run", "generator_updates"], as_index=False)["correct"]
    table = acc.mean().rename(columns={"correct": "generator_accuracy"})
    return paired_comparisons(table, by_run.__getitem__, baseline=baseline, window=window, resamples=resamples)


def plot(result: pd.DataFrame, task: str, baseline: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = result[result["task"] == task].reset_index(drop=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    x = range(len(r))
    acc = 100 * r["final_accuracy"]
    ax1.errorbar(x, acc, yerr=[acc - 100 * r["acc_low"], 100 * r["acc_high"] - acc], fmt="o", capsize=4)
    # arms run on fewer seeds are other quantities: the label says how many seeds each point pools
    ax1.set_xticks(list(x), [f"{v} ({n} seed{'s' * (n > 1)})" for v, n in zip(r["variant"], r["seeds"], strict=True)],
                   rotation=30)  # fmt: skip
    ax1.set_ylabel("final held-out accuracy (%)")
    ax1.set_title(f"{task}: final accuracy, 95% bootstrap interval")
    # no arm paired with the baseline (e.g. two oracle settings compared alone): the right panel stays empty
    d = r.dropna(subset=["diff"]).reset_index(drop=True) if "diff" in r else r.iloc[:0]
    if len(d):
        xd = range(len(d))
        diff = 100 * d["diff"]
        ax2.errorbar(xd, diff, yerr=[diff - 100 * d["diff_low"], 100 * d["diff_high"] - diff], fmt="o", capsize=4)
        labels = [f"{v} ({int(n)})" for v, n in zip(d["variant"], d["paired_seeds"], strict=True)]
        ax2.set_xticks(list(xd), labels, rotation=30)
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_ylabel(f"arm - {baseline} (points)")
    ax2.set_title("paired per (seed, problem), 95% interval")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(finals: pd.DataFrame, resamples: int) -> pd.DataFrame:
    """Each arm's held-out accuracy per evaluated round, pooled over its seeds, with a bootstrap interval.

    Only rounds that every seed of the arm evaluated are kept (a mean over fewer seeds is another
    quantity). Returns columns task, variant, round, seeds, accuracy, low, high.
    """
    import numpy as np

    from tango_steps.study.ablation import paired_bootstrap

    rows = []
    for (task, variant), g in finals.groupby(["task", "variant"], sort=False):
        seeds = sorted(g["seed"].unique())
        for rnd, r in g.groupby("round"):
            if sorted(r["seed"].unique()) != seeds:
                continue
            a = np.stack([x.sort_values("prompt_id")["correct"].to_numpy(float) for _, x in r.groupby("seed")])
            acc, lo, hi = paired_bootstrap(a, resamples=resamples)
            rows.append({"task": task, "variant": variant, "round": rnd, "seeds": len(seeds), "accuracy": acc,
                         "low": lo, "high": hi})  # fmt: skip
    return pd.DataFrame(rows)


def plot_curves(table: pd.DataFrame, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, c in table[table["task"] == task].groupby("variant", sort=False):
        acc = 100 * c["accuracy"]
        err = [acc - 100 * c["low"], 100 * c["high"] - acc]
        ax.errorbar(c["round"], acc, yerr=err, marker="o", capsize=3, label=f"{variant} ({c['seeds'].iloc[0]} seeds)")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"{task}: held-out accuracy per round, pooled over seeds, 95% interval")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_finals(spec: str) -> pd.DataFrame:
    """``FILE`` or ``ARM=FILE`` (its ``variant`` column set to ARM): one file of per-problem finals."""
    arm, sep, path = spec.partition("=")
    if not sep or Path(spec).is_file():  # an existing file whose name holds "=" is read as a file
        return pd.read_csv(spec)
    if not arm or not path:
        raise SystemExit(f"--csv '{spec}': expected FILE or ARM=FILE")
    return pd.read_csv(path).assign(variant=arm)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", action="append", help="AblationFlow/<run id>; repeat to join grids run apart")
    src.add_argument(
        "--csv",
        action="append",
        help="[ARM=]FILE: per-problem finals (an earlier call's, or quick_rounds.py --finals), ARM relabels "
        "its arm; repeatable",
    )
    ap.add_argument("--save", help="write the joined per-problem finals here (.csv, .csv.gz)")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--baseline", default="grpo")
    ap.add_argument("--window", type=int, default=3, help="distinct generator checkpoints averaged as 'final'")
    ap.add_argument("--resamples", type=int, default=10_000)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.csv:
        # merge_tables: the same (task, variant, seed) arm in two files is an error naming it, not an average
        finals = merge_tables([read_finals(c) for c in args.csv])
    else:
        finals = finals_from_runs(args.run, args.window)
    save = args.save or (None if args.csv else out / "study_finals.csv")
    if save:
        finals.to_csv(save, index=False)
        print(f"wrote {save} ({len(finals)} rows)")
    result = comparisons(finals, args.baseline, args.window, args.resamples)
    shown = result.copy()
    for c in ("final_accuracy", "acc_low", "acc_high", "baseline_accuracy", "diff", "diff_low", "diff_high"):
        if c in shown:
            shown[c] = (100 * shown[c]).round(1)
    print(markdown(shown))
    per_round = curves(finals, args.resamples)
    for task in result["task"].unique():
        plot(result, task, args.baseline, out / f"study_{task}.png")
        plot_curves(per_round, task, out / f"study_{task}_curves.png")
        print(f"wrote {out / f'study_{task}.png'} and {out / f'study_{task}_curves.png'}")


if __name__ == "__main__":
    main()

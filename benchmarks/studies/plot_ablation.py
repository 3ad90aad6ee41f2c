"""Plots and the summary table of an AblationFlow run (docs/method.md §8), for docs/results.md.

    python benchmarks/studies/plot_ablation.py --run AblationFlow/<id> [--run AblationFlow/<other>] --out docs/results
    python benchmarks/studies/plot_ablation.py --csv docs/results/ablation_metrics.csv --out docs/results

Reads the run's ``metrics`` table (several runs' tables joined, e.g. one grid per task, each branch from
one run only; or a CSV saved by an earlier call), writes
``<out>/ablation_metrics.csv`` (from a run), one PNG of curves per task (``<out>/<task>.png``: held-out
generator accuracy by round and by generator update, verifier outcome F1, process F1, mean outcome
reward, alpha; seed mean with a band of +-1 standard deviation over seeds) and prints the summary
of ``tango_steps.study.ablation.summarize`` as a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tango_steps.study.ablation import merge_tables, summarize

COLORS = {"tango": "tab:red", "grpo": "tab:blue", "frozen_verifier": "tab:orange", "frozen_generator": "tab:green"}
PANELS = [
    ("round", "generator_accuracy", "generator held-out accuracy (greedy)"),
    ("generator_updates", "generator_accuracy", "generator accuracy by generator update"),
    ("round", "verifier_f1", "verifier outcome F1"),
    ("round", "verifier_process_f1", "verifier process F1 (exact step labels)"),
    ("round", "mean_outcome_reward", "mean outcome reward of the round's samples"),
    ("round", "alpha", "alpha (step-advantage weight)"),
]


def load_table(runs: list[str] | None, csv: str | None) -> pd.DataFrame:
    """The study table from AblationFlow runs (client API; joined by ``merge_tables``) or a CSV file."""
    if csv:
        return pd.read_csv(csv)
    from metaflow import Run, namespace

    namespace(None)
    return merge_tables([Run(run)["join"].task["metrics"].data for run in runs])


def plot_task(table: pd.DataFrame, task: str, path: Path) -> None:
    """One figure of the docs/method.md §8 curves of ``task``: seed mean per variant, +-1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table[table["task"] == task]
    seeds = sorted(t["seed"].unique())
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (x, y, title) in zip(axes.flat, PANELS, strict=True):
        for variant, g in t.groupby("variant", sort=False):
            d = g.dropna(subset=[y])
            if d.empty:
                continue
            if x == "round":
                stats = d.groupby("round")[y].agg(["mean", "std"])
            else:  # by generator update: the first round after each update (evaluation after it)
                first = d.sort_values("round").drop_duplicates(["seed", x])
                stats = first.groupby(x)[y].agg(["mean", "std"])
            c = COLORS.get(variant)
            ax.plot(stats.index, stats["mean"], marker="o", ms=3, label=variant, color=c)
            if len(seeds) > 1:
                lo, hi = stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0)
                ax.fill_between(stats.index, lo, hi, alpha=0.15, color=c)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x.replace("_", " "))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{task}: seeds {', '.join(str(s) for s in seeds)} (mean, band = +-1 std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(df: pd.DataFrame) -> str:
    """A Markdown table (no tabulate dependency)."""
    cols = list(df.columns)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", action="append", help="AblationFlow/<run id>; repeat to join several runs")
    src.add_argument("--csv", help="a table saved by an earlier call")
    ap.add_argument("--out", default="docs/results", help="folder for the PNGs (and the CSV, from a run)")
    ap.add_argument("--final-window", type=int, default=3, help="final accuracy = mean of the last N rounds")
    args = ap.parse_args(argv)

    table = load_table(args.run, args.csv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.run:
        table.to_csv(out / "ablation_metrics.csv", index=False)
        print(f"wrote {out / 'ablation_metrics.csv'} ({len(table)} rows)")
    for task in table["task"].unique():
        plot_task(table, task, out / f"{task}.png")
        print(f"wrote {out / f'{task}.png'}")
    print(markdown(summarize(table, final_window=args.final_window)))


if __name__ == "__main__":
    main()

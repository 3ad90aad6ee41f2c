"""A TangoFlow run's curves, one row per round: what trained, what the held-out evaluation said.

    python benchmarks/studies/run_curves.py --run TangoFlow/<id>   # METAFLOW_DATASTORE_SYSROOT_LOCAL = its datastore
    python benchmarks/studies/run_curves.py --run TangoFlow/<id> --save curves.csv
    python benchmarks/studies/run_curves.py --csv curves.csv                 # a table saved earlier

Reads the run's ``metrics`` artifact (TangoFlow's ``end``; one row per round, round 0 = the initial
models) through the Metaflow client and prints the columns below that the run has, as Markdown
(a column the run never filled, e.g. the process metrics of an answer-graded task, is left out).
Per-step wall times are ``benchmarks/speed/round_overhead.py --run``'s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.studies.run_tables import table_from_args

COLUMNS = {
    "round": "round",
    "generator_updates": "gen. updates",
    "verifier_updates": "ver. updates",
    "rollout/tokens_per_s": "rollout tok/s",
    "rollout/truncated_frac": "rollout truncated",
    "generator/outcome_reward_mean": "gen. outcome reward",
    "reward/solutions_correct_frac": "ver. train solutions correct",
    "judge/format_ok_frac": "judge format ok",
    "judge/verdict_accuracy": "judge verdict acc.",
    "generator/alpha": "alpha",
    "eval/generator_accuracy": "held-out gen. acc.",
    "eval/generator_truncated_frac": "held-out truncated",
    "eval/generator_mean_length": "held-out length",
    "eval/verifier_balanced_accuracy": "ver. balanced acc.",
    "eval/verifier_format_ok_frac": "ver. format ok",
    "eval/verifier_says_correct_frac": "ver. says correct",
}


def load_runs(runs: list[str]) -> pd.DataFrame:
    from metaflow import Run, namespace

    namespace(None)
    frames = []
    for r in runs:
        metrics = Run(r)["end"].task["metrics"].data
        frames.append(metrics.assign(run=r))
    return pd.concat(frames, ignore_index=True)


def curves(table: pd.DataFrame) -> pd.DataFrame:
    """The columns of :data:`COLUMNS` that ``table`` has and filled, renamed, rounded to 3 places."""
    numeric = table.apply(lambda c: pd.to_numeric(c, errors="coerce"))  # a saved CSV holds "" for NaN
    cols = [c for c in COLUMNS if c in numeric and numeric[c].notna().any()]
    return numeric[cols].rename(columns=COLUMNS).round(3)


def markdown(df: pd.DataFrame) -> str:
    rows = [[("" if pd.isna(v) else f"{v:g}") for v in r] for r in df.itertuples(index=False)]
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv=None) -> None:
    table = table_from_args(__doc__, load_runs, argv)
    for run, part in table.groupby("run", sort=False) if "run" in table else [("", table)]:
        print(f"\n{run}\n")
        print(markdown(curves(part)))


if __name__ == "__main__":
    main()

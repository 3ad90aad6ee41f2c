"""Is the verifier healthy at the end of a run? One row per TangoFlow run (issue #12's 3-seed check).

    python benchmarks/studies/verifier_health.py --run TangoFlow/<id seed 0> --run TangoFlow/<id seed 1> ...
    python benchmarks/studies/verifier_health.py --csv runs.csv     # a table saved by an earlier call (--save)

For each run: its seed, the verifier's held-out balanced accuracy at round 0 and at the last round,
its format rate at the last round, the rounds that raised the collapse alarm, the generator's
accuracy at both ends, and PASS when the last balanced accuracy is at least round 0's and the last
format rate at least 0.9 (the criterion of issue #12). Reads the runs' ``metrics`` artifacts through
the Metaflow client (set ``METAFLOW_DATASTORE_SYSROOT_LOCAL`` to the runs' datastore).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_tables import table_from_args

MIN_FORMAT = 0.9


def health_row(run: str, seed: int, metrics: pd.DataFrame) -> dict:
    """One run's verifier-health figures from TangoFlow's per-round ``metrics`` table (docs/method.md §5, §8)."""
    m = metrics.sort_values("round")
    evaluated = m.dropna(subset=["eval/verifier_balanced_accuracy"])  # evaluation.every > 1 leaves gaps
    first, last = evaluated.iloc[0], evaluated.iloc[-1]
    alarms = m[m.get("eval/verifier_alarm", pd.Series([""] * len(m))).fillna("").astype(bool)]["round"].tolist()
    ok = (
        last["eval/verifier_balanced_accuracy"] >= first["eval/verifier_balanced_accuracy"]
        and last["eval/verifier_format_ok_frac"] >= MIN_FORMAT
    )
    return {
        "run": run,
        "seed": seed,
        "rounds": int(m.iloc[-1]["round"]),
        "bal_acc_round0": float(first["eval/verifier_balanced_accuracy"]),
        "bal_acc_last": float(last["eval/verifier_balanced_accuracy"]),
        "format_last": float(last["eval/verifier_format_ok_frac"]),
        "alarm_rounds": " ".join(str(int(r)) for r in alarms),
        "gen_acc_round0": float(first["eval/generator_accuracy"]),
        "gen_acc_last": float(last["eval/generator_accuracy"]),
        "verdict": "PASS" if ok else "FAIL",
    }


def load_runs(runs: list[str]) -> pd.DataFrame:
    """Health rows of finished TangoFlow runs, read through the client."""
    from metaflow import Run, namespace

    namespace(None)
    rows = []
    for spec in runs:
        run = Run(spec)
        end = run["end"].task
        seed = run["start"].task["cfg"].data["seed"]
        rows.append(health_row(spec, seed, end["metrics"].data))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    table = table_from_args(__doc__.split("\n")[0], load_runs, argv)
    print(table.drop(columns=["run"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{(table['verdict'] == 'PASS').sum()} of {len(table)} runs pass "
          f"(last balanced accuracy >= round 0's and last format rate >= {MIN_FORMAT})")  # fmt: skip


if __name__ == "__main__":
    main()

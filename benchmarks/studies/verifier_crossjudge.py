"""Did the verifier get worse, or did the solutions get harder to judge? Round 0 x last round, crossed.

    python benchmarks/studies/verifier_crossjudge.py --run TangoFlow/<id> [--run ...] [--save table.csv]
    python benchmarks/studies/verifier_crossjudge.py --csv table.csv      # reprint a saved table

A run's held-out balanced accuracy at its last round is measured on the last generator's solutions,
and the generator moves toward what the verifier calls correct (its step rewards pay for that). So
for each finished TangoFlow run this judges, greedily and on the same 500 held-out problems:

- ``v0 x s0``: round 0's verifier on round 0's solutions (the run's round-0 figure, recomputed);
- ``vN x s0``: the last verifier on round 0's solutions: did the verifier itself get better or worse?
- ``v0 x sN``: round 0's verifier on the last solutions: how much harder did the drift make them?
- ``vN x sN``: the last verifier on the last solutions (the run's last-round figure, recomputed).

``vN x sN - v0 x sN`` is what the verifier's RL bought on the solutions it now faces (a frozen
verifier would have scored ``v0 x sN``). Reads the runs through the Metaflow client (set
``METAFLOW_DATASTORE_SYSROOT_LOCAL``); about two held-out verifications per run on one core.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_tables import table_from_args

PAIRS = (("v0", "s0"), ("vN", "s0"), ("v0", "sN"), ("vN", "sN"))


def crossjudge(run: str) -> list[dict]:
    """The four (verifier, solutions) pairings of one TangoFlow run (docs/method.md §5, §8), one row each."""
    from metaflow import Run, namespace

    from tango_steps.config import TangoConfig, validate
    from tango_steps.pipeline.driver import round_models
    from tango_steps.round.evaluate import rejudge

    namespace(None)
    r = Run(run)
    cfg = validate(TangoConfig, r["start"].task["cfg"].data, source=f"{run} configuration")
    start = r["start"].task
    evaluated = [Run(p)["end"].task for p in reversed(r["end"].task["round_runs"].data)]
    last = next((e for e in evaluated if e["eval_table"].data is not None), None)
    if last is None:
        raise SystemExit(f"{run}: no evaluated round after round 0")
    tables = {"s0": start["eval_table"].data, "sN": last["eval_table"].data}
    verifiers = {"v0": round_models(start.pathspec)["verifier"],
                 "vN": round_models(last.pathspec)["verifier"]}  # fmt: skip
    last_round = int(last["metrics"].data["round"])
    rows = []
    for v, s in PAIRS:
        m = rejudge(cfg, verifiers[v], tables[s], log=lambda _: None)
        rows.append({"run": run, "seed": cfg.seed, "last_round": last_round,
                     "verifier": v, "solutions": s, "generator_accuracy": float(tables[s]["correct"].mean()),
                     "balanced_accuracy": m["eval/verifier_balanced_accuracy"],
                     "says_correct": m["eval/verifier_says_correct_frac"], "precision": m["eval/verifier_precision"],
                     "recall": m["eval/verifier_recall"], "format": m["eval/verifier_format_ok_frac"],
                     "process_f1": m["eval/verifier_process_f1"]})  # fmt: skip
        print(f"{run} {v} x {s}: balanced accuracy {m['eval/verifier_balanced_accuracy']:.3f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    load = lambda runs: pd.DataFrame([row for run in runs for row in crossjudge(run)])  # noqa: E731
    table = table_from_args(__doc__.split("\n")[0], load, argv)
    print(table.drop(columns=["run"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for (seed, _run), t in table.groupby(["seed", "run"]):
        bal = {(a, b): x for a, b, x in zip(t["verifier"], t["solutions"], t["balanced_accuracy"], strict=True)}
        print(f"seed {seed}: the verifier's RL on the last solutions (vN x sN - v0 x sN) "
              f"{bal[('vN', 'sN')] - bal[('v0', 'sN')]:+.3f}; the generator's drift on round 0's verifier "
              f"(v0 x sN - v0 x s0) {bal[('v0', 'sN')] - bal[('v0', 's0')]:+.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

"""The ablation study of docs/method.md §8: Tango against vanilla GRPO and the two frozen variants.

Every variant is a configuration switch of the normal pipeline (no separate code path), applied on
top of one base recipe, so all variants start from the same warmed-up models and run the same
schedule (docs/method.md §3): the same round numbers are generator rounds in every variant, and a
switched-off model keeps its slots, only its update is skipped. That is "the same RL budget".

- ``tango``: the full method (step rewards from the verifier, both models trained);
- ``grpo``: outcome reward only, verifier out of the loop and never updated (docs/method.md §8 baseline);
- ``frozen_verifier``: Tango with the verifier never updated after its warm-up;
- ``frozen_generator``: Tango with the generator never updated (verifier learning only);
- ``oracle``: the task's exact step labels as the step verdicts (the ceiling of what any verifier
  can add); ``noisy_oracle``: the same labels, each flipped with probability
  ``algorithm.oracle_flip_prob`` (0.25). Their verifier is never updated (it is not in the loop);
- ``sft``: each generator update continues SFT on the round's gold solutions instead of RL
  (``algorithm.generator_objective``), the floor at equal compute: the study recipe sets
  ``algorithm.sft_sequences`` / ``generator_update.optimizer_steps`` to ``tango``'s measured seconds.

The functions here are pure: AblationFlow builds the grid with :func:`branches`, joins the
branches' per-round histories with :func:`study_table` and summarises with :func:`summarize`;
``benchmarks/studies/plot_ablation.py`` redraws the curves from the saved table.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pandas as pd

VARIANTS: dict[str, dict[str, Any]] = {
    "tango": {},
    "grpo": {"algorithm.step_rewards": False, "schedule.train_verifier": False},
    "frozen_verifier": {"schedule.train_verifier": False},
    "frozen_generator": {"schedule.train_generator": False},
    # the ceiling and a verifier of known step accuracy: the task's exact step labels as step verdicts
    "oracle": {"algorithm.step_verdicts": "oracle", "schedule.train_verifier": False},
    "noisy_oracle": {"algorithm.step_verdicts": "noisy_oracle", "schedule.train_verifier": False},
    # the floor at equal compute: generator updates continue SFT on gold solutions (no verifier, no RL)
    "sft": {
        "algorithm.generator_objective": "sft",
        "algorithm.step_rewards": False,
        "schedule.train_verifier": False,
        "generator_update.kl_coef": 0.0,
        "generator_update.entropy_coef": 0.0,
    },
}

# study_table's columns: the branch, the round, and the curves of docs/method.md §8 (metric name in a
# round's history -> column).
CURVES = {
    "generator_updates": "generator_updates",
    "verifier_updates": "verifier_updates",
    "eval/generator_accuracy": "generator_accuracy",
    "eval/verifier_f1": "verifier_f1",
    "eval/verifier_process_f1": "verifier_process_f1",
    "eval/verifier_balanced_accuracy": "verifier_balanced_accuracy",
    "reward/outcome_mean": "mean_outcome_reward",
    "generator/alpha": "alpha",
    "reward/groups_with_signal_frac": "mixed_outcome_groups",
    "generator/adv_step_abs_mean": "adv_step_abs_mean",
    "judge/first_incorrect_none": "verdicts_all_steps_correct",
    "judge/step_verdicts_unusable": "verdicts_unusable",
    "eval/verifier_format_ok_frac": "verifier_format_rate",
}


def parse_variants(text: str) -> list[str]:
    """``"tango,grpo"`` -> ``["tango", "grpo"]``
    (docs/method.md §8 variants); unknown names are listed with the known.
    """
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise ValueError("no variant given; known: " + ", ".join(VARIANTS))
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variant(s) {', '.join(bad)}; known: {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"variant listed twice in '{text}'")
    return names


def parse_grid(text: str) -> list[tuple[str, int]]:
    """``"arithmetic:0,1,2 last_letters:0"`` -> ``[("arithmetic", 0), ..., ("last_letters", 0)]`` (docs/method.md §8).

    Each space-separated entry is ``task:seeds``; the task name is checked against the embedded tasks.
    """
    from tango_steps.tasks import get_task

    out: list[tuple[str, int]] = []
    for entry in text.split():
        task, sep, seeds = entry.partition(":")
        if not sep or not task or not seeds:
            raise ValueError(f"grid entry '{entry}' is not task:seeds, e.g. arithmetic:0,1,2")
        get_task(task)  # raises naming the known tasks
        for s in seeds.split(","):
            try:
                seed = int(s)
            except ValueError:
                raise ValueError(f"grid entry '{entry}': seed '{s}' is not an integer") from None
            if (task, seed) in out:
                raise ValueError(f"grid entry '{entry}': {task} seed {seed} listed twice")
            out.append((task, seed))
    if not out:
        raise ValueError("empty grid; give task:seeds entries, e.g. 'arithmetic:0,1,2 last_letters:0'")
    return out


def variant_config(base: dict[str, Any], variant: str, task: str, seed: int, rounds: int | None = None):
    """The validated TangoConfig of one branch (docs/method.md §8): ``base`` with the variant's switches, task, seed.

    A task other than the base recipe's starts from that task's default parameters.
    """
    from tango_steps.config import TangoConfig, apply_overrides, validate

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}'; known: {', '.join(VARIANTS)}")
    data = copy.deepcopy(base)
    base_task = data.get("task") or {}
    same_task = base_task.get("name") == task
    data["task"] = {"name": task, "params": dict(base_task.get("params") or {}) if same_task else {}}
    data["seed"] = seed
    if rounds is not None:
        data["rounds"] = rounds
    apply_overrides(data, VARIANTS[variant])
    return validate(TangoConfig, data, source=f"ablation branch {task}/{variant}/seed {seed}")


def branches(base: dict[str, Any], variants: list[str], grid: list[tuple[str, int]], rounds: int | None) -> list[dict]:
    """One dict per (task, seed, variant) of the docs/method.md §8 grid: name, task, seed, variant, resolved config.

    Every branch's configuration is validated here, before anything trains.
    """
    from tango_steps.config import resolved

    out = []
    for task, seed in grid:
        for variant in variants:
            cfg = variant_config(base, variant, task, seed, rounds)
            name = f"{task}/{variant}/seed{seed}"
            out.append({"name": name, "task": task, "seed": seed, "variant": variant, "config": resolved(cfg)})
    return out


def study_table(results: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> pd.DataFrame:
    """One row per (branch, round) with the docs/method.md §8 curves, from each branch's per-round history.

    ``results``: ``(branch, history)`` pairs; ``history`` rows are TangoFlow's (round 0 first).
    Metrics a round did not produce (alpha in a verifier round) are NaN.
    """
    rows = []
    for branch, history in results:
        for h in history:
            row = {"task": branch["task"], "variant": branch["variant"], "seed": branch["seed"], "round": h["round"]}
            for key, col in CURVES.items():
                v = h.get(key)
                row[col] = float(v) if isinstance(v, int | float) else math.nan
            row["run"] = h.get("run", "")
            rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table[["generator_updates", "verifier_updates"]] = table[["generator_updates", "verifier_updates"]].fillna(0)
    return table


def merge_tables(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Several studies' tables as one (docs/method.md §8; e.g. the arithmetic and last_letters grids run apart).

    A (task, variant, seed) branch may come from one table only: the same branch in two runs is two
    different experiments, and silently averaging them would mix them, so it is an error naming it.
    """
    keys = ["task", "variant", "seed"]
    seen: dict[tuple, int] = {}
    for i, t in enumerate(tables):
        for key in t[keys].drop_duplicates().itertuples(index=False, name=None):
            if key in seen:
                raise ValueError(f"branch {'/'.join(map(str, key))} is in tables {seen[key]} and {i}; keep one")
            seen[key] = i
    return pd.concat(tables, ignore_index=True)


def final_value(curve: pd.Series, window: int) -> float:
    """Mean of the last ``window`` values of a per-round curve (docs/method.md §8 final accuracy, less noisy)."""
    values = curve.dropna()
    return float(values.iloc[-window:].mean()) if len(values) else math.nan


def final_accuracy(seed_rows: pd.DataFrame, window: int) -> float:
    """A seed's final generator accuracy: mean over its last ``window`` DISTINCT generator checkpoints
    (docs/method.md §8).

    A verifier round leaves the generator unchanged, so its evaluation repeats the previous round's
    checkpoint; averaging rounds would count that checkpoint twice. Rows are keyed by
    ``generator_updates`` (the checkpoint's identity) and the last row of each is kept. A variant
    whose generator never trains has one checkpoint: its final accuracy is that checkpoint's.
    """
    return final_value(final_rounds(seed_rows, window)["generator_accuracy"], window)


def final_rounds(seed_rows: pd.DataFrame, window: int) -> pd.DataFrame:
    """The rows (one per round) of the last ``window`` distinct generator checkpoints that
    :func:`final_accuracy` averages (evaluated rounds only), for per-problem scores (docs/method.md §8)."""
    rows = seed_rows.dropna(subset=["generator_accuracy"]).sort_values("round")
    return rows.drop_duplicates("generator_updates", keep="last").iloc[-window:]


def paired_comparisons(
    table: pd.DataFrame,
    per_problem: Any,
    baseline: str = "grpo",
    window: int = 3,
    resamples: int = 10_000,
) -> pd.DataFrame:
    """Each variant against ``baseline``, paired per (seed, held-out problem), with bootstrap intervals
    (docs/method.md §8).

    A branch's final per-problem score is the mean of its last ``window`` distinct generator
    checkpoints' correctness on each held-out problem (:func:`final_rounds`), so its mean is the
    branch's final accuracy. ``per_problem(run)`` returns a round run's held-out correctness as a
    Series indexed by problem id (the same problems in every seed and variant: the set is fixed).
    Only seeds both arms ran are paired. Returns one row per (task, variant) with the final accuracy
    of both arms, ``diff`` (variant - baseline) and its 95% interval ``diff_low`` / ``diff_high``,
    and the arm's own interval ``acc_low`` / ``acc_high`` (problems resampled, seeds pooled).
    """
    import numpy as np

    finals: dict[tuple[str, str, int], pd.Series] = {}
    for (task, variant, seed), rows in table.groupby(["task", "variant", "seed"], sort=False):
        scores = [per_problem(run).astype(float) for run in final_rounds(rows, window)["run"]]
        finals[(task, variant, seed)] = pd.concat(scores, axis=1).mean(axis=1)
    out = []
    for task, t in table.groupby("task", sort=False):
        for variant in t["variant"].drop_duplicates():
            seeds = sorted(s for (tk, v, s) in finals if tk == task and v == variant)
            paired = [s for s in seeds if (task, baseline, s) in finals]
            a = np.stack([finals[(task, variant, s)].sort_index().to_numpy() for s in seeds])
            acc, lo, hi = paired_bootstrap(a, resamples=resamples)
            row = {"task": task, "variant": variant, "seeds": len(seeds), "final_accuracy": acc,
                   "acc_low": lo, "acc_high": hi}  # fmt: skip
            if paired and variant != baseline:
                va = [finals[(task, variant, s)] for s in paired]
                vb = [finals[(task, baseline, s)] for s in paired]
                for x, y in zip(va, vb, strict=True):
                    if not x.index.sort_values().equals(y.index.sort_values()):
                        raise ValueError(f"{task}: {variant} and {baseline} were scored on different held-out problems")
                a = np.stack([x.sort_index().to_numpy() for x in va])
                b = np.stack([y.sort_index().to_numpy() for y in vb])
                d, dlo, dhi = paired_bootstrap(a, b, resamples)
                row.update(paired_seeds=len(paired), baseline_accuracy=float(b.mean()), diff=d, diff_low=dlo,
                           diff_high=dhi)  # fmt: skip
            out.append(row)
    return pd.DataFrame(out)


def rounds_to_reach(curve: pd.Series, target: float) -> int | None:
    """First round at which ``curve`` reaches ``target`` (docs/method.md §8 "updates to match GRPO"); None if never."""
    hit = curve[curve >= target - 1e-12]
    return int(hit.index[0]) if len(hit) else None


def summarize(table: pd.DataFrame, final_window: int = 3, baseline: str = "grpo") -> pd.DataFrame:
    """The results table of docs/method.md §8 per (task, variant).

    Columns: ``seeds``; ``final_accuracy_mean`` / ``final_accuracy_std`` (over seeds; a seed's final
    accuracy is the mean over its last ``final_window`` distinct generator checkpoints, see
    :func:`final_accuracy`); ``start_accuracy``;
    ``rounds_to_baseline_final`` and ``generator_updates_to_baseline_final`` (first round at which
    the seed-mean accuracy curve reaches the baseline's final mean accuracy; NaN when it never does
    or there is no baseline); verifier outcome and process F1 at the start (round 0) and end (mean of
    the last ``final_window`` rounds), seed means.
    """
    rows = []
    for task, t in table.groupby("task", sort=False):
        means = {v: g.groupby("round").mean(numeric_only=True) for v, g in t.groupby("variant", sort=False)}
        target = None
        if baseline in means:
            target = final_accuracy(means[baseline].reset_index(), final_window)
        for variant, g in t.groupby("variant", sort=False):
            per_seed = [final_accuracy(s, final_window) for _, s in g.groupby("seed")]
            m = means[variant]
            reach = rounds_to_reach(m["generator_accuracy"], target) if target is not None else None
            first, last = m.iloc[0], m.iloc[-final_window:]
            rows.append(
                {
                    "task": task,
                    "variant": variant,
                    "seeds": len(per_seed),
                    "start_accuracy": float(first["generator_accuracy"]),
                    "final_accuracy_mean": float(pd.Series(per_seed).mean()),
                    "final_accuracy_std": float(pd.Series(per_seed).std(ddof=1)) if len(per_seed) > 1 else math.nan,
                    "best_accuracy": float(m["generator_accuracy"].max()),
                    "rounds_to_baseline_final": reach if reach is not None else math.nan,
                    "generator_updates_to_baseline_final": (
                        float(m.loc[reach, "generator_updates"]) if reach is not None else math.nan
                    ),
                    "verifier_f1_start": float(first["verifier_f1"]),
                    "verifier_f1_end": float(last["verifier_f1"].mean()),
                    "process_f1_start": float(first["verifier_process_f1"]),
                    "process_f1_end": float(last["verifier_process_f1"].mean()),
                }
            )
    return pd.DataFrame(rows)


def paired_bootstrap(
    a: Any, b: Any = None, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``a - b`` with a paired per-problem bootstrap interval pooled over seeds (docs/method.md §8 comparisons).

    Args:
        a, b: (seeds, problems) scores of two arms on the SAME held-out problems (every seed and arm
            shares one held-out set), e.g. each problem's correctness averaged over an arm's final
            checkpoints. Column j is the same problem in every row. Without ``b``: ``a``'s own mean
            and interval.
        resamples: bootstrap resamples; problems are drawn with replacement and the same draw is used
            for every seed (problems are the unit that varies; seeds are kept, pooled).
        level: interval coverage.

    Returns:
        ``(mean difference, low, high)``.
    """
    import numpy as np

    a = np.asarray(a, dtype=float)
    b = np.zeros_like(a) if b is None else np.asarray(b, dtype=float)
    if a.ndim == 1:
        a, b = a[None, :], b[None, :]
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired scores need the same non-empty (seeds, problems) shape, got {a.shape} and {b.shape}")
    diff = a - b
    per_problem = diff.mean(axis=0)  # pooled over seeds: the same problem in every seed
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_problem.size, size=(resamples, per_problem.size))
    means = per_problem[idx].mean(axis=1)
    tail = (1 - level) / 2
    return float(per_problem.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))

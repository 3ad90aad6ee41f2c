"""Metrics of the verifier and the generator on a round's tables (docs/method.md §8-§9), pure functions.

- :func:`binary_metrics`: outcome-level accuracy, balanced accuracy, precision, recall, F1;
- :func:`process_f1`, :func:`predicted_first_error`, :func:`process_metrics`: the ProcessBench
  protocol's process-level F1;
- :func:`verifier_metrics`: all of the verifier's held-out figures from an evaluation table;
- :func:`verifier_alarm`: a collapsed verifier, in words; :func:`hacking_diagnostics`: is it right
  for the right reasons; :func:`step_verdict_histogram`: where it puts the first INCORRECT step.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def step_verdict_histogram(step_verdicts: list[list[bool] | None]) -> dict[str, float]:
    """Where the verifier puts the first INCORRECT step, as fractions of verifications (docs/method.md §4 step rewards).

    Keys ``judge/first_incorrect_none`` (every step CORRECT), ``judge/first_incorrect_0`` ..
    ``_3``, ``judge/first_incorrect_4plus`` and ``judge/step_verdicts_unusable`` (count != K:
    no step reward). A verifier that only ever flags the last step, or never any, shows here.
    """
    keys = ["none", "0", "1", "2", "3", "4plus", "unusable"]
    counts = dict.fromkeys(keys, 0)
    for v in step_verdicts:
        if v is None:
            counts["unusable"] += 1
            continue
        first = next((k for k, ok in enumerate(v) if not ok), None)
        counts["none" if first is None else str(first) if first < 4 else "4plus"] += 1
    n = max(len(step_verdicts), 1)
    return {
        f"judge/{'step_verdicts_unusable' if k == 'unusable' else 'first_incorrect_' + k}": c / n
        for k, c in counts.items()
    }


def binary_metrics(pred: list[bool | None], truth: list[bool], prefix: str) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision, recall, F1 with positive = solution correct (docs/method.md §8).

    A missing prediction (None, unparseable verdict) counts as INCORRECT (docs/method.md §2).
    """
    p = [bool(x) if x is not None else False for x in pred]
    tp = sum(a and b for a, b in zip(p, truth, strict=True))
    fp = sum(a and not b for a, b in zip(p, truth, strict=True))
    fn = sum((not a) and b for a, b in zip(p, truth, strict=True))
    tn = sum((not a) and (not b) for a, b in zip(p, truth, strict=True))
    n = max(len(p), 1)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {
        f"{prefix}accuracy": (tp + tn) / n,
        f"{prefix}balanced_accuracy": (rec + tnr) / 2,
        f"{prefix}precision": prec,
        f"{prefix}recall": rec,
        f"{prefix}f1": f1,
    }


def process_f1(predicted_first_error: list[int], true_first_error: list[int]) -> dict[str, float]:
    """ProcessBench protocol (docs/method.md §8): F1 of the accuracies on erroneous and on correct samples.

    A sample is erroneous when its true first error is >= 0; its prediction is right when it names
    the same step. A correct sample (-1) is right when the prediction is -1. The harmonic mean of the
    two accuracies is the process-level F1 (0 when either class is empty or either accuracy is 0).
    """
    err = [(p, t) for p, t in zip(predicted_first_error, true_first_error, strict=True) if t >= 0]
    cor = [(p, t) for p, t in zip(predicted_first_error, true_first_error, strict=True) if t < 0]
    acc_err = sum(p == t for p, t in err) / len(err) if err else float("nan")
    acc_cor = sum(p == -1 for p, _ in cor) / len(cor) if cor else float("nan")
    f1 = 2 * acc_err * acc_cor / (acc_err + acc_cor) if err and cor and acc_err + acc_cor > 0 else 0.0
    return {"process_acc_erroneous": acc_err, "process_acc_correct": acc_cor, "process_f1": f1}


def chance_process_f1(true_first_error: list[int]) -> dict[str, float]:
    """The content-blind chance line of :func:`process_f1` (docs/method.md §8): the best expected process F1 of a rule
    that reads nothing, flags step ``k`` on a fraction ``q`` of the solutions at random and says "no error" on the
    rest.

    Its accuracy on erroneous solutions is ``q * a`` (``a``: the share of erroneous solutions whose first error is
    step ``k``), on correct ones ``1 - q``; the harmonic mean is largest at the most common first-error step and
    ``q = 1 / (1 + sqrt(a))``, where it is ``2a / (1 + sqrt(a))^2`` (0.5 when every error is at one step). A
    verifier's process F1 means something only above this line. 0 when either class is empty, as process F1 is.
    """
    err = [t for t in true_first_error if t >= 0]
    if not err or len(err) == len(true_first_error):
        return {"process_f1_chance": 0.0, "chance_step": -1.0, "chance_flag_frac": 0.0}
    step = max(sorted(set(err)), key=err.count)
    a = err.count(step) / len(err)
    return {
        "process_f1_chance": 2 * a / (1 + math.sqrt(a)) ** 2,
        "chance_step": float(step),
        "chance_flag_frac": 1 / (1 + math.sqrt(a)),
    }


NO_PREDICTION = -2  # unusable step verdicts (count != K): matches neither a step index nor "none" (-1)


def predicted_first_error(step_verdicts: list[bool] | None) -> int:
    """The verifier's predicted first wrong step (ProcessBench protocol, docs/method.md §8).

    The index of its first INCORRECT step verdict, -1 when every step is CORRECT, and
    :data:`NO_PREDICTION` when the verdicts are unusable (missing, or their count differs from K):
    an unusable verification predicts nothing, so it is wrong on every solution, correct ones included.
    """
    if step_verdicts is None:
        return NO_PREDICTION
    return next((k for k, ok in enumerate(step_verdicts) if not ok), -1)


def process_metrics(eval_table: pd.DataFrame) -> dict[str, Any]:
    """Process-level F1 of one evaluation table (docs/method.md §8, ProcessBench protocol), prefixed ``eval/verifier_``.

    Scored on the solutions with exact step labels whose error is a step (correct ones, and wrong
    ones with a first wrong step); a wrong solution whose steps are all right (it stopped early) and
    a task without step labels are left out, counted in ``eval/verifier_process_excluded``.
    """
    usable = [
        (pf, fe)
        for pf, fe, c, lab in zip(
            eval_table["predicted_first_error"], eval_table["first_error"], eval_table["correct"],
            eval_table["step_labels"], strict=True,
        )
        if lab is not None and (c or fe >= 0)
    ]  # fmt: skip
    pm = process_f1([u[0] for u in usable], [u[1] for u in usable])
    chance = chance_process_f1([u[1] for u in usable])["process_f1_chance"]
    return {
        **{f"eval/verifier_{k}": v for k, v in pm.items()},
        "eval/verifier_process_f1_chance": chance,  # what a rule reading nothing reaches on these solutions
        "eval/verifier_process_excluded": len(eval_table) - len(usable),
    }


def verifier_alarm(
    metrics: dict[str, Any],
    *,
    majority: float,
    min_format: float,
) -> str | None:
    """A degenerate verifier, in words, or None (docs/method.md §5: without reweighting it collapses to INCORRECT).

    Raised when ``majority`` or more of its held-out final verdicts are one class (an unparseable
    verdict counts as INCORRECT, docs/method.md §2) or its held-out format rate falls below ``min_format``.
    """
    problems = []
    says_correct = metrics.get("eval/verifier_says_correct_frac")
    if says_correct is not None and max(says_correct, 1 - says_correct) >= majority:
        cls = "CORRECT" if says_correct >= 0.5 else "INCORRECT (or unparseable)"
        problems.append(f"{max(says_correct, 1 - says_correct):.0%} of held-out verdicts are {cls}")
    fmt = metrics.get("eval/verifier_format_ok_frac")
    if fmt is not None and fmt < min_format:
        problems.append(f"only {fmt:.0%} of its held-out verifications are well-formed")
    return "verifier collapse: " + "; ".join(problems) if problems else None


def hacking_diagnostics(eval_table: pd.DataFrame) -> dict[str, float]:
    """Reward-hacking diagnostics of one evaluation (docs/method.md §9): is the verifier right for the right reasons?

    - verifier accuracy per class: on the correct solutions (``verifier_acc_on_correct``) and on
      the wrong ones (``verifier_acc_on_wrong``): a verifier that says CORRECT to everything scores
      1 and 0;
    - ``verifier_right_verdict_wrong_steps``: among solutions whose final verdict is right and whose
      step verdicts are usable, the fraction whose step verdicts differ from the exact step labels;
    - ``verifier_step_mismatch_frac``: verifications whose number of judged steps differs from K.
    Response-length drift and solutions without steps are in the generator's metrics.
    """
    truth = eval_table["correct"].astype(bool)
    verdict = eval_table["final_verdict"].map(lambda v: bool(v) if v is not None else False)
    right = verdict == truth
    usable = eval_table["step_verdicts"].map(lambda v: v is not None)
    steps_wrong = [
        sv is not None and lab is not None and list(sv) != list(lab)
        for sv, lab in zip(eval_table["step_verdicts"], eval_table["step_labels"], strict=True)
    ]
    labelled = eval_table["step_labels"].map(lambda v: v is not None)
    base = right & usable & labelled
    nan = float("nan")
    return {
        "eval/verifier_acc_on_correct": float(right[truth].mean()) if truth.any() else nan,
        "eval/verifier_acc_on_wrong": float(right[~truth].mean()) if (~truth).any() else nan,
        "eval/verifier_right_verdict_wrong_steps": (
            float(pd.Series(steps_wrong)[base.to_numpy()].mean()) if base.any() else nan
        ),
        "eval/verifier_step_mismatch_frac": float((~usable).mean()) if len(usable) else nan,
    }


def verifier_metrics(df: pd.DataFrame) -> dict[str, Any]:
    """The verifier's held-out outcome, format and process metrics from an evaluation table (docs/method.md §5, §8)."""
    metrics: dict[str, Any] = binary_metrics(list(df["final_verdict"]), list(df["correct"]), "eval/verifier_")
    metrics["eval/verifier_format_ok_frac"] = float((df["verifier_format_score"] == 1.0).mean())
    says_correct = float(df["final_verdict"].map(lambda v: v is True).mean())
    metrics["eval/verifier_says_correct_frac"] = says_correct
    metrics["eval/verifier_majority_frac"] = max(says_correct, 1.0 - says_correct)
    metrics.update(process_metrics(df))
    return metrics

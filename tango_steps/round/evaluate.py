"""The evaluate stage (docs/method.md §7-§8): held-out greedy accuracy of the generator and the verifier's
outcome and process metrics on those solutions; another verifier on the same solutions."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tango_steps.config import TangoConfig
from tango_steps.method.metrics import (
    hacking_diagnostics,
    verifier_alarm,
    verifier_metrics,
)
from tango_steps.round.judge import judge_texts, with_verdicts
from tango_steps.round.plan import Log, StageResult, heldout_problems
from tango_steps.round.sampling import engine_for, generate, servable
from tango_steps.round.tables import EvalRow, table


def evaluate(
    cfg: TangoConfig, generator_ckpt: Path, verifier_ckpt: Path, log: Log = print
) -> tuple[pd.DataFrame, StageResult]:
    """Held-out evaluation (docs/method.md §7-§8): generator greedy pass@1; verifier outcome and process metrics.

    The verifier judges (greedily) the generator's greedy held-out solutions; truth comes from the
    embedded task's exact labels. For the process metric, a solution whose outcome is wrong while
    every step is right (it stopped early) has no first wrong step: it is left out and counted, as
    is every solution of a task without step labels (``dataset``).
    """
    from tango_steps.method.formats import parse_solution

    t0 = time.perf_counter()
    solutions = heldout_solutions(cfg, generator_ckpt, log)
    texts = list(solutions["text"])
    parsed = [parse_solution(t) for t in texts]
    verdicts, vcut = judge_texts(cfg, verifier_ckpt, list(solutions["question"]), texts, parsed, log)
    compute = time.perf_counter() - t0
    df = with_verdicts(solutions, verdicts)
    metrics: dict[str, Any] = {
        "eval/generator_accuracy": float(df["correct"].mean()),
        "eval/generator_truncated_frac": float(df["truncated"].mean()),
        "eval/generator_mean_length": float(df["length"].mean()),
        "eval/generator_no_steps_frac": float((df["num_steps"] == 0).mean()),
    }
    metrics.update(verifier_metrics(df))
    metrics["eval/verifier_prompt_cut"] = int(sum(vcut))
    metrics.update(hacking_diagnostics(df))
    for k, v in list(metrics.items()):
        if isinstance(v, float) and math.isnan(v):
            metrics[k] = None
    metrics["eval/verifier_alarm"] = verifier_alarm(
        metrics, majority=cfg.evaluation.collapse_majority, min_format=cfg.evaluation.collapse_min_format
    )
    if metrics["eval/verifier_alarm"]:
        log(f"evaluate: !!! VERIFIER ALARM: {metrics['eval/verifier_alarm']}")
    log(
        f"evaluate: generator accuracy {metrics['eval/generator_accuracy']:.3f}, verifier F1 "
        f"{metrics['eval/verifier_f1']:.3f}, process F1 {metrics['eval/verifier_process_f1']:.3f} ({compute:.1f} s)"
    )
    return df, StageResult(metrics, compute)


def heldout_solutions(
    cfg: TangoConfig, generator_ckpt: Path, log: Log = print, temperature: float = 0.0, seed: int | None = None
) -> pd.DataFrame:
    """The generator's solutions of the held-out problems, checked, as an evaluation table without verdicts
    (docs/method.md §7-§8): greedy (``temperature`` 0: the evaluation's), or one sampled solution per problem at
    ``temperature`` under ``seed`` (default ``cfg.seed``): e.g. a fixed set of solutions for verifiers to judge."""
    from tango_steps.method.formats import parse_solution
    from tango_steps.rollout import SamplingSettings
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template

    task = get_task(cfg.task.name, **cfg.task.params)
    template = get_template(cfg.template)
    problems = heldout_problems(cfg)
    settings = SamplingSettings(n=1, temperature=temperature, max_tokens=cfg.evaluation.max_tokens)
    with engine_for(cfg, "generator", servable(generator_ckpt), cfg.seed if seed is None else seed) as engine:
        comps = generate(engine, [template.generator_prompt(p.question) for p in problems], settings,
                         "evaluate generator", log)  # fmt: skip
    del engine  # closed, and dropped before a verifier's engine starts (the HF engine's model lives with it)
    rows = []
    for p, c in zip(problems, comps, strict=True):
        text = c[0].text
        s, ch = parse_solution(text), task.check(p, text)
        rows.append(
            EvalRow(
                prompt_id=p.id, question=p.question, gold=p.answer, text=text,
                truncated=c[0].truncated, length=len(c[0].token_ids), num_steps=s.num_steps,
                correct=ch.correct, first_error=ch.first_error,
                step_labels=None if ch.step_labels is None else list(ch.step_labels),
            )
        )  # fmt: skip
    return table(rows, EvalRow)


def rejudge(cfg: TangoConfig, verifier_ckpt: Path, eval_table: pd.DataFrame, log: Log = print) -> dict[str, Any]:
    """Another verifier's held-out metrics on the SAME solutions as ``eval_table`` (docs/method.md §5, §8).

    Separates a verifier's own change from the generator's drift: e.g. the last round's verifier on
    round 0's solutions (did the verifier get worse?) and round 0's verifier on the last round's
    solutions (did the solutions get harder to judge?). Returns the :func:`verifier_metrics` that
    :func:`evaluate` would report for that pairing.
    """
    return verifier_metrics(judged(cfg, verifier_ckpt, eval_table, log))


def judged(cfg: TangoConfig, verifier_ckpt: Path, eval_table: pd.DataFrame, log: Log = print) -> pd.DataFrame:
    """``eval_table`` (solutions, as :func:`heldout_solutions` makes them) with the greedy verdicts of the verifier
    ``verifier_ckpt`` (docs/method.md §2, §8): the table :func:`rejudge` scores, one row per solution."""
    from tango_steps.method.formats import parse_solution

    texts = list(eval_table["text"])
    parsed = [parse_solution(t) for t in texts]
    verdicts, _ = judge_texts(cfg, verifier_ckpt, list(eval_table["question"]), texts, parsed, log)
    return with_verdicts(eval_table, verdicts)

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
    from tango_steps.rollout import SamplingSettings
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template

    task = get_task(cfg.task.name, **cfg.task.params)
    template = get_template(cfg.template)
    problems = heldout_problems(cfg)
    t0 = time.perf_counter()
    greedy = SamplingSettings(n=1, temperature=0.0, max_tokens=cfg.evaluation.max_tokens)
    with engine_for(cfg, "generator", servable(generator_ckpt), cfg.seed) as engine:
        comps = generate(
            engine, [template.generator_prompt(p.question) for p in problems], greedy, "evaluate generator", log
        )
    del engine  # closed, and dropped before the verifier's engine starts (the HF engine's model lives with it)
    texts = [c[0].text for c in comps]
    parsed = [parse_solution(t) for t in texts]
    checks = [task.check(p, t) for p, t in zip(problems, texts, strict=True)]
    verdicts, vcut = judge_texts(cfg, verifier_ckpt, [p.question for p in problems], texts, parsed, log)
    compute = time.perf_counter() - t0
    rows = []
    for p, t, s, ch, c in zip(problems, texts, parsed, checks, comps, strict=True):
        rows.append(
            EvalRow(
                prompt_id=p.id, question=p.question, gold=p.answer, text=t,
                truncated=c[0].truncated, length=len(c[0].token_ids), num_steps=s.num_steps,
                correct=ch.correct, first_error=ch.first_error,
                step_labels=None if ch.step_labels is None else list(ch.step_labels),
            )
        )  # fmt: skip
    df = with_verdicts(table(rows, EvalRow), verdicts)
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


def rejudge(cfg: TangoConfig, verifier_ckpt: Path, eval_table: pd.DataFrame, log: Log = print) -> dict[str, Any]:
    """Another verifier's held-out metrics on the SAME solutions as ``eval_table`` (docs/method.md §5, §8).

    Separates a verifier's own change from the generator's drift: e.g. the last round's verifier on
    round 0's solutions (did the verifier get worse?) and round 0's verifier on the last round's
    solutions (did the solutions get harder to judge?). Returns the :func:`verifier_metrics` that
    :func:`evaluate` would report for that pairing.
    """
    from tango_steps.method.formats import parse_solution

    texts = list(eval_table["text"])
    parsed = [parse_solution(t) for t in texts]
    verdicts, _ = judge_texts(cfg, verifier_ckpt, list(eval_table["question"]), texts, parsed, log)
    return verifier_metrics(with_verdicts(eval_table, verdicts))

"""The rollout stage (docs/method.md §3): the generator's solutions for the round, one row per solution."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from tango_steps.config import TangoConfig
from tango_steps.method.schedule import RoundPlan
from tango_steps.round.plan import Log, StageResult, is_generator_slot, rollout_size, round_problems
from tango_steps.round.sampling import sample_role, shard_range
from tango_steps.round.tables import Rollout, table


def rollout(
    cfg: TangoConfig, plan: RoundPlan, generator_ckpt: Path, log: Log = print, shard: tuple[int, int] = (0, 1)
) -> tuple[pd.DataFrame, StageResult]:
    """The generator's samples for this round (docs/method.md §3), one row per solution.

    Generator rounds: ``batch.generator_prompts`` prompts x M = ``generator_sampling.n``; verifier
    rounds: ``batch.verifier_prompts`` prompts x 1 solution. Columns: ``prompt_id``, ``prompt_index``,
    ``sample``, ``question``, ``gold``, ``prompt``, ``text``, ``prompt_ids``, ``response_ids``,
    ``finish_reason``, ``truncated``, the parse (``steps``, ``step_spans``, ``answer``,
    ``format_score``, ``well_formed``), ``step_end_tokens`` (the sampled token holding each step's
    last character, where its step reward goes: docs/method.md §4; empty in rounds without step rewards)
    and the task's verdict (``label_correct``,
    with its exact ``step_labels`` and ``first_error`` where the task has them). Each completion is
    parsed and checked here, once; later stages read these columns.

    ``shard=(k, S)``: only shard k's prompts (whole engine calls, :func:`shard_range`), with the
    rows, seeds and ``prompt_index`` they have in the unsharded stage; :func:`join_rollouts` puts the
    shards back together into exactly the unsharded table.
    """
    from tango_steps.method.formats import parse_solution
    from tango_steps.method.rewards import sampled_step_end_tokens
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template

    # only a round that turns step verdicts into step rewards needs their token positions
    aligned = is_generator_slot(plan) and cfg.algorithm.step_rewards
    n_prompts, n = rollout_size(cfg, plan)
    task = get_task(cfg.task.name, **cfg.task.params)
    template = get_template(cfg.template)
    mine = shard_range(n_prompts, n, cfg.rollout.chunk_samples, *shard)
    problems = round_problems(cfg, plan.round_idx, n_prompts)[mine.start : mine.stop]
    prompts = [template.generator_prompt(p.question) for p in problems]
    t0 = time.perf_counter()
    comps, prompt_ids, tok = [], [], None
    if problems:
        comps, prompt_ids, tok = sample_role(
            cfg, "generator", generator_ckpt, prompts, cfg.generator_sampling, n, plan.round_idx, "rollout", log,
            first=mine.start,
        )  # fmt: skip
    compute = time.perf_counter() - t0  # sampling only: tokens_per_s stays the engine's throughput
    rows = []
    for k, (p, prompt, cs) in enumerate(zip(problems, prompts, comps, strict=True)):
        i = mine.start + k
        for j, c in enumerate(cs):
            parsed = parse_solution(c.text)
            check = task.check(p, c.text, parsed)
            ends = (
                sampled_step_end_tokens(tok, list(c.token_ids), parsed.step_spans) if aligned and parsed.steps else []
            )
            rows.append(
                Rollout(
                    prompt_id=p.id,
                    prompt_index=i,
                    sample=j,
                    question=p.question,
                    gold=p.answer,
                    prompt=prompt,
                    text=c.text,
                    prompt_ids=list(prompt_ids[k]),
                    response_ids=list(c.token_ids),
                    finish_reason=c.finish_reason,
                    truncated=c.truncated,
                    steps=list(parsed.steps),
                    step_spans=[list(span) for span in parsed.step_spans],
                    step_end_tokens=ends,
                    answer=parsed.answer,
                    format_score=parsed.format_score,
                    well_formed=parsed.well_formed,
                    label_correct=check.correct,
                    step_labels=None if check.step_labels is None else list(check.step_labels),
                    first_error=check.first_error,
                )
            )
    df = table(rows, Rollout)
    metrics = rollout_metrics(df, compute)
    log(
        f"rollout: {len(df)} samples, {metrics['rollout/tokens']} tokens in {compute:.1f} s; "
        f"exact accuracy {metrics['rollout/label_accuracy']:.3f}"
    )
    return df, StageResult(metrics, compute)


def rollout_metrics(df: pd.DataFrame, compute: float) -> dict[str, Any]:
    """The rollout stage's metrics of its table (the whole round's, or one shard's)."""
    tokens = int(sum(len(r) for r in df["response_ids"]))
    return {
        "rollout/samples": len(df),
        "rollout/prompts": int(df["prompt_index"].nunique()),
        "rollout/tokens": tokens,
        "rollout/tokens_per_s": tokens / max(compute, 1e-9),
        "rollout/mean_length": tokens / max(len(df), 1),
        "rollout/truncated_frac": float(df["truncated"].mean()) if len(df) else 0.0,
        "rollout/format_ok_frac": float(df["well_formed"].mean()) if len(df) else 0.0,
        "rollout/no_steps_frac": float((df["steps"].map(len) == 0).mean()) if len(df) else 0.0,
        "rollout/label_accuracy": float(df["label_correct"].mean()) if len(df) else 0.0,
    }


def join_rollouts(parts: list[tuple[pd.DataFrame, StageResult]]) -> tuple[pd.DataFrame, StageResult]:
    """The shards of :func:`rollout` as the one table the unsharded stage makes (prompt order);
    compute is the shards' summed engine seconds, so tokens_per_s stays a per-engine rate."""
    df = pd.concat([d for d, _ in parts if len(d)], ignore_index=True).sort_values(["prompt_index", "sample"])
    compute = sum(r.compute_seconds for _, r in parts)
    return df.reset_index(drop=True), StageResult(rollout_metrics(df, compute), compute)

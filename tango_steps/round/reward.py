"""The reward stage (docs/method.md §4-§5): outcome and step rewards, both models' advantages and the round's
RL batch. Nothing is parsed or tokenised here and no model library is loaded."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tango_steps.config import TangoConfig
from tango_steps.method.schedule import RoundPlan
from tango_steps.round.arms import GENERATOR_OBJECTIVES
from tango_steps.round.plan import Log, is_generator_slot


@dataclass
class GeneratorRewards:
    """The generator's side of a round's rewards (docs/method.md §4).

    ``rollouts`` gains ``step_rewards``, ``advantage_first_token`` and ``advantage_mean``; ``batch``
    is the RL batch (:class:`~tango_steps.training.update.RLBatch` as a dict), or None for the ``sft``
    objective, whose batch of gold solutions :func:`update` builds where the tokenizer is loaded.
    """

    rollouts: pd.DataFrame
    batch: dict[str, Any] | None
    alpha: float
    metrics: dict[str, Any]


@dataclass
class VerifierRewards:
    """The verifier's side of a round's rewards (docs/method.md §5).

    ``judgments`` gains ``verifier_reward``, ``advantage`` and ``sample_weight``; ``reweighter`` is
    the class-count state after this round (the run's only copy of it).
    """

    judgments: pd.DataFrame
    batch: dict[str, Any]
    reweighter: dict[str, Any]
    metrics: dict[str, Any]


@dataclass
class RoundRewards:
    """What :func:`reward` returns: the tables with their reward columns and the round's one RL batch."""

    rollouts: pd.DataFrame
    judgments: pd.DataFrame
    generator_batch: dict[str, Any] | None
    verifier_batch: dict[str, Any] | None
    reweighter: dict[str, Any] | None
    alpha: float | None
    metrics: dict[str, Any]
    compute_seconds: float


def reward(
    cfg: TangoConfig,
    plan: RoundPlan,
    rollouts: pd.DataFrame,
    judgments: pd.DataFrame,
    reweighter_state: dict | None,
    log: Log = print,
) -> RoundRewards:
    """Rewards, advantages and the RL batch of the round's slot (docs/method.md §4-§5).

    Outcome rewards come from the task's verdict in the rollout (one correctness oracle per task),
    step-reward positions from the rollout's ``step_end_tokens``: nothing is parsed or tokenised
    here, and no model library is imported beyond torch for the estimators.
    """
    t0 = time.perf_counter()
    rollouts, judgments, metrics = graded(rollouts, judgments)
    gen: GeneratorRewards | None = None
    ver: VerifierRewards | None = None
    if is_generator_slot(plan):
        gen = generator_rewards(cfg, plan, rollouts, judgments)
        rollouts, alpha, batch = gen.rollouts, gen.alpha, gen.batch
        metrics.update(gen.metrics)
    else:
        ver = verifier_rewards(cfg, rollouts, judgments, reweighter_state)
        judgments, alpha, batch = ver.judgments, None, ver.batch
        metrics.update(ver.metrics)
    compute = time.perf_counter() - t0
    log(f"reward: outcome mean {metrics['reward/outcome_mean']:.3f}, alpha {alpha}, {compute:.1f} s")
    return RoundRewards(
        rollouts=rollouts,
        judgments=judgments,
        generator_batch=batch if gen else None,
        verifier_batch=batch if ver else None,
        reweighter=ver.reweighter if ver else reweighter_state,
        alpha=alpha,
        metrics=metrics,
        compute_seconds=compute,
    )


def graded(rollouts: pd.DataFrame, judgments: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Both tables with the truth columns every reward needs (docs/method.md §4-§5), as copies.

    ``rollouts`` gains ``outcome_reward`` r_out (0 for a truncated completion) and ``correct``;
    ``judgments`` (when anything was judged) ``solution_correct`` and ``verdict_right``.
    """
    from tango_steps.method.rewards import outcome_rewards

    rollouts, judgments = rollouts.copy(), judgments.copy()
    r_out, counts = outcome_rewards(
        list(rollouts["label_correct"]), list(rollouts["truncated"]), list(rollouts["answer"].notna())
    )
    rollouts["outcome_reward"] = r_out
    rollouts["correct"] = [r > 0 for r in r_out]
    metrics: dict[str, Any] = {f"reward/{k}": v for k, v in counts.items()}
    metrics["reward/outcome_mean"] = float(sum(r_out) / max(len(r_out), 1))
    if len(judgments):
        truth = rollouts["correct"].to_numpy()[judgments["solution"].to_numpy()]
        verdict = judgments["final_verdict"]
        judgments["solution_correct"] = truth
        judgments["verdict_right"] = [v is not None and bool(v) == bool(t) for v, t in zip(verdict, truth, strict=True)]
        metrics["judge/verdict_accuracy"] = float(judgments["verdict_right"].mean())
    return rollouts, judgments, metrics


def generator_rewards(
    cfg: TangoConfig, plan: RoundPlan, rollouts: pd.DataFrame, judgments: pd.DataFrame
) -> GeneratorRewards:
    """Step rewards and the generator's per-token advantages with the plan's alpha (docs/method.md §4).

    ``rollouts`` and ``judgments`` as returned by :func:`graded`.
    """
    import torch

    from tango_steps.method.advantages import collate_steps, compute_generator_advantages
    from tango_steps.method.rewards import step_rewards

    rollouts = rollouts.copy()
    use_steps = cfg.algorithm.step_rewards
    alpha = float(plan.alpha or 0.0)
    verdicts = {}
    if use_steps and len(judgments):
        verdicts = dict(zip(judgments["solution"], judgments["step_verdicts"], strict=True))
    srewards: list[list[float] | None] = []
    sindex: list[list[int] | None] = []
    for i, ends in enumerate(rollouts["step_end_tokens"]):
        sr = step_rewards(verdicts.get(i)) if use_steps else None
        srewards.append(sr if sr else None)
        sindex.append(list(ends) if sr else None)
    lengths = [len(r) for r in rollouts["response_ids"]]
    resp_mask = torch.zeros(len(lengths), max([*lengths, 1]))
    for i, n in enumerate(lengths):
        resp_mask[i, :n] = 1
    rw, smask, sidx = collate_steps(srewards, sindex)
    r_out = torch.tensor(list(rollouts["outcome_reward"]), dtype=torch.float32)
    group = torch.tensor(list(rollouts["prompt_index"]), dtype=torch.long)
    a = cfg.algorithm
    adv, metrics = compute_generator_advantages(
        r_out, rw, smask, sidx, resp_mask, group, alpha, a.estimator, a.rloo_step_scale
    )
    rollouts["step_rewards"] = srewards
    rollouts["advantage_first_token"] = [float(adv[i, 0]) if n else 0.0 for i, n in enumerate(lengths)]
    rollouts["advantage_mean"] = [float(adv[i, :n].mean()) if n else 0.0 for i, n in enumerate(lengths)]
    groups = rollouts.groupby("prompt_index")["outcome_reward"].agg(lambda s: s.nunique() > 1)
    metrics["reward/groups_with_signal_frac"] = float(groups.mean())
    batch: dict[str, Any] | None = {
        "prompt_ids": [list(x) for x in rollouts["prompt_ids"]],
        "response_ids": [list(x) for x in rollouts["response_ids"]],
        "advantages": [adv[i, :n].tolist() for i, n in enumerate(lengths)],
        "sample_weights": None,
    }
    if GENERATOR_OBJECTIVES[a.generator_objective].gold_solutions:
        batch = None  # gold solutions instead, tokenised by update() (sft_batch)
        metrics["reward/sft_sequences"] = a.sft_sequences
    return GeneratorRewards(rollouts, batch, alpha, metrics)


def verifier_rewards(
    cfg: TangoConfig, rollouts: pd.DataFrame, judgments: pd.DataFrame, reweighter_state: dict | None
) -> VerifierRewards:
    """r_v, the verifier's GRPO advantages within each solution's N verifications and the class weights
    (docs/method.md §5).

    ``rollouts`` and ``judgments`` as returned by :func:`graded`; ``reweighter_state``: the EMAs
    after the previous verifier round (None before the first).
    """
    import torch

    from tango_steps.method.advantages import VerifierReweighter, compute_verifier_advantages
    from tango_steps.method.rewards import verifier_reward

    judgments = judgments.copy()
    a = cfg.algorithm
    truth = torch.tensor(list(judgments["solution_correct"]), dtype=torch.bool)
    group = torch.tensor(list(judgments["solution"]), dtype=torch.long)
    r_v = [
        verifier_reward(v, t, f, a.gamma) if not tr else 0.0
        for v, t, f, tr in zip(
            judgments["final_verdict"], judgments["solution_correct"], judgments["format_score"],
            judgments["truncated"], strict=True,
        )
    ]  # fmt: skip
    adv = compute_verifier_advantages(torch.tensor(r_v, dtype=torch.float32), group)
    rw = (
        VerifierReweighter.from_dict({**reweighter_state, "power": a.reweight_power})
        if reweighter_state
        else VerifierReweighter(decay=a.reweight_decay, power=a.reweight_power)
    )
    weights = rw(truth, group)
    judgments["verifier_reward"] = r_v
    judgments["advantage"] = adv.tolist()
    judgments["sample_weight"] = weights.tolist()
    metrics = {
        "reward/verifier_reward_mean": float(sum(r_v) / max(len(r_v), 1)),
        "reward/verifier_adv_abs_mean": float(adv.abs().mean()),
        "reward/solutions_correct_frac": float(rollouts["correct"].mean()),
        # groups whose N rewards are all equal carry no GRPO signal (docs/method.md §5)
        "reward/verifier_flat_groups_frac": float(
            judgments.groupby("solution")["verifier_reward"].agg(lambda r: r.nunique() == 1).mean()
        ),
        "reward/verifier_weight_correct": float(weights[truth].mean()) if truth.any() else math.nan,
        "reward/verifier_weight_incorrect": float(weights[~truth].mean()) if (~truth).any() else math.nan,
    }
    batch = {
        "prompt_ids": [list(x) for x in judgments["prompt_ids"]],
        "response_ids": [list(x) for x in judgments["response_ids"]],
        "advantages": [[float(x)] * len(r) for x, r in zip(adv.tolist(), judgments["response_ids"], strict=True)],
        "sample_weights": weights.tolist(),
    }
    return VerifierRewards(judgments, batch, rw.to_dict(), metrics)

"""The plan of one round (docs/method.md §3-§4): its slot, alpha, what it samples and which steps it takes.

Also what every stage shares: the log callable, :class:`StageResult` and the seeds of a round's stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from tango_steps.config import TangoConfig
from tango_steps.method.schedule import RoundPlan, alpha_schedule, evaluates, plan_round, total_generator_updates

Log = Callable[[str], None]


def alpha_horizon(cfg: TangoConfig) -> int:
    """T_g of a run started with ``cfg`` (docs/method.md §4): ``algorithm.alpha_horizon``, else its generator slots.

    Fixed once, at the run's start, and carried in the round state: a fork keeps its source's.
    """
    s = cfg.schedule
    explicit = cfg.algorithm.alpha_horizon
    return (
        explicit
        if explicit is not None
        else total_generator_updates(cfg.rounds, s.verifier_warmup_rounds, s.generator_per_verifier)
    )


def round_plan(cfg: TangoConfig, round_idx: int, horizon: int | None = None) -> RoundPlan:
    """The docs/method.md §3 plan of round ``round_idx`` under ``cfg.schedule``, with its alpha (docs/method.md §4).

    ``horizon``: the run's T_g (:class:`~tango_steps.round.state.RoundState` carries it); None takes
    :func:`alpha_horizon` of ``cfg``.
    """
    s, a = cfg.schedule, cfg.algorithm
    plan = plan_round(
        round_idx, s.verifier_warmup_rounds, s.generator_per_verifier, s.train_generator, s.train_verifier
    )
    alpha = None
    if plan.slot == "generator":
        t_g = horizon if horizon is not None else alpha_horizon(cfg)
        alpha = (
            alpha_schedule(plan.generator_step, max(t_g, 1), a.alpha0, a.alpha_min, a.alpha_schedule)
            if a.step_rewards
            else 0.0
        )
    evaluate = evaluates(round_idx, cfg.evaluation.every, cfg.rounds, cfg.evaluation.last)
    return replace(plan, evaluate=evaluate, alpha=alpha)


def round_problems(cfg: TangoConfig, round_idx: int, n: int):
    """The round's fresh training prompts (docs/method.md §3), a pure function of (seed, round): the data cursor."""
    from tango_steps.tasks import get_task

    task = get_task(cfg.task.name, **cfg.task.params)
    return task.problems(n, "train", seed=cfg.seed * 1_000_003 + round_idx)


def heldout_problems(cfg: TangoConfig):
    """The held-out evaluation problems (docs/method.md §7): the same in every round, seed and variant of a task.

    They depend on the task and ``evaluation.heldout_problems`` only, never on ``seed``, so runs with
    different seeds (and every arm of a study) are scored on the same problems, paired per problem;
    the embedded tasks' lists are shipped in ``data/heldout/`` (:mod:`tango_steps.tasks.heldout`).
    """
    from tango_steps.tasks.heldout import heldout_set

    return heldout_set(cfg.task.name, cfg.evaluation.heldout_problems, cfg.task.params)


def stage_seed(cfg: TangoConfig, round_idx: int, stage: str) -> int:
    """The seed of one stage of one round: a function of (run seed, round, stage name) only, so a resumed or
    sharded stage draws exactly what the uninterrupted one does (docs/method.md §9 reproducibility)."""
    return (cfg.seed * 1_000_003 + round_idx * 101 + sum(map(ord, stage))) % (2**31 - 1)


@dataclass
class StageResult:
    """What a stage returns: tables, metrics and the seconds spent in model compute (docs/method.md §3)."""

    metrics: dict[str, Any]
    compute_seconds: float


def is_generator_slot(plan: RoundPlan) -> bool:
    """Whether the round's slot is the generator's (docs/method.md §3)."""
    return plan.slot == "generator"


def rollout_size(cfg: TangoConfig, plan: RoundPlan) -> tuple[int, int]:
    """(prompts, samples per prompt) of the round's rollout: B_g x M in a generator round, B_v x 1 in a
    verifier round (docs/method.md §3)."""
    if is_generator_slot(plan):
        return cfg.batch.generator_prompts, cfg.generator_sampling.n
    return cfg.batch.verifier_prompts, 1


def needs_judge(cfg: TangoConfig, plan: RoundPlan) -> bool:
    """Whether the round judges its solutions: not in a generator round without step rewards (vanilla GRPO)."""
    return not (is_generator_slot(plan) and not cfg.algorithm.step_rewards)


def verifier_judges(cfg: TangoConfig, plan: RoundPlan) -> bool:
    """Whether a verifier engine judges this round's solutions: not skipped, not exact labels (docs/method.md §3,
    §8)."""
    exact_labels = is_generator_slot(plan) and cfg.algorithm.step_verdicts != "verifier"
    return needs_judge(cfg, plan) and not exact_labels


def update_step(plan: RoundPlan, cfg: TangoConfig | None = None) -> str:
    """The step a round goes to after ``reward``: the update it makes, or :func:`after_update`'s step
    when it updates nothing. With ``cfg`` given, an update on several nodes (``update.nodes`` > 1)
    goes to ``split_nodes`` (TangoRoundFlow's ``@parallel`` path).

    The schedule gives each round one slot (docs/method.md §3), so at most one model is updated.
    """
    role = plan.update
    if role is None:
        return after_update(plan)
    if cfg is not None and getattr(cfg, f"{role}_update").nodes > 1:
        return "split_nodes"
    return f"{role}_update"


def after_update(plan: RoundPlan) -> str:
    """The step after the updates: ``evaluate`` in a measured round, ``end`` in one ``evaluation.every``
    skips (its evaluation is measurement only, so skipping the step changes no model)."""
    return "evaluate" if plan.evaluate else "end"


def round_metrics(plan: RoundPlan, state: dict[str, Any], *stage_metrics: dict[str, Any]) -> dict[str, Any]:
    """One round's metrics for TangoFlow's table (docs/method.md §9): its place in the run, then each stage's."""
    out: dict[str, Any] = {
        "round": plan.round_idx,
        "slot": plan.slot,
        "generator_updates": state["generator_updates"],
        "verifier_updates": state["verifier_updates"],
    }
    for m in stage_metrics:
        out.update(m)
    return out


def plan_dict(plan: RoundPlan) -> dict[str, Any]:
    """The plan as a plain dict for artifacts, with ``update_generator`` / ``update_verifier`` spelled out for
    whoever reads it (they follow from ``update``)."""
    return {**asdict(plan), "update_generator": plan.update_generator, "update_verifier": plan.update_verifier}


def plan_from_dict(plan: dict[str, Any]) -> RoundPlan:
    """The plan back from its artifact dict (also one written before plans had ``update``: its two flags)."""
    data = dict(plan)
    generator, verifier = data.pop("update_generator", False), data.pop("update_verifier", False)
    data.setdefault("update", "generator" if generator else "verifier" if verifier else None)
    return RoundPlan(**data)

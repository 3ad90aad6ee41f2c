"""Which model is updated in which round (docs/method.md §3 schedule).

Global step = one fresh batch of prompts and ONE optimizer step on either model. The paper warms
the verifier up for 40 steps with the generator frozen, then alternates 3 generator steps : 1
verifier step, starting with the generator. In Tango's pipeline one round is one global step, so
the schedule says, for each round, whether the generator and/or the verifier is updated, and why
not when it is skipped (the reason is recorded with the round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ROLES = ("generator", "verifier")


@dataclass(frozen=True)
class RoundPlan:
    """What a round updates (docs/method.md §3): one slot, and at most that slot's model updated.

    Attributes:
        round_idx: 1-based round number.
        slot: "generator" or "verifier", the model the schedule gives this round to (a frozen
            model's slot keeps its sampling sizes; only the update is skipped).
        update: the model this round updates: its slot's, or None when that model is frozen. A plan
            that updates the other model, or both, cannot be built.
        generator_step: generator updates done BEFORE this round (s in alpha(s), docs/method.md §4).
        skip_generator / skip_verifier: why a model is not updated ("" when it is).
        evaluate: whether the round ends with the held-out evaluation (``evaluation.every`` / ``last``).
        alpha: the step-advantage weight alpha(s) of a generator slot (docs/method.md §4; 0 without step
            rewards), None in a verifier slot. Planned here, with T_g fixed at the run's start.
    """

    round_idx: int
    slot: str
    update: str | None
    generator_step: int
    skip_generator: str = ""
    skip_verifier: str = ""
    evaluate: bool = True
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.slot not in ROLES:
            raise ValueError(f"round {self.round_idx}: slot must be generator or verifier, got {self.slot!r}")
        if self.update not in (None, self.slot):
            raise ValueError(f"round {self.round_idx}: a {self.slot} round cannot update the {self.update}")

    @property
    def update_generator(self) -> bool:
        """Whether the generator gets its optimizer step this round (docs/method.md §3)."""
        return self.update == "generator"

    @property
    def update_verifier(self) -> bool:
        """Whether the verifier gets its optimizer step this round (docs/method.md §3)."""
        return self.update == "verifier"


def evaluates(round_idx: int, every: int, rounds: int, last: int = 1) -> bool:
    """Whether round ``round_idx`` of a ``rounds``-round run is evaluated: every ``every``-th and the last ``last``.

    Evaluation is measurement, not part of the method (docs/method.md §7); skipping it changes no
    model, so a run's weights are the same whatever ``every`` is. ``last`` > 1 evaluates the
    run's last rounds, so that a "final" accuracy averaged over the last few distinct generator
    checkpoints (docs/method.md §8) has every one of them measured.
    """
    if every < 1:
        raise ValueError(f"evaluation every must be >= 1, got {every}")
    if last < 1:
        raise ValueError(f"evaluation last must be >= 1, got {last}")
    return round_idx % every == 0 or round_idx > rounds - last


def plan_round(
    round_idx: int,
    verifier_warmup_rounds: int,
    generator_per_verifier: int,
    train_generator: bool = True,
    train_verifier: bool = True,
) -> RoundPlan:
    """The plan of one round under the docs/method.md §3 schedule.

    Rounds 1..W update only the verifier (generator frozen). After that, rounds cycle through
    ``generator_per_verifier`` generator rounds then one verifier round, starting with the
    generator. ``train_generator`` / ``train_verifier`` switch a model off entirely (the
    ``frozen_*`` and ``grpo`` ablations); the schedule's slots are kept, so the same round numbers
    update the same model whatever the variant.

    Args:
        round_idx: 1-based round number.
        verifier_warmup_rounds: W (paper: 40).
        generator_per_verifier: generator rounds per verifier round after warm-up (paper: 3);
            0 means generator rounds only (no verifier rounds after warm-up).
    """
    if round_idx < 1:
        raise ValueError(f"round_idx must be >= 1, got {round_idx}")
    if verifier_warmup_rounds < 0:
        raise ValueError(f"verifier_warmup_rounds must be >= 0, got {verifier_warmup_rounds}")
    if generator_per_verifier < 0:
        raise ValueError(f"generator_per_verifier must be >= 0, got {generator_per_verifier}")
    gen_step = sum(_slot(r, verifier_warmup_rounds, generator_per_verifier) == "generator" for r in range(1, round_idx))
    slot = _slot(round_idx, verifier_warmup_rounds, generator_per_verifier)
    skip_g = skip_v = ""
    if slot != "generator":
        skip_g = "verifier warm-up round" if round_idx <= verifier_warmup_rounds else "verifier round of the schedule"
    elif not train_generator:
        skip_g = "generator frozen by configuration"
    if slot != "verifier":
        skip_v = "generator round of the schedule"
    elif not train_verifier:
        skip_v = "verifier frozen by configuration"
    update = "generator" if not skip_g else "verifier" if not skip_v else None
    return RoundPlan(
        round_idx=round_idx,
        slot=slot,
        update=update,
        generator_step=gen_step,
        skip_generator=skip_g,
        skip_verifier=skip_v,
    )


def _slot(r: int, warmup: int, g_per_v: int) -> str:
    if r <= warmup:
        return "verifier"
    if g_per_v == 0:
        return "generator"
    return "verifier" if (r - warmup - 1) % (g_per_v + 1) == g_per_v else "generator"


def total_generator_updates(rounds: int, verifier_warmup_rounds: int, generator_per_verifier: int) -> int:
    """T_g: generator slots in ``rounds`` rounds, the horizon of the alpha schedule (docs/method.md §4)."""
    return sum(_slot(r, verifier_warmup_rounds, generator_per_verifier) == "generator" for r in range(1, rounds + 1))


ALPHA_SCHEDULES = ("exp", "constant", "linear", "cosine")


def alpha_schedule(
    step: int,
    total_steps: int,
    alpha0: float,
    alpha_min: float,
    kind: str,
) -> float:
    """Weight of the step advantage after ``step`` generator updates (docs/method.md §4).

    - ``exp`` (paper): alpha(s) = max(alpha_min, alpha0 * exp(-k s)), k = ln(alpha0 / alpha_min) / T_g;
    - ``constant``: alpha0 throughout;
    - ``linear``: from alpha0 to alpha_min over T_g;
    - ``cosine``: alpha_min + (alpha0 - alpha_min) (1 + cos(pi s / T_g)) / 2.
    Past T_g every decaying schedule stays at alpha_min. Paper: alpha0 = 0.1 (GRPO, RLOO) or 0.5
    (REINFORCE++), alpha_min = 1e-3, T_g = total generator updates.
    """
    if kind not in ALPHA_SCHEDULES:
        raise ValueError(f"unknown alpha schedule '{kind}'; known: {', '.join(ALPHA_SCHEDULES)}")
    if not 0.0 <= alpha_min <= alpha0 <= 1.0:
        raise ValueError(f"need 0 <= alpha_min <= alpha0 <= 1, got alpha0={alpha0}, alpha_min={alpha_min}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if kind == "constant":
        return float(alpha0)
    if step >= total_steps:
        return float(alpha_min)
    frac = step / total_steps
    if kind == "exp":
        if alpha_min <= 0.0:
            raise ValueError("the exp alpha schedule needs alpha_min > 0 (k = ln(alpha0 / alpha_min) / T_g)")
        k = math.log(alpha0 / alpha_min) / total_steps
        return max(alpha_min, alpha0 * math.exp(-k * step))
    if kind == "linear":
        return alpha0 + (alpha_min - alpha0) * frac
    return alpha_min + 0.5 * (alpha0 - alpha_min) * (1.0 + math.cos(math.pi * frac))

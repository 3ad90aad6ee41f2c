"""The study arms' choices as small registries, like the estimators (docs/method.md §8).

Two choices make the ablation study's arms (``tango_steps.study.ablation``) beyond switching a model's training off:

- where a round's step verdicts come from when no verifier judges it (``algorithm.step_verdicts``): the task's
  exact step labels (``oracle``), or those labels flipped at random (``noisy_oracle``); ``verifier`` is the
  verifier engine itself (:func:`tango_steps.round.judge.judge`);
- what trains the generator in its rounds (``algorithm.generator_objective``): the reward stage's RL batch
  (``rl``, the paper), or the round's gold solutions as continued SFT at equal compute (``sft``).

The configuration lists the names (its ``Literal`` types) without importing this module; ``tests/unit/test_config.py``
checks that the two agree.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# (exact step labels, flip probability, the round's seeded RNG) -> step verdicts
ExactLabelVerdicts = Callable[[list[bool], float, random.Random], list[bool]]
EXACT_LABEL_VERDICTS: dict[str, ExactLabelVerdicts] = {}


def register_step_verdicts(name: str) -> Callable[[ExactLabelVerdicts], ExactLabelVerdicts]:
    """Register a source of step verdicts from the task's exact labels under ``name`` (``algorithm.step_verdicts``)."""

    def wrap(fn: ExactLabelVerdicts) -> ExactLabelVerdicts:
        EXACT_LABEL_VERDICTS[name] = fn
        return fn

    return wrap


@register_step_verdicts("oracle")
def oracle_verdicts(labels: list[bool], flip_prob: float, rng: random.Random) -> list[bool]:
    """The task's exact step labels: the ceiling of what any verifier's step rewards can add (docs/method.md §8)."""
    return [bool(x) for x in labels]


@register_step_verdicts("noisy_oracle")
def noisy_oracle_verdicts(labels: list[bool], flip_prob: float, rng: random.Random) -> list[bool]:
    """Each exact label flipped independently with probability ``flip_prob``: a verifier of known step accuracy
    (docs/method.md §8)."""
    return [bool(x) != (rng.random() < flip_prob) for x in labels]


@dataclass(frozen=True)
class GeneratorObjective:
    """What trains the generator in its rounds (docs/method.md §8 study arms).

    Attributes:
        gold_solutions: train on the round's gold solutions (tokenised by the update stage,
            :func:`tango_steps.round.update.sft_batch`) instead of the reward stage's RL batch.
        ratio_to_current: every optimizer step takes the current policy as the old one (ratio 1), so its
            gradient is the plain -A grad log p: continued SFT, not a trust region.
    """

    gold_solutions: bool
    ratio_to_current: bool


GENERATOR_OBJECTIVES: dict[str, GeneratorObjective] = {
    "rl": GeneratorObjective(gold_solutions=False, ratio_to_current=False),  # the paper: the RL batch of §4
    "sft": GeneratorObjective(gold_solutions=True, ratio_to_current=True),  # the floor at equal compute
}

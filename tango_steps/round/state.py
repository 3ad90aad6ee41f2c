"""What one round hands to the next (docs/method.md §3, §9): model references, reweighting, counters.

One typed object, built by :meth:`RoundState.initial` at a run's start and moved on by
:meth:`RoundState.advance` at each round's end. The flows store it as a plain dict (``to_dict``),
so an artifact stays readable whatever this class becomes; :meth:`RoundState.from_dict` reads
states written before a field existed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from tango_steps.method.schedule import RoundPlan


@dataclass(frozen=True)
class RoundState:
    """The state after round ``round`` (0: the initial models).

    Attributes:
        round: rounds done.
        generator / verifier: model references (``tango_steps.models.store``) of the current policies.
        generator_init / verifier_init: the round-0 checkpoints, each model's frozen KL reference.
        reweighter: the verifier's class-count EMAs (docs/method.md §5), None before its first verifier round.
            The only copy: checkpoints do not carry it.
        generator_updates / verifier_updates: optimizer updates done so far.
        alpha_horizon: T_g of the alpha schedule (docs/method.md §4), fixed at the run's start; a fork keeps
            its source's, so forking changes nothing the source would have done.
    """

    round: int
    generator: dict[str, Any]
    verifier: dict[str, Any]
    generator_init: dict[str, Any]
    verifier_init: dict[str, Any]
    alpha_horizon: int
    reweighter: dict[str, Any] | None = None
    generator_updates: int = 0
    verifier_updates: int = 0

    @classmethod
    def initial(cls, refs: dict[str, dict[str, Any]], alpha_horizon: int) -> RoundState:
        """Round 0: both models at their initial checkpoints, which are also their KL references."""
        g, v = refs["generator"], refs["verifier"]
        return cls(round=0, generator=g, verifier=v, generator_init=g, verifier_init=v, alpha_horizon=alpha_horizon)

    def advance(
        self, plan: RoundPlan, generator: dict[str, Any], verifier: dict[str, Any], reweighter: dict[str, Any] | None
    ) -> RoundState:
        """The state after ``plan``'s round, given the models it ended with and the reweighting it left."""
        if plan.round_idx != self.round + 1:
            raise ValueError(f"round {plan.round_idx} cannot follow the state of round {self.round}")
        return replace(
            self,
            round=plan.round_idx,
            generator=generator,
            verifier=verifier,
            reweighter=reweighter,
            generator_updates=self.generator_updates + int(plan.update_generator),
            verifier_updates=self.verifier_updates + int(plan.update_verifier),
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for artifacts."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], alpha_horizon: int | None = None) -> RoundState:
        """The state back from its artifact dict.

        ``alpha_horizon`` fills in T_g for a state stored before it was part of the state (runs made
        before issue #13); a state that has it keeps its own.
        """
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "alpha_horizon" not in known:
            if alpha_horizon is None:
                raise ValueError("this state predates alpha_horizon; pass the run's T_g")
            known["alpha_horizon"] = alpha_horizon
        return cls(**known)

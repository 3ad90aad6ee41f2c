"""Tango rounds in one process, without Metaflow (docs/method.md §3): the runner of the benchmarks' scans.

:class:`InProcessRun` calls the same ``tango_steps.round`` stage functions as TangoRoundFlow's
steps, in the same order, skipping the same stages, with checkpoints in a local folder; a test
checks that it reproduces an AblationFlow branch exactly. There is no resume, no lineage and
nothing to browse: ``benchmarks/studies/quick_rounds.py`` and ``benchmarks/speed/round_scaling.py`` use it to
decide what to run, then TangoFlow / AblationFlow run that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tango_steps.config import TangoConfig
from tango_steps.method.schedule import RoundPlan
from tango_steps.round.evaluate import evaluate
from tango_steps.round.plan import StageResult, alpha_horizon, round_plan, update_step
from tango_steps.round.reward import RoundRewards, reward
from tango_steps.round.shards import join_shards, sample_shard
from tango_steps.round.state import RoundState
from tango_steps.round.update import update

QUIET = lambda s: None  # noqa: E731


@dataclass
class RoundOutput:
    """One in-process round: its plan, tables, rewards and per-stage seconds (evaluation excluded)."""

    plan: RoundPlan
    rollouts: pd.DataFrame
    judgments: pd.DataFrame
    rewards: RoundRewards
    seconds: dict[str, float]
    update_metrics: dict[str, float] = field(default_factory=dict)  # the slot's update's (role-prefixed), if any

    @property
    def train_seconds(self) -> float:
        """Wall seconds of the round's training stages (rollout, judge, reward, update)."""
        return sum(self.seconds.values())


class InProcessRun:
    """A run's models and state in one process; :meth:`round` runs the next round, :meth:`evaluate` measures.

    ``dirs``: initial checkpoint directories (``{"generator": ..., "verifier": ...}``, e.g. from
    :func:`~tango_steps.pipeline.driver.initial_checkpoints`), also each model's KL reference. With
    ``rollout.shards`` S > 1 the round's sampling runs as S shards one after another
    (:func:`~tango_steps.round.shards.sample_shard`: engines of their own, as a flow's shards would on separate
    devices), joined: the same tables, at the cost of the engine loads. An update with ``update.nodes``
    N > 1 runs its N x ``processes`` processes on this machine (one torchrun): the same process group.
    """

    def __init__(self, cfg: TangoConfig, dirs: dict[str, Path], work: Path, log=QUIET) -> None:
        self.cfg, self.work, self.log = cfg, Path(work), log
        refs = {role: {"path": str(Path(dirs[role]))} for role in ("generator", "verifier")}
        # the same round state TangoFlow hands from round to round, with local paths as model references;
        # T_g is fixed at the run's start as there
        self.state = RoundState.initial(refs, alpha_horizon(cfg))

    def _path(self, role: str) -> Path:
        return Path(getattr(self.state, role)["path"])

    @property
    def generator(self) -> Path:
        """The current generator checkpoint."""
        return self._path("generator")

    @property
    def verifier(self) -> Path:
        """The current verifier checkpoint."""
        return self._path("verifier")

    @property
    def generator_init(self) -> Path:
        """The round-0 generator checkpoint (its KL reference)."""
        return self._path("generator_init")

    @property
    def verifier_init(self) -> Path:
        """The round-0 verifier checkpoint (its KL reference)."""
        return self._path("verifier_init")

    @property
    def rounds_done(self) -> int:
        """Rounds run so far."""
        return self.state.round

    @property
    def generator_updates(self) -> int:
        """Generator updates made so far."""
        return self.state.generator_updates

    def round(self) -> RoundOutput:
        """Round ``rounds_done + 1``: rollout, judge (unless skipped), reward, the slot's update."""
        cfg, log, state = self.cfg, self.log, self.state
        k = state.round + 1
        plan = round_plan(cfg, k, state.alpha_horizon)
        t: dict[str, float] = {}
        parts = [
            sample_shard(cfg, plan, self.generator, self.verifier, (i, cfg.rollout.shards), log=log)
            for i in range(cfg.rollout.shards)
        ]
        t0 = time.perf_counter()
        rollouts, _, judgments, _ = join_shards(cfg, plan, parts, log=log)
        t["rollout"] = sum(p.stats["rollout_s"] for p in parts)
        t["judge"] = sum(p.stats["judge_s"] for p in parts) + time.perf_counter() - t0
        t0 = time.perf_counter()
        out = reward(cfg, plan, rollouts, judgments, state.reweighter, log=log)
        t["reward"], t0 = time.perf_counter() - t0, time.perf_counter()
        models = {"generator": state.generator, "verifier": state.verifier}
        update_metrics: dict[str, float] = {}
        step = update_step(plan)
        if step in ("verifier_update", "generator_update"):
            role = step.removesuffix("_update")
            batch = out.generator_batch if role == "generator" else out.verifier_batch
            new = self.work / f"r{k}" / role
            init = self.generator_init if role == "generator" else self.verifier_init
            update_metrics = update(cfg, plan, role, self._path(role), init, batch, new, log=log)
            models[role] = {"path": str(new)}
        t["update"] = time.perf_counter() - t0
        self.state = state.advance(plan, models["generator"], models["verifier"], out.reweighter)
        return RoundOutput(plan, out.rollouts, out.judgments, out, t, update_metrics)

    def evaluate(self) -> tuple[pd.DataFrame, StageResult]:
        """The held-out evaluation of the current models (docs/method.md §7-§8)."""
        return evaluate(self.cfg, self.generator, self.verifier, log=self.log)

"""Tango rounds in one process, without Metaflow (TANGO.md §3): the runner of the benchmarks' scans.

:class:`InProcessRun` calls the same ``tango_steps.round.stages`` stage functions as TangoRoundFlow's
steps, in the same order, skipping the same stages, with checkpoints in a local folder; a test
checks that it reproduces an AblationFlow branch exactly. There is no resume, no lineage and
nothing to browse: ``benchmarks/quick_rounds.py`` and ``benchmarks/round_scaling.py`` use it to
decide what to run, then TangoFlow / AblationFlow run that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tango_steps.config import TangoConfig
from tango_steps.method.schedule import RoundPlan
from tango_steps.round import stages

QUIET = lambda s: None  # noqa: E731


@dataclass
class RoundOutput:
    """One in-process round: its plan, tables, rewards and per-stage seconds (evaluation excluded)."""

    plan: RoundPlan
    rollouts: pd.DataFrame
    judgments: pd.DataFrame
    rewards: stages.RoundRewards
    seconds: dict[str, float]

    @property
    def train_seconds(self) -> float:
        """Wall seconds of the round's training stages (rollout, judge, reward, update)."""
        return sum(self.seconds.values())


class InProcessRun:
    """A run's models and state in one process; :meth:`round` runs the next round, :meth:`evaluate` measures.

    ``dirs``: initial checkpoint directories (``{"generator": ..., "verifier": ...}``, e.g. from
    :func:`~tango_steps.pipeline.driver.initial_checkpoints`), also each model's KL reference. With
    ``rollout.shards`` S > 1 the round's sampling runs as S shards one after another
    (:func:`~tango_steps.round.stages.sample_shard`: engines of their own, as a flow's shards would on separate
    devices), joined: the same tables, at the cost of the engine loads. An update with ``update.nodes``
    N > 1 runs its N x ``processes`` processes on this machine (one torchrun): the same process group.
    """

    def __init__(self, cfg: TangoConfig, dirs: dict[str, Path], work: Path, log=QUIET) -> None:
        self.cfg, self.work, self.log = cfg, Path(work), log
        self.generator = self.generator_init = Path(dirs["generator"])
        self.verifier = self.verifier_init = Path(dirs["verifier"])
        self.horizon = stages.alpha_horizon(cfg)  # T_g, fixed at the run's start as in TangoFlow
        self.reweighter: dict[str, Any] | None = None
        self.rounds_done = 0
        self.generator_updates = 0

    def round(self) -> RoundOutput:
        """Round ``rounds_done + 1``: rollout, judge (unless skipped), reward, the slot's update."""
        cfg, log = self.cfg, self.log
        k = self.rounds_done + 1
        plan = stages.round_plan(cfg, k, self.horizon)
        t: dict[str, float] = {}
        parts = [
            stages.sample_shard(cfg, plan, self.generator, self.verifier, (i, cfg.rollout.shards), log=log)
            for i in range(cfg.rollout.shards)
        ]
        t0 = time.perf_counter()
        rollouts, _, judgments, _ = stages.join_shards(cfg, plan, parts, log=log)
        t["rollout"] = sum(p.stats["rollout_s"] for p in parts)
        t["judge"] = sum(p.stats["judge_s"] for p in parts) + time.perf_counter() - t0
        t0 = time.perf_counter()
        out = stages.reward(cfg, plan, rollouts, judgments, self.reweighter, log=log)
        self.reweighter = out.reweighter
        t["reward"], t0 = time.perf_counter() - t0, time.perf_counter()
        step = stages.update_step(plan)
        if step in ("verifier_update", "generator_update"):
            role = step.removesuffix("_update")
            batch = out.generator_batch if role == "generator" else out.verifier_batch
            new = self.work / f"r{k}" / role
            init = self.generator_init if role == "generator" else self.verifier_init
            stages.update(cfg, plan, role, getattr(self, role), init, batch, new, log=log)
            setattr(self, role, new)
            self.generator_updates += role == "generator"
        t["update"] = time.perf_counter() - t0
        self.rounds_done = k
        return RoundOutput(plan, out.rollouts, out.judgments, out, t)

    def evaluate(self) -> tuple[pd.DataFrame, stages.StageResult]:
        """The held-out evaluation of the current models (TANGO.md §7-§8)."""
        return stages.evaluate(self.cfg, self.generator, self.verifier, log=self.log)

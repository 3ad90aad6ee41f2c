"""A round's sampling in shards (docs/method.md §3): rollout and judging of a part of the prompts per device,
joined into exactly the unsharded tables."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tango_steps.config import TangoConfig
from tango_steps.method.schedule import RoundPlan
from tango_steps.round.judge import join_judgments, judge
from tango_steps.round.plan import Log, StageResult, rollout_size, verifier_judges
from tango_steps.round.sample import join_rollouts, rollout
from tango_steps.round.sampling import shard_range


@dataclass
class ShardResult:
    """What one shard of a round's sampling made (:func:`sample_shard`): its rows of both tables.

    ``judgments`` is None when no verifier judges the round (the join judges the whole table then,
    without an engine). ``stats`` is the shard's row of the round's shard table: its prompts, rows,
    engine seconds and wall seconds per stage (engine load included).
    """

    rollouts: pd.DataFrame
    rollout: StageResult
    judgments: pd.DataFrame | None
    judge: StageResult | None
    stats: dict[str, Any]


def sample_shard(
    cfg: TangoConfig,
    plan: RoundPlan,
    generator_ckpt: Path,
    verifier_ckpt: Path | None,
    shard: tuple[int, int],
    log: Log = print,
    pin_devices: bool = False,
) -> ShardResult:
    """Shard ``k`` of ``S`` of a round's sampling (docs/method.md §3): the generator samples the shard's
    prompts, then the verifier judges the shard's own solutions, one engine at a time.

    A solution's verifications depend on that solution only, so a shard needs nothing from the
    others; its prompts are whole engine calls (:func:`shard_range`) seeded by their index in the
    round, so :func:`join_shards` of all S shards equals the unsharded rollout and judge tables.

    ``pin_devices``: the shard is a process of its own (a flow's ``foreach`` task): before its first
    engine starts, it is narrowed to its own ``rollout.tensor_parallel_size`` GPUs of the machine when
    run locally (:func:`pin_shard_devices`). Off where shards run one after another in one process
    (``round.in_process``): a process's GPUs are fixed when its CUDA starts.
    """
    k, shards = shard
    if pin_devices:
        pin_shard_devices(cfg, shard, log)
    t0 = time.perf_counter()
    rollouts, rres = rollout(cfg, plan, generator_ckpt, log=log, shard=shard)
    t1 = time.perf_counter()
    judgments, jres = None, None
    n_prompts, n = rollout_size(cfg, plan)
    mine = shard_range(n_prompts, n, cfg.rollout.chunk_samples, k, shards)
    first = mine.start * n  # the shard's first solution: every prompt has n of them
    if verifier_judges(cfg, plan):
        judgments, jres = judge(cfg, plan, verifier_ckpt, rollouts, log=log, first=first)
    t2 = time.perf_counter()
    stats = {
        "shard": k,
        "shards": shards,
        "prompts": f"{mine.start}-{mine.stop - 1}" if len(mine) else "-",
        "first_solution": first,
        "solutions": len(rollouts),
        "verifications": 0 if judgments is None else len(judgments),
        "rollout_s": t1 - t0,
        "rollout_engine_s": rres.compute_seconds,
        "judge_s": t2 - t1,
        "judge_engine_s": 0.0 if jres is None else jres.compute_seconds,
    }
    log(f"shard {k}/{shards}: {len(rollouts)} solutions, {stats['verifications']} verifications in {t2 - t0:.1f} s")
    return ShardResult(rollouts, rres, judgments, jres, stats)


def pin_shard_devices(cfg: TangoConfig, shard: tuple[int, int], log: Log = print) -> str | None:
    """Narrow this shard's process to its own GPUs when the flow runs locally (its foreach tasks are processes of
    one machine; a cluster gives each its own pod): shard k of S takes visible devices k*T .. k*T+T-1, T =
    ``rollout.tensor_parallel_size``, or the run is refused naming ``rollout.shards`` when S x T is more than
    the machine shows (:func:`~tango_steps.rollout.devices.local_devices`). Returns what was set, or None."""
    from tango_steps.rollout.devices import pin_local_devices

    k, shards = shard
    fields = ("rollout.shards", "rollout.tensor_parallel_size")
    return pin_local_devices(k, shards, cfg.rollout.tensor_parallel_size, fields, log)


def join_shards(
    cfg: TangoConfig, plan: RoundPlan, parts: list[ShardResult], log: Log = print
) -> tuple[pd.DataFrame, StageResult, pd.DataFrame, StageResult]:
    """The round's rollout and judge tables (and their results) from all its shards, in prompt order:
    equal to what the unsharded :func:`rollout` and :func:`judge` make (docs/method.md §3)."""
    parts = sorted(parts, key=lambda p: p.stats["shard"])
    if [p.stats["shard"] for p in parts] != list(range(len(parts))):
        raise ValueError(f"shards {[p.stats['shard'] for p in parts]} are not 0..{len(parts) - 1}: one is missing")
    rollouts, rres = join_rollouts([(p.rollouts, p.rollout) for p in parts])
    seen = 0
    for p in parts:  # the solution indices a shard judged under must be its rows in the joined table
        if p.stats["first_solution"] != seen and p.stats["solutions"]:
            raise ValueError(f"shard {p.stats['shard']} starts at solution {p.stats['first_solution']}, not {seen}")
        seen += p.stats["solutions"]
    if verifier_judges(cfg, plan):
        judgments, jres = join_judgments([(p.judgments, p.judge) for p in parts])
    else:  # exact labels or nothing to judge: no engine, so the whole table is judged here
        judgments, jres = judge(cfg, plan, None, rollouts, log=log)
    return rollouts, rres, judgments, jres


def shard_table(parts: list[ShardResult]) -> pd.DataFrame:
    """The shards' statistics, one row per shard in shard order (the join's card and artifact)."""
    return pd.DataFrame(sorted((p.stats for p in parts), key=lambda s: s["shard"]))

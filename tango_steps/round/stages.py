"""The stages of one Tango round, as plain functions the flows call (TANGO.md §3-§6).

One round is one global step of TANGO.md §3: a fresh batch of prompts and (at most) one optimizer
step on the generator or the verifier, as :func:`~tango_steps.method.schedule.plan_round` says.

- :func:`rollout`: the generator samples solutions (M per prompt in a generator round, 1 in a
  verifier round), one row per solution in a DataFrame.
- :func:`judge`: the verifier judges every solution (1 verification in a generator round, N in a
  verifier round), one row per verification.
- :func:`reward`: outcome rewards (graded), step rewards, the generator's per-token advantages with
  alpha, the verifier's rewards, GRPO advantages and class reweighting; the two RL batches.
- :func:`update`: one RL update of one model (or a recorded skip).
- :func:`evaluate`: held-out greedy accuracy of the generator and the verifier's outcome and
  process-level (ProcessBench protocol) metrics on those solutions, with exact step labels.

Everything here is independent of Metaflow; the flows only store what these functions return.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from tango_steps.config import TangoConfig
from tango_steps.method.metrics import (
    hacking_diagnostics,
    predicted_first_error,
    step_verdict_histogram,
    verifier_alarm,
    verifier_metrics,
)
from tango_steps.method.schedule import RoundPlan, alpha_schedule, evaluates, plan_round, total_generator_updates

Log = Callable[[str], None]
FAIL_ENV = "TANGO_FAIL_AT"  # test-only switch, "<round>:<stage>[:once],...", e.g. "2:judge" (see README)


def maybe_fail(round_idx: int, stage: str, attempt: int = 0) -> None:
    """Raise when ``$TANGO_FAIL_AT`` names this round and stage: the test-only failure switch (TANGO.md §9 resume).

    A comma-separated list of ``<round>:<stage>`` targets; ``<round>:<stage>:once`` fails only the
    first attempt (``attempt`` 0), so ``@retry`` succeeds.
    """
    for target in filter(None, os.environ.get(FAIL_ENV, "").split(",")):
        once = target.endswith(":once")
        if target.removesuffix(":once") == f"{round_idx}:{stage}" and not (once and attempt > 0):
            raise RuntimeError(f"failure injected by {FAIL_ENV}={target} (test-only switch)")


KILL_ENV = "TANGO_KILL_AT"  # test-only switch, "<round>:<point>": SIGKILL of the whole process group there


def maybe_kill(round_idx: int | None, point: str) -> None:
    """SIGKILL this process's whole group when ``$TANGO_KILL_AT`` is ``<round_idx>:<point>`` (TANGO.md §9).

    The test-only kill switch of ``benchmarks/kill_sweep.py``: no exception, no ``finally``, no
    Metaflow bookkeeping runs, exactly as when a node dies. Metaflow's local runtime, its tasks and
    the rounds' nested runs share one process group, so the driver dies with the task. Points: a
    TangoRoundFlow step's name (at the end of its work, before its artifacts are stored),
    ``TangoFlow.start`` / ``TangoFlow.round`` / ``TangoFlow.end`` and ``checkpoint_write`` (between a
    checkpoint's files and its manifest, :meth:`~tango_steps.pipeline.model_store.ModelStore.save`).
    """
    if os.environ.get(KILL_ENV) == f"{round_idx}:{point}":
        import signal

        print(f"killing the process group at {round_idx}:{point} ({KILL_ENV}, test-only switch)", flush=True)
        os.killpg(os.getpgrp(), signal.SIGKILL)


def alpha_horizon(cfg: TangoConfig) -> int:
    """T_g of a run started with ``cfg`` (TANGO.md §4): ``algorithm.alpha_horizon``, else its generator slots.

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
    """The TANGO.md §3 plan of round ``round_idx`` under ``cfg.schedule``, with its alpha (TANGO.md §4).

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
    """The round's fresh training prompts (TANGO.md §3), a pure function of (seed, round): the data cursor."""
    from tango_steps.tasks import get_task

    task = get_task(cfg.task.name, **cfg.task.params)
    return task.problems(n, "train", seed=cfg.seed * 1_000_003 + round_idx)


def heldout_problems(cfg: TangoConfig):
    """The held-out evaluation problems (TANGO.md §7): the same in every round, seed and variant of a task.

    They depend on the task and ``evaluation.heldout_problems`` only, never on ``seed``, so runs with
    different seeds (and every arm of a study) are scored on the same problems, paired per problem;
    the embedded tasks' lists are shipped in ``data/heldout/`` (:mod:`tango_steps.tasks.heldout`).
    """
    from tango_steps.tasks.heldout import heldout_set

    return heldout_set(cfg.task.name, cfg.evaluation.heldout_problems, cfg.task.params)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (each Metaflow step is its own process)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def freeze_heap() -> None:
    """Exclude every object alive now from Python's cyclic garbage collector (``gc.freeze``).

    Called at the end of a step's work, when only storing its artifacts (and its card) is left before
    the process exits. With torch and transformers loaded, the interpreter's exit spends 0.6-0.9 s in
    garbage-collection passes over the imported modules' objects; frozen, the exit takes 0.15 s (one
    model-loading step, 2 cores; docs/performance.md). Reference counting still frees what the step
    drops; only cyclic garbage made before the call stays until the process ends, moments later.
    """
    import gc

    gc.freeze()


def progress_bar(done: int, total: int, width: int = 20) -> str:
    """``[#####-----] 128/256``: a one-line progress bar for task logs."""
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"


def _seed(cfg: TangoConfig, round_idx: int, stage: str) -> int:
    return (cfg.seed * 1_000_003 + round_idx * 101 + sum(map(ord, stage))) % (2**31 - 1)


@dataclass
class StageResult:
    """What a stage returns: tables, metrics and the seconds spent in model compute (TANGO.md §3)."""

    metrics: dict[str, Any]
    compute_seconds: float


# ----------------------------------------------------------------------------------------------
# rollout
# ----------------------------------------------------------------------------------------------


def _engine(cfg: TangoConfig, role: str, model_dir: Path, seed: int):
    """The rollout engine over a checkpoint of ``role`` ("generator" / "verifier"), in that model's prompt format."""
    from tango_steps.rollout import engine_from_config

    return engine_from_config(cfg.rollout, str(model_dir), seed=seed, prompt_format=getattr(cfg, role).prompt_format)


def _servable(ckpt: Path) -> Path:
    """The model an engine loads for a policy checkpoint (a LoRA adapter merged into its base, once)."""
    from tango_steps.training.update import servable_model

    return servable_model(ckpt)


def sampling_chunks(n_prompts: int, n: int, chunk_samples: int) -> list[range]:
    """The prompts of each engine call of a stage: ``chunk_samples // n`` prompts a call (TANGO.md §3).

    Each call is seeded by the index of its first prompt (:func:`_generate`), so what a prompt gets
    depends on the seed and this chunking only: a shard made of whole calls samples exactly what
    the unsharded stage does.
    """
    size = max(1, chunk_samples // max(1, n))
    return [range(i, min(i + size, n_prompts)) for i in range(0, n_prompts, size)]


def shard_range(n_prompts: int, n: int, chunk_samples: int, shard: int, shards: int) -> range:
    """The prompts of shard ``shard`` of ``shards``: a contiguous run of whole engine calls (possibly
    none when there are more shards than calls)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in [0, {shards}), got {shard}")
    chunks = sampling_chunks(n_prompts, n, chunk_samples)
    lo, hi = len(chunks) * shard // shards, len(chunks) * (shard + 1) // shards
    return range(chunks[lo].start, chunks[hi - 1].stop) if lo < hi else range(0)


def _generate(engine, prompts: list[str], sampling, what: str, log: Log, first: int = 0, chunk_samples: int = 256):
    """Generate in chunks of ``chunk_samples`` samples with a progress line per chunk (counts and rate).

    ``prompts`` are the full list's prompts from index ``first`` on (a shard starts at a chunk
    boundary); each chunk is seeded by its first prompt's index in the full list.
    """
    from tango_steps.rollout import SamplingSettings

    out = []
    chunk = max(1, chunk_samples // max(1, sampling.n))
    if first % chunk:
        raise ValueError(f"a shard must start at a chunk boundary ({chunk} prompts), got prompt {first}")
    t0 = time.perf_counter()
    for i in range(0, len(prompts), chunk):
        s = SamplingSettings(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed + first + i,
        )
        out.extend(engine.generate(prompts[i : i + chunk], s))
        done = min(i + chunk, len(prompts)) * sampling.n
        dt = time.perf_counter() - t0
        log(f"{what}: {progress_bar(done, len(prompts) * sampling.n)} samples, {done / max(dt, 1e-9):.1f} samples/s")
    return out


def _sample(
    cfg: TangoConfig,
    role: str,
    ckpt: Path,
    prompts: list[str],
    scfg,
    n: int,
    round_idx: int,
    what: str,
    log: Log,
    first: int = 0,
):
    """Sample ``n`` completions per prompt from a checkpoint of ``role``; return them, the prompt ids the
    engine used and the engine's tokenizer.

    The ids come from the engine itself (its tokenizer, prompt format and prompt-length policy), so the
    RL batch trains on exactly the prompts that were sampled from, chat template and truncation
    included (TANGO.md §3, §6).
    """
    from tango_steps.rollout import SamplingSettings

    seed = _seed(cfg, round_idx, what)
    with _engine(cfg, role, _servable(ckpt), seed) as engine:
        sampling = SamplingSettings(
            n=n, temperature=scfg.temperature, top_p=scfg.top_p, max_tokens=scfg.max_tokens, seed=seed
        )
        comps = _generate(engine, prompts, sampling, what, log, first, cfg.rollout.chunk_samples)
        prompt_ids, _ = engine.prompt_ids(prompts)
    return comps, prompt_ids, engine.tokenizer


def rollout(
    cfg: TangoConfig, plan: RoundPlan, generator_ckpt: Path, log: Log = print, shard: tuple[int, int] = (0, 1)
) -> tuple[pd.DataFrame, StageResult]:
    """The generator's samples for this round (TANGO.md §3), one row per solution.

    Generator rounds: ``batch.generator_prompts`` prompts x M = ``generator_sampling.n``; verifier
    rounds: ``batch.verifier_prompts`` prompts x 1 solution. Columns: ``prompt_id``, ``prompt_index``,
    ``sample``, ``question``, ``gold``, ``prompt``, ``text``, ``prompt_ids``, ``response_ids``,
    ``finish_reason``, ``truncated``, the parse (``steps``, ``step_spans``, ``answer``,
    ``format_score``, ``well_formed``), ``step_end_tokens`` (the sampled token holding each step's
    last character, where its step reward goes: TANGO.md §4; empty in rounds without step rewards)
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
    aligned = _is_generator_slot(plan) and cfg.algorithm.step_rewards
    n_prompts, n = rollout_size(cfg, plan)
    task = get_task(cfg.task.name, **cfg.task.params)
    template = get_template(cfg.template)
    mine = shard_range(n_prompts, n, cfg.rollout.chunk_samples, *shard)
    problems = round_problems(cfg, plan.round_idx, n_prompts)[mine.start : mine.stop]
    prompts = [template.generator_prompt(p.question) for p in problems]
    t0 = time.perf_counter()
    comps, prompt_ids, tok = [], [], None
    if problems:
        comps, prompt_ids, tok = _sample(
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
                {
                    "prompt_id": p.id,
                    "prompt_index": i,
                    "sample": j,
                    "question": p.question,
                    "gold": p.answer,
                    "prompt": prompt,
                    "text": c.text,
                    "prompt_ids": list(prompt_ids[k]),
                    "response_ids": list(c.token_ids),
                    "finish_reason": c.finish_reason,
                    "truncated": c.truncated,
                    "steps": list(parsed.steps),
                    "step_spans": [list(span) for span in parsed.step_spans],
                    "step_end_tokens": ends,
                    "answer": parsed.answer,
                    "format_score": parsed.format_score,
                    "well_formed": parsed.well_formed,
                    "label_correct": check.correct,
                    "step_labels": None if check.step_labels is None else list(check.step_labels),
                    "first_error": check.first_error,
                }
            )
    df = pd.DataFrame(rows, columns=_ROLLOUT_COLUMNS)
    metrics = rollout_metrics(df, compute)
    log(
        f"rollout: {len(df)} samples, {metrics['rollout/tokens']} tokens in {compute:.1f} s; "
        f"exact accuracy {metrics['rollout/label_accuracy']:.3f}"
    )
    return df, StageResult(metrics, compute)


_ROLLOUT_COLUMNS = [
    "prompt_id", "prompt_index", "sample", "question", "gold", "prompt", "text", "prompt_ids", "response_ids",
    "finish_reason", "truncated", "steps", "step_spans", "step_end_tokens", "answer", "format_score",
    "well_formed", "label_correct", "step_labels", "first_error",
]  # fmt: skip


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


def _is_generator_slot(plan: RoundPlan) -> bool:
    return plan.slot == "generator"


def rollout_size(cfg: TangoConfig, plan: RoundPlan) -> tuple[int, int]:
    """(prompts, samples per prompt) of the round's rollout: B_g x M in a generator round, B_v x 1 in a
    verifier round (TANGO.md §3)."""
    if _is_generator_slot(plan):
        return cfg.batch.generator_prompts, cfg.generator_sampling.n
    return cfg.batch.verifier_prompts, 1


# ----------------------------------------------------------------------------------------------
# judge
# ----------------------------------------------------------------------------------------------


def judge(
    cfg: TangoConfig,
    plan: RoundPlan,
    verifier_ckpt: Path | None,
    rollouts: pd.DataFrame,
    log: Log = print,
    first: int = 0,
) -> tuple[pd.DataFrame, StageResult]:
    """The verifier's verdicts on the round's solutions (TANGO.md §2-§3), one row per verification.

    Generator rounds: 1 verification per solution (its step verdicts are the step rewards); verifier
    rounds: N = ``verifier_sampling.n`` per solution (the GRPO group of TANGO.md §5). With
    ``algorithm.step_rewards`` false and a generator round, nothing is judged (vanilla GRPO).
    Columns: ``solution`` (row of ``rollouts``), ``verification``, ``prompt``, ``text``, ``prompt_ids``,
    ``response_ids``, ``truncated``, ``num_steps``, ``step_verdicts``, ``final_verdict``,
    ``format_score``, ``num_judged``.

    ``first``: ``rollouts`` is a shard's run of the round's solutions starting at solution ``first``
    (:func:`sample_shard`); its rows keep the ``solution`` index and seeds they have in the whole
    round, and :func:`join_judgments` joins the shards. Only a verifier judges a shard: the exact-label
    and skipped cases (no engine, ``verifier_ckpt`` unused) take the whole table.
    """
    from tango_steps.method.formats import parse_verification

    generator_round = _is_generator_slot(plan)
    if not verifier_judges(cfg, plan) and first:
        raise ValueError("only a verifier's judging is sharded; exact labels and skipped judging take the whole table")
    if not needs_judge(cfg, plan):
        return no_judgments(log)
    if not verifier_judges(cfg, plan):
        df = oracle_judgments(rollouts, cfg.algorithm.step_verdicts, cfg.algorithm.oracle_flip_prob,
                              _seed(cfg, plan.round_idx, "oracle"))  # fmt: skip
        log(f"judge: {cfg.algorithm.step_verdicts} step verdicts from the task's exact labels (no verifier)")
        metrics = {"judge/oracle": 1, **step_verdict_histogram(list(df["step_verdicts"]))}
        return df, StageResult(metrics, 0.0)
    assert verifier_ckpt is not None, "a verifier judges this round: its checkpoint is needed"
    n = 1 if generator_round else cfg.verifier_sampling.n
    part = rollouts
    parsed = parsed_solutions(part)
    questions, texts = list(part["question"]), list(part["text"])
    t0 = time.perf_counter()
    comps, prompt_ids, prompts, cut = [], [], [], []
    if len(part):
        prompts, cut = verifier_prompts(cfg, verifier_ckpt / "model", questions, parsed, texts)
        comps, prompt_ids, _ = _sample(
            cfg, "verifier", verifier_ckpt, prompts, cfg.verifier_sampling, n, plan.round_idx, "judge", log,
            first=first,
        )  # fmt: skip
    compute = time.perf_counter() - t0
    rows = []
    for k, (s, prompt, cs) in enumerate(zip(parsed, prompts, comps, strict=True)):
        i = first + k
        for j, c in enumerate(cs):
            v = parse_verification(c.text, s.num_steps, s.well_formed)
            rows.append(
                {
                    "solution": i,
                    "verification": j,
                    "prompt": prompt,
                    "prompt_cut": cut[k],
                    "text": c.text,
                    "prompt_ids": list(prompt_ids[k]),
                    "response_ids": list(c.token_ids),
                    "truncated": c.truncated,
                    "num_steps": s.num_steps,
                    "step_verdicts": None if v.step_verdicts is None else list(v.step_verdicts),
                    "final_verdict": v.final_verdict,
                    "format_score": v.format_score,
                    "num_judged": v.num_judged,
                }
            )
    df = pd.DataFrame(rows, columns=_JUDGE_COLUMNS)
    metrics = judge_metrics(df, int(sum(cut)), compute)
    if any(cut):
        log(f"judge: {sum(cut)} of {len(cut)} verifier prompts over rollout.max_prompt_tokens: solution tail cut")
    log(f"judge: {len(df)} verifications, {metrics['judge/tokens']} tokens in {compute:.1f} s")
    return df, StageResult(metrics, compute)


def judge_metrics(df: pd.DataFrame, prompts_cut: int, compute: float) -> dict[str, Any]:
    """The judge stage's metrics of its table (the whole round's, or one shard's)."""
    tokens = int(sum(len(r) for r in df["response_ids"]))
    some = len(df) > 0
    return {
        "judge/verifications": len(df),
        "judge/tokens": tokens,
        "judge/tokens_per_s": tokens / max(compute, 1e-9),
        "judge/format_ok_frac": float((df["format_score"] == 1.0).mean()) if some else 0.0,
        "judge/step_count_mismatch_frac": float(df["step_verdicts"].isna().mean()) if some else 0.0,
        "judge/no_final_verdict_frac": float(df["final_verdict"].isna().mean()) if some else 0.0,
        "judge/truncated_frac": float(df["truncated"].mean()) if some else 0.0,
        "judge/prompt_cut": prompts_cut,
        **step_verdict_histogram(list(df["step_verdicts"])),
    }


def join_judgments(parts: list[tuple[pd.DataFrame, StageResult]]) -> tuple[pd.DataFrame, StageResult]:
    """The verifier's shards of :func:`judge` as the one table the unsharded stage makes (solution order)."""
    tables = [d for d, _ in parts if len(d)]
    df = pd.concat(tables, ignore_index=True) if tables else parts[0][0]
    df = df.sort_values(["solution", "verification"]).reset_index(drop=True)
    compute = sum(r.compute_seconds for _, r in parts)
    cut = int(df.drop_duplicates("solution")["prompt_cut"].sum())
    return df, StageResult(judge_metrics(df, cut, compute), compute)


def needs_judge(cfg: TangoConfig, plan: RoundPlan) -> bool:
    """Whether the round judges its solutions: not in a generator round without step rewards (vanilla GRPO)."""
    return not (_is_generator_slot(plan) and not cfg.algorithm.step_rewards)


def verifier_judges(cfg: TangoConfig, plan: RoundPlan) -> bool:
    """Whether a verifier engine judges this round's solutions (not skipped, not exact labels: TANGO.md §3, §8)."""
    exact_labels = _is_generator_slot(plan) and cfg.algorithm.step_verdicts != "verifier"
    return needs_judge(cfg, plan) and not exact_labels


def no_judgments(log: Log = print) -> tuple[pd.DataFrame, StageResult]:
    """The judge stage's result when nothing is judged: an empty table with the judge's columns."""
    log("judge: skipped (algorithm.step_rewards is false: outcome reward only)")
    return pd.DataFrame(columns=_JUDGE_COLUMNS), StageResult({"judge/skipped": 1}, 0.0)


def parsed_solutions(rollouts: pd.DataFrame) -> list:
    """The rollout's parse of each solution back as :class:`~tango_steps.method.formats.ParsedSolution` (TANGO.md §2).

    Built from the columns :func:`rollout` wrote, so no stage parses a completion a second time.
    """
    from tango_steps.method.formats import ParsedSolution

    return [
        ParsedSolution(list(steps), [tuple(x) for x in spans], answer, fmt, bool(ok))
        for steps, spans, answer, fmt, ok in zip(
            rollouts["steps"], rollouts["step_spans"], rollouts["answer"], rollouts["format_score"],
            rollouts["well_formed"], strict=True,
        )
    ]  # fmt: skip


_JUDGE_COLUMNS = [
    "solution", "verification", "prompt", "prompt_cut", "text", "prompt_ids", "response_ids", "truncated", "num_steps",
    "step_verdicts", "final_verdict", "format_score", "num_judged",
]  # fmt: skip


def oracle_judgments(rollouts: pd.DataFrame, kind: str, flip_prob: float, seed: int) -> pd.DataFrame:
    """Step verdicts from the task's exact step labels instead of a verifier (TANGO.md §8 study arms).

    ``oracle``: the labels themselves, the ceiling of what any verifier's step rewards can add;
    ``noisy_oracle``: each label flipped independently with probability ``flip_prob`` (seeded), a
    verifier of known step accuracy. The final verdict is the exact outcome. One row per solution,
    with the judge table's columns (no prompt or tokens: nothing was sampled).
    """
    import random

    if kind not in ("oracle", "noisy_oracle"):
        raise ValueError(f"unknown oracle kind '{kind}'; known: oracle, noisy_oracle")
    rng = random.Random(seed)
    rows = []
    for i, (labels, correct) in enumerate(zip(rollouts["step_labels"], rollouts["label_correct"], strict=True)):
        verdicts = None
        if labels is not None:
            verdicts = [bool(x) != (kind == "noisy_oracle" and rng.random() < flip_prob) for x in labels]
        rows.append(
            {
                "solution": i, "verification": 0, "prompt": "", "prompt_cut": False, "text": "",
                "prompt_ids": [], "response_ids": [], "truncated": False,
                "num_steps": 0 if labels is None else len(labels), "step_verdicts": verdicts,
                "final_verdict": bool(correct), "format_score": 1.0,
                "num_judged": 0 if labels is None else len(labels),
            }
        )  # fmt: skip
    return pd.DataFrame(rows, columns=_JUDGE_COLUMNS)


def verifier_prompts(
    cfg: TangoConfig, verifier_model: Path, questions: list[str], parsed: list, texts: list[str]
) -> tuple[list[str], list[bool]]:
    """The verifier's prompts, fitted to ``rollout.max_prompt_tokens`` by cutting the solution's tail (TANGO.md §2).

    Counted with the verifier's own tokenizer, so the engine never has to cut the prompt's start
    (the problem statement). Returns the prompts and a flag per prompt that was cut.
    """
    from tango_steps.models.loading import load_tokenizer
    from tango_steps.rollout import format_prompts
    from tango_steps.tasks.templates import get_template

    template = get_template(cfg.template)
    tok = load_tokenizer(str(verifier_model))

    def count(text: str) -> int:  # as the engine will see it: in the verifier's prompt format
        text = format_prompts(tok, [text], cfg.verifier.prompt_format, "verifier")[0]
        return len(tok(text, add_special_tokens=False)["input_ids"])

    fitted = [
        template.fit_verifier_prompt(q, s, t, count, cfg.rollout.max_prompt_tokens)
        for q, s, t in zip(questions, parsed, texts, strict=True)
    ]
    return [p for p, _ in fitted], [c for _, c in fitted]


# ----------------------------------------------------------------------------------------------
# shards: rollout and judging of a part of the round's prompts, on one device each
# ----------------------------------------------------------------------------------------------


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
) -> ShardResult:
    """Shard ``k`` of ``S`` of a round's sampling (TANGO.md §3): the generator samples the shard's
    prompts, then the verifier judges the shard's own solutions, one engine at a time.

    A solution's verifications depend on that solution only, so a shard needs nothing from the
    others; its prompts are whole engine calls (:func:`shard_range`) seeded by their index in the
    round, so :func:`join_shards` of all S shards equals the unsharded rollout and judge tables.
    """
    k, shards = shard
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


def join_shards(
    cfg: TangoConfig, plan: RoundPlan, parts: list[ShardResult], log: Log = print
) -> tuple[pd.DataFrame, StageResult, pd.DataFrame, StageResult]:
    """The round's rollout and judge tables (and their results) from all its shards, in prompt order:
    equal to what the unsharded :func:`rollout` and :func:`judge` make (TANGO.md §3)."""
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


# ----------------------------------------------------------------------------------------------
# reward
# ----------------------------------------------------------------------------------------------


@dataclass
class GeneratorRewards:
    """The generator's side of a round's rewards (TANGO.md §4).

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
    """The verifier's side of a round's rewards (TANGO.md §5).

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
    """Rewards, advantages and the RL batch of the round's slot (TANGO.md §4-§5).

    Outcome rewards come from the task's verdict in the rollout (one correctness oracle per task),
    step-reward positions from the rollout's ``step_end_tokens``: nothing is parsed or tokenised
    here, and no model library is imported beyond torch for the estimators.
    """
    t0 = time.perf_counter()
    rollouts, judgments, metrics = graded(rollouts, judgments)
    gen: GeneratorRewards | None = None
    ver: VerifierRewards | None = None
    if _is_generator_slot(plan):
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
    """Both tables with the truth columns every reward needs (TANGO.md §4-§5), as copies.

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
    """Step rewards and the generator's per-token advantages with the plan's alpha (TANGO.md §4).

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
    if a.generator_objective == "sft":
        batch = None  # gold solutions instead, tokenised by update() (sft_batch)
        metrics["reward/sft_sequences"] = a.sft_sequences
    return GeneratorRewards(rollouts, batch, alpha, metrics)


def verifier_rewards(
    cfg: TangoConfig, rollouts: pd.DataFrame, judgments: pd.DataFrame, reweighter_state: dict | None
) -> VerifierRewards:
    """r_v, the verifier's GRPO advantages within each solution's N verifications and the class weights (TANGO.md §5).

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
        # groups whose N rewards are all equal carry no GRPO signal (TANGO.md §5)
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


def sft_batch(cfg: TangoConfig, round_idx: int, tokenizer) -> dict[str, Any]:
    """The ``sft`` study arm's generator batch: gold solutions of the round's fresh problems, advantage 1 (TANGO.md §7).

    :func:`update` takes each optimizer step's current policy as the old one for this objective
    (``ratio_to_current``), and the PPO-clip surrogate's gradient at ratio 1 is
    -A * grad log p (TANGO.md §6), so advantage 1 on every gold token with ``kl_coef`` and
    ``entropy_coef`` 0 is exactly the SFT (token-mean negative log-likelihood) gradient: continued SFT
    runs through the same update code, checkpoints and RNG handling as RL. ``algorithm.sft_sequences``
    gold solutions are split over ``generator_update.optimizer_steps`` optimizer steps; the study sets
    both so that the arm uses the CPU seconds of ``tango``'s RL.
    """
    from tango_steps.rollout import prepare_prompts
    from tango_steps.tasks.templates import get_template

    template = get_template(cfg.template)
    problems = round_problems(cfg, round_idx, cfg.algorithm.sft_sequences)
    prompts = [template.generator_prompt(p.question) for p in problems]
    prompt_ids, _ = prepare_prompts(
        tokenizer, prompts, cfg.rollout.max_prompt_tokens, cfg.rollout.on_long_prompt, cfg.generator.prompt_format
    )
    responses = [
        tokenizer(p.gold_solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for p in problems
    ]
    return {
        "prompt_ids": [list(x) for x in prompt_ids],
        "response_ids": responses,
        "advantages": [[1.0] * len(r) for r in responses],
        "sample_weights": None,
    }


# ----------------------------------------------------------------------------------------------
# update
# ----------------------------------------------------------------------------------------------


def update(
    cfg: TangoConfig,
    plan: RoundPlan,
    role: str,
    ckpt: Path,
    reference: Path,
    batch: dict[str, Any] | None,
    out_dir: Path,
    log: Log = print,
    node: tuple[int, int, str] | None = None,
) -> dict[str, float]:
    """One RL update of ``role`` ("generator" or "verifier") from ``ckpt`` into ``out_dir`` (TANGO.md §6).

    ``reference`` is the initial checkpoint: its ``model/`` is the frozen KL reference (full
    fine-tuning) or the LoRA base. ``batch`` is :func:`reward`'s; for the ``sft`` objective it is
    None and the round's gold solutions are tokenised here (:func:`sft_batch`).

    ``node=(index, nodes, main_ip)``: this machine is node ``index`` of the ``update.nodes`` machines
    of one update (Metaflow ``@parallel``): it starts its ``update.processes`` processes of the one
    process group; node 0 holds global rank 0, which writes ``out_dir`` and returns the metrics (the
    other nodes return an empty dict and write nothing).
    """
    from tango_steps.models.loading import load_tokenizer
    from tango_steps.training.distributed import read_metrics, run_workers, torchrun_command, write_spec
    from tango_steps.training.update import RLBatch, rl_update, update_settings

    if role not in ("generator", "verifier"):
        raise ValueError(f"role must be 'generator' or 'verifier', got {role!r}")
    ucfg = cfg.generator_update if role == "generator" else cfg.verifier_update
    sampling = cfg.generator_sampling if role == "generator" else cfg.verifier_sampling
    settings = update_settings(ucfg, temperature=sampling.temperature or 1.0, seed=cfg.seed)
    if role == "generator" and cfg.algorithm.generator_objective == "sft":
        settings = replace(settings, ratio_to_current=True)  # NLL on every step (sft_batch)
        batch = sft_batch(cfg, plan.round_idx, load_tokenizer(str(ckpt / "model")))
    if batch is None:
        raise ValueError(f"no {role} batch for round {plan.round_idx}: the reward stage made none")
    rl_batch = RLBatch(**batch)
    log(f"{role} update: {len(rl_batch)} sequences, micro-batch {settings.micro_batch_size}")
    ref_model = str(reference / "model")
    lora_base = ref_model if settings.lora is not None else None
    if node is None:
        try:
            m = rl_update(ckpt, rl_batch, settings, out_dir, log=log, reference_model=ref_model, lora_base=lora_base)
        except FloatingPointError as e:  # nothing was written: name the round and the model (issue #17)
            raise FloatingPointError(f"round {plan.round_idx}, {role} update: {e}") from e
    else:
        index, nodes, main_ip = node
        if nodes != ucfg.nodes:
            raise ValueError(f"{role}_update.nodes is {ucfg.nodes} but the update runs on {nodes} nodes")
        with tempfile.TemporaryDirectory(prefix=".update-") as tmp:
            spec = write_spec(Path(tmp), ckpt, rl_batch, settings, out_dir, ref_model, lora_base)
            log(f"{role} update: node {index} of {nodes}, {ucfg.processes} processes here ({settings.strategy})")
            cmd = torchrun_command(spec, ucfg.processes, nodes, index, main_ip)
            run_workers(cmd, log, f"node {index} of the {nodes}-node update", Path(out_dir))
            if index > 0:
                return {}
            m = read_metrics(spec)
    log(
        f"{role} update: loss {m['loss']:.4f}, kl {m.get('kl', 0.0):.5f}, "
        f"grad norm {m['grad_norm']:.3f}, {m['seconds']:.1f} s"
    )
    return {f"{role}_update/{k}": v for k, v in m.items()}


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def evaluate(
    cfg: TangoConfig, generator_ckpt: Path, verifier_ckpt: Path, log: Log = print
) -> tuple[pd.DataFrame, StageResult]:
    """Held-out evaluation (TANGO.md §7-§8): generator greedy pass@1; verifier outcome and process metrics.

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
    with _engine(cfg, "generator", _servable(generator_ckpt), cfg.seed) as engine:
        comps = _generate(
            engine, [template.generator_prompt(p.question) for p in problems], greedy, "evaluate generator", log
        )
    texts = [c[0].text for c in comps]
    parsed = [parse_solution(t) for t in texts]
    checks = [task.check(p, t) for p, t in zip(problems, texts, strict=True)]
    verdicts, vcut = judge_texts(cfg, verifier_ckpt, [p.question for p in problems], texts, parsed, log)
    compute = time.perf_counter() - t0
    rows = []
    for p, t, s, ch, c in zip(problems, texts, parsed, checks, comps, strict=True):
        rows.append(
            {
                "prompt_id": p.id, "question": p.question, "gold": p.answer, "text": t,
                "truncated": c[0].truncated, "length": len(c[0].token_ids), "num_steps": s.num_steps,
                "correct": ch.correct, "first_error": ch.first_error,
                "step_labels": None if ch.step_labels is None else list(ch.step_labels),
            }
        )  # fmt: skip
    df = with_verdicts(pd.DataFrame(rows), verdicts)
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
        metrics, cfg.evaluation.collapse_majority, cfg.evaluation.collapse_min_format
    )
    if metrics["eval/verifier_alarm"]:
        log(f"evaluate: !!! VERIFIER ALARM: {metrics['eval/verifier_alarm']}")
    log(
        f"evaluate: generator accuracy {metrics['eval/generator_accuracy']:.3f}, verifier F1 "
        f"{metrics['eval/verifier_f1']:.3f}, process F1 {metrics['eval/verifier_process_f1']:.3f} ({compute:.1f} s)"
    )
    return df, StageResult(metrics, compute)


def update_step(plan: RoundPlan, cfg: TangoConfig | None = None) -> str:
    """The step a round goes to after ``reward``: the update it makes, or :func:`after_update`'s step
    when it updates nothing. With ``cfg`` given, an update on several nodes (``update.nodes`` > 1)
    goes to ``split_nodes`` (TangoRoundFlow's ``@parallel`` path).

    The schedule gives each round one slot (TANGO.md §3), so at most one model is updated.
    """
    if plan.update_generator and plan.update_verifier:
        raise ValueError(f"round {plan.round_idx} plans both updates; a round has one slot")
    role = "verifier" if plan.update_verifier else "generator" if plan.update_generator else None
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
    """One round's metrics for TangoFlow's table (TANGO.md §9): its place in the run, then each stage's."""
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
    """The plan as a plain dict for artifacts."""
    return asdict(plan)


def plan_from_dict(plan: dict[str, Any]) -> RoundPlan:
    """The plan back from its artifact dict."""
    return RoundPlan(**plan)


def judge_texts(
    cfg: TangoConfig, verifier_ckpt: Path, questions: list[str], texts: list[str], parsed: list, log: Log = print
) -> tuple[list, list[bool]]:
    """The verifier's greedy verification of each solution text (TANGO.md §2), as held-out evaluation judges.

    ``parsed``: each text's :func:`~tango_steps.method.formats.parse_solution`. Returns the parsed
    verifications and, per solution, whether its prompt lost the solution's tail.
    """
    from tango_steps.method.formats import parse_verification
    from tango_steps.rollout import SamplingSettings

    vgreedy = SamplingSettings(n=1, temperature=0.0, max_tokens=cfg.verifier_sampling.max_tokens)
    vprompts, vcut = verifier_prompts(cfg, verifier_ckpt / "model", questions, parsed, texts)
    with _engine(cfg, "verifier", _servable(verifier_ckpt), cfg.seed) as engine:
        vcomps = _generate(engine, vprompts, vgreedy, "evaluate verifier", log)
    verdicts = [parse_verification(c[0].text, s.num_steps, s.well_formed) for c, s in zip(vcomps, parsed, strict=True)]
    return verdicts, vcut


def with_verdicts(table: pd.DataFrame, verdicts: list) -> pd.DataFrame:
    """``table`` (one solution per row) with the verifier's columns of these verifications (TANGO.md §2, §8)."""
    df = table.copy()
    df["final_verdict"] = [v.final_verdict for v in verdicts]
    df["step_verdicts"] = [v.step_verdicts for v in verdicts]
    df["predicted_first_error"] = [predicted_first_error(v.step_verdicts) for v in verdicts]
    df["verifier_format_score"] = [v.format_score for v in verdicts]
    return df


def rejudge(cfg: TangoConfig, verifier_ckpt: Path, eval_table: pd.DataFrame, log: Log = print) -> dict[str, Any]:
    """Another verifier's held-out metrics on the SAME solutions as ``eval_table`` (TANGO.md §5, §8).

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

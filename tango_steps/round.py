"""The stages of one Tango round, as plain functions the flows call (TANGO.md §3-§6).

One round is one global step of TANGO.md §3: a fresh batch of prompts and (at most) one optimizer
step on the generator or the verifier, as :func:`~tango_steps.schedule.plan_round` says.

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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from tango_steps.config import TangoConfig
from tango_steps.schedule import RoundPlan, evaluates, plan_round, total_generator_updates

Log = Callable[[str], None]
FAIL_ENV = "TANGO_FAIL_AT"  # test-only switch, "<round>:<stage>", e.g. "2:judge" (see README)
HELDOUT_SEED_OFFSET = 10_000  # held-out problems differ from the warm-up's stopping set


def maybe_fail(round_idx: int, stage: str) -> None:
    """Raise when ``$TANGO_FAIL_AT`` names this round and stage: the test-only failure switch (TANGO.md §9 resume)."""
    target = os.environ.get(FAIL_ENV, "")
    if target and target == f"{round_idx}:{stage}":
        raise RuntimeError(f"failure injected by {FAIL_ENV}={target} (test-only switch)")


def round_plan(cfg: TangoConfig, round_idx: int) -> RoundPlan:
    """The TANGO.md §3 plan of round ``round_idx`` under ``cfg.schedule``."""
    s = cfg.schedule
    plan = plan_round(
        round_idx, s.verifier_warmup_rounds, s.generator_per_verifier, s.train_generator, s.train_verifier
    )
    return replace(plan, evaluate=evaluates(round_idx, cfg.evaluation.every, cfg.rounds, cfg.evaluation.last))


def round_problems(cfg: TangoConfig, round_idx: int, n: int):
    """The round's fresh training prompts (TANGO.md §3), a pure function of (seed, round): the data cursor."""
    from tango_steps.tasks import get_task

    task = get_task(cfg.task.name, **cfg.task.params)
    return task.problems(n, "train", seed=cfg.seed * 1_000_003 + round_idx)


def heldout_problems(cfg: TangoConfig):
    """The held-out evaluation problems (TANGO.md §7): the same in every round, seed and variant of a task.

    They depend on the task and ``evaluation.heldout_problems`` only, never on ``seed``, so runs with
    different seeds (and every arm of a study) are scored on the same problems, paired per problem.
    """
    from tango_steps.tasks import get_task

    task = get_task(cfg.task.name, **cfg.task.params)
    return task.problems(cfg.evaluation.heldout_problems, "heldout", seed=HELDOUT_SEED_OFFSET)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (TANGO.md §9; each Metaflow step is its own process)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def progress_bar(done: int, total: int, width: int = 20) -> str:
    """``[#####-----] 128/256``: a one-line progress bar for task logs (TANGO.md §3 long steps)."""
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


def _engine(cfg: TangoConfig, model_dir: Path, seed: int):
    from tango_steps.rollout import engine_from_config

    return engine_from_config(cfg.rollout, str(model_dir), seed=seed)


def _generate(engine, prompts: list[str], sampling, what: str, log: Log):
    """Generate in chunks with a progress line per chunk (counts and rate)."""
    from tango_steps.rollout import SamplingSettings

    out = []
    chunk = max(1, 256 // max(1, sampling.n))
    t0 = time.perf_counter()
    for i in range(0, len(prompts), chunk):
        s = SamplingSettings(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed + i,
        )
        out.extend(engine.generate(prompts[i : i + chunk], s))
        done = min(i + chunk, len(prompts)) * sampling.n
        dt = time.perf_counter() - t0
        log(f"{what}: {progress_bar(done, len(prompts) * sampling.n)} samples, {done / max(dt, 1e-9):.1f} samples/s")
    return out


def _sample(cfg: TangoConfig, ckpt: Path, prompts: list[str], scfg, n: int, round_idx: int, what: str, log: Log):
    """Sample ``n`` completions per prompt from a checkpoint; return them with the prompt ids the engine used.

    The ids come from the engine's own tokenizer and prompt-length policy, so the RL batch trains on
    exactly the prompts that were sampled from, truncation included (TANGO.md §3, §6).
    """
    from tango_steps.rollout import SamplingSettings, prepare_prompts

    seed = _seed(cfg, round_idx, what)
    with _engine(cfg, ckpt / "model", seed) as engine:
        sampling = SamplingSettings(
            n=n, temperature=scfg.temperature, top_p=scfg.top_p, max_tokens=scfg.max_tokens, seed=seed
        )
        comps = _generate(engine, prompts, sampling, what, log)
        prompt_ids, _ = prepare_prompts(
            engine.tokenizer, prompts, cfg.rollout.max_prompt_tokens, cfg.rollout.on_long_prompt
        )
    return comps, prompt_ids


def rollout(
    cfg: TangoConfig, plan: RoundPlan, generator_ckpt: Path, log: Log = print
) -> tuple[pd.DataFrame, StageResult]:
    """The generator's samples for this round (TANGO.md §3), one row per solution.

    Generator rounds: ``batch.generator_prompts`` prompts x M = ``generator_sampling.n``; verifier
    rounds: ``batch.verifier_prompts`` prompts x 1 solution. Columns: ``prompt_id``, ``prompt_index``,
    ``sample``, ``question``, ``gold``, ``prompt``, ``text``, ``prompt_ids``, ``response_ids``,
    ``finish_reason``, ``truncated``, ``steps``, ``answer``, ``format_score``, ``well_formed``, and the
    embedded task's exact labels ``label_correct``, ``step_labels``, ``first_error``.
    """
    from tango_steps.formats import parse_solution
    from tango_steps.tasks import get_task
    from tango_steps.templates import get_template

    generator_round = _is_generator_slot(plan)
    n_prompts = cfg.batch.generator_prompts if generator_round else cfg.batch.verifier_prompts
    n = cfg.generator_sampling.n if generator_round else 1
    task = get_task(cfg.task.name, **cfg.task.params)
    template = get_template(cfg.template)
    problems = round_problems(cfg, plan.round_idx, n_prompts)
    prompts = [template.generator_prompt(p.question) for p in problems]
    t0 = time.perf_counter()
    comps, prompt_ids = _sample(cfg, generator_ckpt, prompts, cfg.generator_sampling, n, plan.round_idx, "rollout", log)
    compute = time.perf_counter() - t0
    rows = []
    for i, (p, prompt, cs) in enumerate(zip(problems, prompts, comps, strict=True)):
        for j, c in enumerate(cs):
            parsed = parse_solution(c.text)
            check = task.check(p, c.text)
            rows.append(
                {
                    "prompt_id": p.id,
                    "prompt_index": i,
                    "sample": j,
                    "question": p.question,
                    "gold": p.answer,
                    "prompt": prompt,
                    "text": c.text,
                    "prompt_ids": list(prompt_ids[i]),
                    "response_ids": list(c.token_ids),
                    "finish_reason": c.finish_reason,
                    "truncated": c.truncated,
                    "steps": list(parsed.steps),
                    "answer": parsed.answer,
                    "format_score": parsed.format_score,
                    "well_formed": parsed.well_formed,
                    "label_correct": check.correct,
                    "step_labels": None if check.step_labels is None else list(check.step_labels),
                    "first_error": check.first_error,
                }
            )
    df = pd.DataFrame(rows)
    tokens = int(sum(len(r) for r in df["response_ids"]))
    metrics = {
        "rollout/samples": len(df),
        "rollout/prompts": len(problems),
        "rollout/tokens": tokens,
        "rollout/tokens_per_s": tokens / max(compute, 1e-9),
        "rollout/mean_length": tokens / max(len(df), 1),
        "rollout/truncated_frac": float(df["truncated"].mean()),
        "rollout/format_ok_frac": float(df["well_formed"].mean()),
        "rollout/no_steps_frac": float((df["steps"].map(len) == 0).mean()),
        "rollout/label_accuracy": float(df["label_correct"].mean()),
    }
    log(
        f"rollout: {len(df)} samples, {tokens} tokens in {compute:.1f} s; "
        f"exact accuracy {metrics['rollout/label_accuracy']:.3f}"
    )
    return df, StageResult(metrics, compute)


def _is_generator_slot(plan: RoundPlan) -> bool:
    return plan.slot == "generator"


# ----------------------------------------------------------------------------------------------
# judge
# ----------------------------------------------------------------------------------------------


def judge(
    cfg: TangoConfig, plan: RoundPlan, verifier_ckpt: Path, rollouts: pd.DataFrame, log: Log = print
) -> tuple[pd.DataFrame, StageResult]:
    """The verifier's verdicts on the round's solutions (TANGO.md §2-§3), one row per verification.

    Generator rounds: 1 verification per solution (its step verdicts are the step rewards); verifier
    rounds: N = ``verifier_sampling.n`` per solution (the GRPO group of TANGO.md §5). With
    ``algorithm.step_rewards`` false and a generator round, nothing is judged (vanilla GRPO).
    Columns: ``solution`` (row of ``rollouts``), ``verification``, ``prompt``, ``text``, ``prompt_ids``,
    ``response_ids``, ``truncated``, ``num_steps``, ``step_verdicts``, ``final_verdict``,
    ``format_score``, ``num_judged``.
    """
    from tango_steps.formats import parse_solution, parse_verification

    generator_round = _is_generator_slot(plan)
    if generator_round and not cfg.algorithm.step_rewards:
        log("judge: skipped (algorithm.step_rewards is false: outcome reward only)")
        return pd.DataFrame(columns=_JUDGE_COLUMNS), StageResult({"judge/skipped": 1}, 0.0)
    if generator_round and cfg.algorithm.step_verdicts != "verifier":
        df = oracle_judgments(rollouts, cfg.algorithm.step_verdicts, cfg.algorithm.oracle_flip_prob,
                              _seed(cfg, plan.round_idx, "oracle"))  # fmt: skip
        log(f"judge: {cfg.algorithm.step_verdicts} step verdicts from the task's exact labels (no verifier)")
        metrics = {"judge/oracle": 1, **step_verdict_histogram(list(df["step_verdicts"]))}
        return df, StageResult(metrics, 0.0)
    n = 1 if generator_round else cfg.verifier_sampling.n
    parsed = [parse_solution(t) for t in rollouts["text"]]
    questions, texts = list(rollouts["question"]), list(rollouts["text"])
    prompts, cut = verifier_prompts(cfg, verifier_ckpt / "model", questions, parsed, texts)
    t0 = time.perf_counter()
    comps, prompt_ids = _sample(cfg, verifier_ckpt, prompts, cfg.verifier_sampling, n, plan.round_idx, "judge", log)
    compute = time.perf_counter() - t0
    rows = []
    for i, (s, prompt, cs) in enumerate(zip(parsed, prompts, comps, strict=True)):
        for j, c in enumerate(cs):
            v = parse_verification(c.text, s.num_steps, s.well_formed)
            rows.append(
                {
                    "solution": i,
                    "verification": j,
                    "prompt": prompt,
                    "prompt_cut": cut[i],
                    "text": c.text,
                    "prompt_ids": list(prompt_ids[i]),
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
    tokens = int(sum(len(r) for r in df["response_ids"]))
    metrics = {
        "judge/verifications": len(df),
        "judge/tokens": tokens,
        "judge/tokens_per_s": tokens / max(compute, 1e-9),
        "judge/format_ok_frac": float((df["format_score"] == 1.0).mean()),
        "judge/step_count_mismatch_frac": float(df["step_verdicts"].isna().mean()),
        "judge/no_final_verdict_frac": float(df["final_verdict"].isna().mean()),
        "judge/truncated_frac": float(df["truncated"].mean()),
        "judge/prompt_cut": int(sum(cut)),
        **step_verdict_histogram(list(df["step_verdicts"])),
    }
    if any(cut):
        log(f"judge: {sum(cut)} of {len(cut)} verifier prompts over rollout.max_prompt_tokens: solution tail cut")
    log(f"judge: {len(df)} verifications, {tokens} tokens in {compute:.1f} s")
    return df, StageResult(metrics, compute)


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
    from tango_steps.modeling import load_tokenizer
    from tango_steps.templates import get_template

    template = get_template(cfg.template)
    tok = load_tokenizer(str(verifier_model))

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    fitted = [
        template.fit_verifier_prompt(q, s, t, count, cfg.rollout.max_prompt_tokens)
        for q, s, t in zip(questions, parsed, texts, strict=True)
    ]
    return [p for p, _ in fitted], [c for _, c in fitted]


def step_verdict_histogram(step_verdicts: list[list[bool] | None]) -> dict[str, float]:
    """Where the verifier puts the first INCORRECT step, as fractions of verifications (TANGO.md §4 step rewards).

    Keys ``judge/first_incorrect_none`` (every step CORRECT), ``judge/first_incorrect_0`` ..
    ``_3``, ``judge/first_incorrect_4plus`` and ``judge/step_verdicts_unusable`` (count != K:
    no step reward). A verifier that only ever flags the last step, or never any, shows here.
    """
    keys = ["none", "0", "1", "2", "3", "4plus", "unusable"]
    counts = dict.fromkeys(keys, 0)
    for v in step_verdicts:
        if v is None:
            counts["unusable"] += 1
            continue
        first = next((k for k, ok in enumerate(v) if not ok), None)
        counts["none" if first is None else str(first) if first < 4 else "4plus"] += 1
    n = max(len(step_verdicts), 1)
    return {
        f"judge/{'step_verdicts_unusable' if k == 'unusable' else 'first_incorrect_' + k}": c / n
        for k, c in counts.items()
    }


# ----------------------------------------------------------------------------------------------
# reward
# ----------------------------------------------------------------------------------------------


def reward(
    cfg: TangoConfig,
    plan: RoundPlan,
    rollouts: pd.DataFrame,
    judgments: pd.DataFrame,
    tokenizer_dir: Path,
    reweighter_state: dict | None,
    log: Log = print,
) -> dict[str, Any]:
    """Rewards, advantages and the RL batches of the round (TANGO.md §4-§5).

    Returns a dict with ``rollouts`` and ``judgments`` (copies with reward/advantage columns),
    ``generator_batch`` / ``verifier_batch`` (:class:`~tango_steps.training.RLBatch` as a dict, or
    None when the round has no such update slot), ``reweighter`` (new state), ``alpha`` and ``metrics``.
    """
    import torch

    from tango_steps.advantages import (
        VerifierReweighter,
        alpha_schedule,
        collate_steps,
        compute_generator_advantages,
        compute_verifier_advantages,
    )
    from tango_steps.formats import parse_solution
    from tango_steps.modeling import load_tokenizer
    from tango_steps.rewards import outcome_rewards, sampled_step_end_tokens, step_rewards, verifier_reward

    t0 = time.perf_counter()
    rollouts = rollouts.copy()
    judgments = judgments.copy()
    # The task's own verdict from the rollout (Task.check): one correctness oracle per task.
    r_out, counts = outcome_rewards(
        list(rollouts["label_correct"]), list(rollouts["truncated"]), list(rollouts["answer"].notna())
    )
    rollouts["outcome_reward"] = r_out
    rollouts["correct"] = [r > 0 for r in r_out]
    metrics: dict[str, Any] = {f"reward/{k}": v for k, v in counts.items()}
    metrics["reward/outcome_mean"] = float(sum(r_out) / max(len(r_out), 1))
    out: dict[str, Any] = {"generator_batch": None, "verifier_batch": None, "reweighter": reweighter_state}
    generator_round = _is_generator_slot(plan)
    use_steps = cfg.algorithm.step_rewards

    # Verifier-side metrics of whatever was judged: agreement with the graded outcome.
    if len(judgments):
        truth = rollouts["correct"].to_numpy()[judgments["solution"].to_numpy()]
        verdict = judgments["final_verdict"]
        judgments["solution_correct"] = truth
        judgments["verdict_right"] = [v is not None and bool(v) == bool(t) for v, t in zip(verdict, truth, strict=True)]
        metrics["judge/verdict_accuracy"] = float(judgments["verdict_right"].mean())

    if generator_round:
        alpha = 0.0
        if use_steps:
            t_g = total_generator_updates(
                cfg.rounds, cfg.schedule.verifier_warmup_rounds, cfg.schedule.generator_per_verifier
            )
            a = cfg.algorithm
            alpha = alpha_schedule(plan.generator_step, max(t_g, 1), a.alpha0, a.alpha_min, a.alpha_schedule)
        tok = load_tokenizer(str(tokenizer_dir))
        srewards: list[list[float] | None] = []
        sindex: list[list[int] | None] = []
        verdicts = {}
        if use_steps and len(judgments):
            verdicts = dict(zip(judgments["solution"], judgments["step_verdicts"], strict=True))
        for i, text in enumerate(rollouts["text"]):
            sr = step_rewards(verdicts.get(i)) if use_steps else None
            if sr:
                spans = parse_solution(text).step_spans
                srewards.append(sr)
                sindex.append(sampled_step_end_tokens(tok, list(rollouts["response_ids"].iloc[i]), spans))
            else:
                srewards.append(None)
                sindex.append(None)
        lengths = [len(r) for r in rollouts["response_ids"]]
        width = max([*lengths, 1])
        resp_mask = torch.zeros(len(lengths), width)
        for i, n in enumerate(lengths):
            resp_mask[i, :n] = 1
        rw, smask, sidx = collate_steps(srewards, sindex)
        adv, gm = compute_generator_advantages(
            torch.tensor(r_out, dtype=torch.float32),
            rw,
            smask,
            sidx,
            resp_mask,
            torch.tensor(list(rollouts["prompt_index"]), dtype=torch.long),
            alpha,
            cfg.algorithm.estimator,
            cfg.algorithm.rloo_step_scale,
        )
        rollouts["step_rewards"] = srewards
        rollouts["advantage_first_token"] = [float(adv[i, 0]) if n else 0.0 for i, n in enumerate(lengths)]
        rollouts["advantage_mean"] = [float(adv[i, :n].mean()) if n else 0.0 for i, n in enumerate(lengths)]
        metrics.update(gm)
        metrics["reward/alpha"] = alpha
        groups = rollouts.groupby("prompt_index")["outcome_reward"].agg(lambda s: s.nunique() > 1)
        metrics["reward/groups_with_signal_frac"] = float(groups.mean())
        out["alpha"] = alpha
        out["generator_batch"] = {
            "prompt_ids": [list(x) for x in rollouts["prompt_ids"]],
            "response_ids": [list(x) for x in rollouts["response_ids"]],
            "advantages": [adv[i, :n].tolist() for i, n in enumerate(lengths)],
            "sample_weights": None,
        }
        if cfg.algorithm.generator_objective == "sft":
            out["generator_batch"] = sft_batch(cfg, plan.round_idx, tok)
            metrics["reward/sft_sequences"] = len(out["generator_batch"]["response_ids"])
    else:
        out["alpha"] = None
        truth = torch.tensor(list(judgments["solution_correct"]), dtype=torch.bool)
        group = torch.tensor(list(judgments["solution"]), dtype=torch.long)
        r_v = [
            verifier_reward(v, t, f, cfg.algorithm.gamma) if not tr else 0.0
            for v, t, f, tr in zip(
                judgments["final_verdict"], judgments["solution_correct"], judgments["format_score"],
                judgments["truncated"], strict=True,
            )
        ]  # fmt: skip
        adv = compute_verifier_advantages(torch.tensor(r_v, dtype=torch.float32), group)
        rw = (
            VerifierReweighter.from_dict({**reweighter_state, "power": cfg.algorithm.reweight_power})
            if reweighter_state
            else VerifierReweighter(decay=cfg.algorithm.reweight_decay, power=cfg.algorithm.reweight_power)
        )
        weights = rw(truth, group)
        judgments["verifier_reward"] = r_v
        judgments["advantage"] = adv.tolist()
        judgments["sample_weight"] = weights.tolist()
        out["reweighter"] = rw.to_dict()
        metrics.update(
            {
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
        )
        out["verifier_batch"] = {
            "prompt_ids": [list(x) for x in judgments["prompt_ids"]],
            "response_ids": [list(x) for x in judgments["response_ids"]],
            "advantages": [[float(a)] * len(r) for a, r in zip(adv.tolist(), judgments["response_ids"], strict=True)],
            "sample_weights": weights.tolist(),
        }
    out["rollouts"], out["judgments"], out["metrics"] = rollouts, judgments, metrics
    compute = time.perf_counter() - t0
    out["compute_seconds"] = compute
    log(f"reward: outcome mean {metrics['reward/outcome_mean']:.3f}, alpha {out['alpha']}, {compute:.1f} s")
    return out


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
    from tango_steps.templates import get_template

    template = get_template(cfg.template)
    problems = round_problems(cfg, round_idx, cfg.algorithm.sft_sequences)
    prompts = [template.generator_prompt(p.question) for p in problems]
    prompt_ids, _ = prepare_prompts(tokenizer, prompts, cfg.rollout.max_prompt_tokens, cfg.rollout.on_long_prompt)
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
    role: str,
    ckpt: Path,
    reference: Path,
    batch: dict[str, Any],
    out_dir: Path,
    extra_state: dict | None = None,
    log: Log = print,
) -> dict[str, float]:
    """One RL update of ``role`` ("generator" or "verifier") from ``ckpt`` into ``out_dir`` (TANGO.md §6).

    ``reference`` is the initial checkpoint: its ``model/`` is the frozen KL reference (full
    fine-tuning) or the LoRA base.
    """
    from tango_steps.training import RLBatch, rl_update

    if role not in ("generator", "verifier"):
        raise ValueError(f"role must be 'generator' or 'verifier', got {role!r}")
    ucfg = cfg.generator_update if role == "generator" else cfg.verifier_update
    sampling = cfg.generator_sampling if role == "generator" else cfg.verifier_sampling
    settings = ucfg.settings(temperature=sampling.temperature or 1.0, seed=cfg.seed)
    if role == "generator" and cfg.algorithm.generator_objective == "sft":
        settings = replace(settings, ratio_to_current=True)  # NLL on every step (sft_batch)
    rl_batch = RLBatch(**batch)
    log(f"{role} update: {len(rl_batch)} sequences, micro-batch {settings.micro_batch_size}")
    ref_model = str(reference / "model")
    m = rl_update(
        ckpt,
        rl_batch,
        settings,
        out_dir,
        extra_state=extra_state,
        log=log,
        reference_model=ref_model,
        lora_base=ref_model if settings.lora is not None else None,
    )
    log(
        f"{role} update: loss {m['loss']:.4f}, kl {m.get('kl', 0.0):.5f}, "
        f"grad norm {m['grad_norm']:.3f}, {m['seconds']:.1f} s"
    )
    return {f"{role}_update/{k}": v for k, v in m.items()}


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def binary_metrics(pred: list[bool | None], truth: list[bool], prefix: str) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision, recall, F1 with positive = solution correct (TANGO.md §8).

    A missing prediction (None, unparseable verdict) counts as INCORRECT (TANGO.md §2).
    """
    p = [bool(x) if x is not None else False for x in pred]
    tp = sum(a and b for a, b in zip(p, truth, strict=True))
    fp = sum(a and not b for a, b in zip(p, truth, strict=True))
    fn = sum((not a) and b for a, b in zip(p, truth, strict=True))
    tn = sum((not a) and (not b) for a, b in zip(p, truth, strict=True))
    n = max(len(p), 1)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {
        f"{prefix}accuracy": (tp + tn) / n,
        f"{prefix}balanced_accuracy": (rec + tnr) / 2,
        f"{prefix}precision": prec,
        f"{prefix}recall": rec,
        f"{prefix}f1": f1,
    }


def process_f1(predicted_first_error: list[int], true_first_error: list[int]) -> dict[str, float]:
    """ProcessBench protocol (TANGO.md §8): F1 of the accuracies on erroneous and on correct samples.

    A sample is erroneous when its true first error is >= 0; its prediction is right when it names
    the same step. A correct sample (-1) is right when the prediction is -1. The harmonic mean of the
    two accuracies is the process-level F1 (0 when either class is empty or either accuracy is 0).
    """
    err = [(p, t) for p, t in zip(predicted_first_error, true_first_error, strict=True) if t >= 0]
    cor = [(p, t) for p, t in zip(predicted_first_error, true_first_error, strict=True) if t < 0]
    acc_err = sum(p == t for p, t in err) / len(err) if err else float("nan")
    acc_cor = sum(p == -1 for p, _ in cor) / len(cor) if cor else float("nan")
    f1 = 2 * acc_err * acc_cor / (acc_err + acc_cor) if err and cor and acc_err + acc_cor > 0 else 0.0
    return {"process_acc_erroneous": acc_err, "process_acc_correct": acc_cor, "process_f1": f1}


NO_PREDICTION = -2  # unusable step verdicts (count != K): matches neither a step index nor "none" (-1)


def predicted_first_error(step_verdicts: list[bool] | None) -> int:
    """The verifier's predicted first wrong step (ProcessBench protocol, TANGO.md §8).

    The index of its first INCORRECT step verdict, -1 when every step is CORRECT, and
    :data:`NO_PREDICTION` when the verdicts are unusable (missing, or their count differs from K):
    an unusable verification predicts nothing, so it is wrong on every solution, correct ones included.
    """
    if step_verdicts is None:
        return NO_PREDICTION
    return next((k for k, ok in enumerate(step_verdicts) if not ok), -1)


def process_metrics(eval_table: pd.DataFrame) -> dict[str, Any]:
    """Process-level F1 of one evaluation table (TANGO.md §8, ProcessBench protocol), prefixed ``eval/verifier_``.

    Scored on the solutions with exact step labels whose error is a step (correct ones, and wrong
    ones with a first wrong step); a wrong solution whose steps are all right (it stopped early) and
    a task without step labels are left out, counted in ``eval/process_excluded``.
    """
    usable = [
        (pf, fe)
        for pf, fe, c, lab in zip(
            eval_table["predicted_first_error"], eval_table["first_error"], eval_table["correct"],
            eval_table["step_labels"], strict=True,
        )
        if lab is not None and (c or fe >= 0)
    ]  # fmt: skip
    pm = process_f1([u[0] for u in usable], [u[1] for u in usable])
    return {**{f"eval/verifier_{k}": v for k, v in pm.items()}, "eval/process_excluded": len(eval_table) - len(usable)}


def evaluate(
    cfg: TangoConfig, generator_ckpt: Path, verifier_ckpt: Path, log: Log = print
) -> tuple[pd.DataFrame, StageResult]:
    """Held-out evaluation (TANGO.md §7-§8): generator greedy pass@1; verifier outcome and process metrics.

    The verifier judges (greedily) the generator's greedy held-out solutions; truth comes from the
    embedded task's exact labels. For the process metric, a solution whose outcome is wrong while
    every step is right (it stopped early) has no first wrong step: it is left out and counted, as
    is every solution of a task without step labels (``dataset``).
    """
    from tango_steps.formats import parse_solution
    from tango_steps.rollout import SamplingSettings
    from tango_steps.tasks import get_task
    from tango_steps.templates import get_template

    task = get_task(cfg.task.name, **cfg.task.params)
    template = get_template(cfg.template)
    problems = heldout_problems(cfg)
    t0 = time.perf_counter()
    greedy = SamplingSettings(n=1, temperature=0.0, max_tokens=cfg.evaluation.max_tokens)
    with _engine(cfg, generator_ckpt / "model", cfg.seed) as engine:
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


def verifier_alarm(metrics: dict[str, Any], majority: float = 0.95, min_format: float = 0.5) -> str | None:
    """A degenerate verifier, in words, or None (TANGO.md §5: without reweighting it collapses to INCORRECT).

    Raised when ``majority`` or more of its held-out final verdicts are one class (an unparseable
    verdict counts as INCORRECT, TANGO.md §2) or its held-out format rate falls below ``min_format``.
    """
    problems = []
    says_correct = metrics.get("eval/verifier_says_correct_frac")
    if says_correct is not None and max(says_correct, 1 - says_correct) >= majority:
        cls = "CORRECT" if says_correct >= 0.5 else "INCORRECT (or unparseable)"
        problems.append(f"{max(says_correct, 1 - says_correct):.0%} of held-out verdicts are {cls}")
    fmt = metrics.get("eval/verifier_format_ok_frac")
    if fmt is not None and fmt < min_format:
        problems.append(f"only {fmt:.0%} of its held-out verifications are well-formed")
    return "verifier collapse: " + "; ".join(problems) if problems else None


def hacking_diagnostics(eval_table: pd.DataFrame) -> dict[str, float]:
    """Reward-hacking diagnostics of one evaluation (TANGO.md §9): is the verifier right for the right reasons?

    - verifier accuracy per class: on the correct solutions (``verifier_acc_on_correct``) and on
      the wrong ones (``verifier_acc_on_wrong``): a verifier that says CORRECT to everything scores
      1 and 0;
    - ``verifier_right_verdict_wrong_steps``: among solutions whose final verdict is right and whose
      step verdicts are usable, the fraction whose step verdicts differ from the exact step labels;
    - ``verifier_step_mismatch_frac``: verifications whose number of judged steps differs from K.
    Response-length drift and solutions without steps are in the generator's metrics.
    """
    truth = eval_table["correct"].astype(bool)
    verdict = eval_table["final_verdict"].map(lambda v: bool(v) if v is not None else False)
    right = verdict == truth
    usable = eval_table["step_verdicts"].map(lambda v: v is not None)
    steps_wrong = [
        sv is not None and lab is not None and list(sv) != list(lab)
        for sv, lab in zip(eval_table["step_verdicts"], eval_table["step_labels"], strict=True)
    ]
    labelled = eval_table["step_labels"].map(lambda v: v is not None)
    base = right & usable & labelled
    nan = float("nan")
    return {
        "eval/verifier_acc_on_correct": float(right[truth].mean()) if truth.any() else nan,
        "eval/verifier_acc_on_wrong": float(right[~truth].mean()) if (~truth).any() else nan,
        "eval/verifier_right_verdict_wrong_steps": (
            float(pd.Series(steps_wrong)[base.to_numpy()].mean()) if base.any() else nan
        ),
        "eval/verifier_step_mismatch_frac": float((~usable).mean()) if len(usable) else nan,
    }


def plan_dict(plan: RoundPlan) -> dict[str, Any]:
    """The plan as a plain dict for artifacts (TANGO.md §3)."""
    return asdict(plan)


def plan_from_dict(plan: dict[str, Any]) -> RoundPlan:
    """The plan back from its artifact dict (TANGO.md §3)."""
    return RoundPlan(**plan)


def judge_texts(
    cfg: TangoConfig, verifier_ckpt: Path, questions: list[str], texts: list[str], parsed: list, log: Log = print
) -> tuple[list, list[bool]]:
    """The verifier's greedy verification of each solution text (TANGO.md §2), as held-out evaluation judges.

    ``parsed``: each text's :func:`~tango_steps.formats.parse_solution`. Returns the parsed
    verifications and, per solution, whether its prompt lost the solution's tail.
    """
    from tango_steps.formats import parse_verification
    from tango_steps.rollout import SamplingSettings

    vgreedy = SamplingSettings(n=1, temperature=0.0, max_tokens=cfg.verifier_sampling.max_tokens)
    vprompts, vcut = verifier_prompts(cfg, verifier_ckpt / "model", questions, parsed, texts)
    with _engine(cfg, verifier_ckpt / "model", cfg.seed) as engine:
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


def verifier_metrics(df: pd.DataFrame) -> dict[str, Any]:
    """The verifier's held-out outcome, format and process metrics from an evaluation table (TANGO.md §5, §8)."""
    metrics: dict[str, Any] = binary_metrics(list(df["final_verdict"]), list(df["correct"]), "eval/verifier_")
    metrics["eval/verifier_format_ok_frac"] = float((df["verifier_format_score"] == 1.0).mean())
    says_correct = float(df["final_verdict"].map(lambda v: v is True).mean())
    metrics["eval/verifier_says_correct_frac"] = says_correct
    metrics["eval/verifier_majority_frac"] = max(says_correct, 1.0 - says_correct)
    metrics.update(process_metrics(df))
    return metrics


def rejudge(cfg: TangoConfig, verifier_ckpt: Path, eval_table: pd.DataFrame, log: Log = print) -> dict[str, Any]:
    """Another verifier's held-out metrics on the SAME solutions as ``eval_table`` (TANGO.md §5, §8).

    Separates a verifier's own change from the generator's drift: e.g. the last round's verifier on
    round 0's solutions (did the verifier get worse?) and round 0's verifier on the last round's
    solutions (did the solutions get harder to judge?). Returns the :func:`verifier_metrics` that
    :func:`evaluate` would report for that pairing.
    """
    from tango_steps.formats import parse_solution

    texts = list(eval_table["text"])
    parsed = [parse_solution(t) for t in texts]
    verdicts, _ = judge_texts(cfg, verifier_ckpt, list(eval_table["question"]), texts, parsed, log)
    return verifier_metrics(with_verdicts(eval_table, verdicts))

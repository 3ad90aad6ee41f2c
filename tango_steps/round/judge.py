"""The judge stage (docs/method.md §2-§3): the verifier's verdicts on the round's solutions, one row per
verification; the exact-label verdicts of the oracle arms; greedy judging of held-out solutions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from tango_steps.config import TangoConfig
from tango_steps.method.metrics import (
    predicted_first_error,
    step_verdict_histogram,
)
from tango_steps.method.schedule import RoundPlan
from tango_steps.round.arms import EXACT_LABEL_VERDICTS
from tango_steps.round.plan import Log, StageResult, is_generator_slot, needs_judge, stage_seed, verifier_judges
from tango_steps.round.sampling import engine_for, generate, sample_role, servable
from tango_steps.round.tables import Judgment, table


def judge(
    cfg: TangoConfig,
    plan: RoundPlan,
    verifier_ckpt: Path | None,
    rollouts: pd.DataFrame,
    log: Log = print,
    first: int = 0,
) -> tuple[pd.DataFrame, StageResult]:
    """The verifier's verdicts on the round's solutions (docs/method.md §2-§3), one row per verification.

    Generator rounds: 1 verification per solution (its step verdicts are the step rewards); verifier
    rounds: N = ``verifier_sampling.n`` per solution (the GRPO group of docs/method.md §5). With
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

    generator_round = is_generator_slot(plan)
    if not verifier_judges(cfg, plan) and first:
        raise ValueError("only a verifier's judging is sharded; exact labels and skipped judging take the whole table")
    if not needs_judge(cfg, plan):
        return no_judgments(log)
    if not verifier_judges(cfg, plan):
        df = oracle_judgments(rollouts, cfg.algorithm.step_verdicts, cfg.algorithm.oracle_flip_prob,
                              stage_seed(cfg, plan.round_idx, "oracle"))  # fmt: skip
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
        comps, prompt_ids, _ = sample_role(
            cfg, "verifier", verifier_ckpt, prompts, cfg.verifier_sampling, n, plan.round_idx, "judge", log,
            first=first,
        )  # fmt: skip
    compute = time.perf_counter() - t0
    rows = []
    for k, (s, prompt, cs) in enumerate(zip(parsed, prompts, comps, strict=True)):
        i = first + k
        for j, c in enumerate(cs):
            v = parse_verification(c.text, s.num_steps, s.well_formed, cfg.verifier.final_from_steps)
            rows.append(
                Judgment(
                    solution=i,
                    verification=j,
                    prompt=prompt,
                    prompt_cut=cut[k],
                    text=c.text,
                    prompt_ids=list(prompt_ids[k]),
                    response_ids=list(c.token_ids),
                    truncated=c.truncated,
                    num_steps=s.num_steps,
                    step_verdicts=None if v.step_verdicts is None else list(v.step_verdicts),
                    final_verdict=v.final_verdict,
                    format_score=v.format_score,
                    num_judged=v.num_judged,
                )
            )
    df = table(rows, Judgment)
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


def no_judgments(log: Log = print) -> tuple[pd.DataFrame, StageResult]:
    """The judge stage's result when nothing is judged: an empty table with the judge's columns."""
    log("judge: skipped (algorithm.step_rewards is false: outcome reward only)")
    return table([], Judgment), StageResult({"judge/skipped": 1}, 0.0)


def parsed_solutions(rollouts: pd.DataFrame) -> list:
    """The rollout's parse of each solution back as :class:`~tango_steps.method.formats.ParsedSolution`
    (docs/method.md §2).

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


def oracle_judgments(rollouts: pd.DataFrame, kind: str, flip_prob: float, seed: int) -> pd.DataFrame:
    """Step verdicts from the task's exact step labels instead of a verifier (docs/method.md §8 study arms).

    ``kind`` names the source in :data:`~tango_steps.round.arms.EXACT_LABEL_VERDICTS` (``oracle``: the labels
    themselves; ``noisy_oracle``: each flipped with probability ``flip_prob``, seeded). The final verdict is
    the exact outcome. One row per solution, with the judge table's columns (no prompt or tokens: nothing was
    sampled).
    """
    import random

    from tango_steps.registry import lookup

    verdicts_of = lookup(EXACT_LABEL_VERDICTS, kind, "step verdict source")
    rng = random.Random(seed)
    rows = []
    for i, (labels, correct) in enumerate(zip(rollouts["step_labels"], rollouts["label_correct"], strict=True)):
        verdicts = None
        if labels is not None:
            verdicts = verdicts_of(labels, flip_prob, rng)
        rows.append(
            Judgment(
                solution=i, verification=0, prompt="", prompt_cut=False, text="",
                prompt_ids=[], response_ids=[], truncated=False,
                num_steps=0 if labels is None else len(labels), step_verdicts=verdicts,
                final_verdict=bool(correct), format_score=1.0,
                num_judged=0 if labels is None else len(labels),
            )
        )  # fmt: skip
    return table(rows, Judgment)


def verifier_prompts(
    cfg: TangoConfig, verifier_model: Path, questions: list[str], parsed: list, texts: list[str]
) -> tuple[list[str], list[bool]]:
    """The verifier's prompts, fitted to ``rollout.max_prompt_tokens`` by cutting the solution's tail
    (docs/method.md §2).

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


def judge_texts(
    cfg: TangoConfig, verifier_ckpt: Path, questions: list[str], texts: list[str], parsed: list, log: Log = print
) -> tuple[list, list[bool]]:
    """The verifier's greedy verification of each solution text (docs/method.md §2), as held-out evaluation judges.

    ``parsed``: each text's :func:`~tango_steps.method.formats.parse_solution`. Returns the parsed
    verifications and, per solution, whether its prompt lost the solution's tail.
    """
    from tango_steps.method.formats import parse_verification
    from tango_steps.rollout import SamplingSettings

    vgreedy = SamplingSettings(n=1, temperature=0.0, max_tokens=cfg.verifier_sampling.max_tokens)
    vprompts, vcut = verifier_prompts(cfg, verifier_ckpt / "model", questions, parsed, texts)
    with engine_for(cfg, "verifier", servable(verifier_ckpt), cfg.seed) as engine:
        vcomps = generate(engine, vprompts, vgreedy, "evaluate verifier", log)
    rule = cfg.verifier.final_from_steps
    verdicts = [
        parse_verification(c[0].text, s.num_steps, s.well_formed, rule) for c, s in zip(vcomps, parsed, strict=True)
    ]
    return verdicts, vcut


def with_verdicts(table: pd.DataFrame, verdicts: list) -> pd.DataFrame:
    """``table`` (one solution per row) with the verifier's columns of these verifications (docs/method.md §2, §8)."""
    df = table.copy()
    df["final_verdict"] = [v.final_verdict for v in verdicts]
    df["step_verdicts"] = [v.step_verdicts for v in verdicts]
    df["predicted_first_error"] = [predicted_first_error(v.step_verdicts) for v in verdicts]
    df["verifier_format_score"] = [v.format_score for v in verdicts]
    return df

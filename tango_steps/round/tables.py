"""The round's tables, each declared once (docs/method.md §2-§5, §8): a dataclass per kind of row, a line per column.

The rollout, judge and evaluate stages build their tables from these rows (one row per solution, per
verification, per held-out problem); the reward stage adds the columns of :class:`RolloutRewards` and
:class:`JudgmentRewards`, and held-out judging those of :class:`EvalVerdicts`. The flows store the tables as the
artifacts ``rollouts``, ``judgments`` and ``eval_table`` (pandas DataFrames with these columns, in this order),
which the cards, the in-process runner and the docs read by these names.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import pandas as pd


@dataclass
class Rollout:
    """One generator solution of the round (``rollouts``; :func:`~tango_steps.round.sample.rollout`)."""

    prompt_id: str  # the problem's id in its task
    prompt_index: int  # the prompt's place in the round's batch: its GRPO group (docs/method.md §4)
    sample: int  # which of the prompt's samples (M in a generator round, 1 in a verifier round)
    question: str  # the problem statement
    gold: str  # the gold answer
    prompt: str  # the generator's prompt, template applied
    text: str  # the sampled completion
    prompt_ids: list[int]  # the prompt's token ids the engine sampled from: what the update trains on
    response_ids: list[int]  # the sampled token ids
    finish_reason: str  # "stop" or "length"
    truncated: bool  # cut at max_tokens: scores 0 (docs/method.md §4)
    steps: list[str]  # the <step> texts (docs/method.md §2)
    step_spans: list[list[int]]  # each step's [start, end) characters in text
    step_end_tokens: list[int]  # each step's last sampled token, where its step reward goes (empty when unused)
    answer: str | None  # the boxed answer, None without one
    format_score: float  # the solution's format score (docs/method.md §2)
    well_formed: bool  # the whole solution follows the format
    label_correct: bool  # the task's exact verdict on the answer
    step_labels: list[bool] | None  # the task's exact verdict on each step, where it has them
    first_error: int | None  # the task's first wrong step, from its step labels


@dataclass
class RolloutRewards:
    """What the reward stage adds to ``rollouts`` (:func:`~tango_steps.round.reward.reward`, docs/method.md §4)."""

    outcome_reward: float  # r_out: 1 for a correct answer, 0 otherwise or when truncated
    correct: bool  # r_out > 0: the truth the verifier is rewarded against
    step_rewards: list[float] | None  # y_k / K per step from the verifier's verdicts (generator rounds)
    advantage_first_token: float  # the generator's advantage on the first response token
    advantage_mean: float  # the generator's advantage averaged over the response tokens


@dataclass
class Judgment:
    """One verification of a solution (``judgments``; :func:`~tango_steps.round.judge.judge`, docs/method.md §2)."""

    solution: int  # the solution's row in ``rollouts``
    verification: int  # which of the solution's verifications (1 in a generator round, N in a verifier round)
    prompt: str  # the verifier's prompt (empty for exact-label verdicts)
    prompt_cut: bool  # the prompt lost the solution's tail to rollout.max_prompt_tokens
    text: str  # the sampled verification
    prompt_ids: list[int]  # the prompt's token ids the engine sampled from
    response_ids: list[int]  # the sampled token ids
    truncated: bool  # cut at max_tokens: rewarded 0 (docs/method.md §5)
    num_steps: int  # K, the steps of the solution judged
    step_verdicts: list[bool] | None  # CORRECT/INCORRECT per step; None unless exactly K were readable
    final_verdict: bool | None  # the overall verdict; None when unparseable (counts as INCORRECT)
    format_score: float  # the verification's format score (docs/method.md §5)
    num_judged: int  # the step blocks the verification holds


@dataclass
class JudgmentRewards:
    """What the reward stage adds to ``judgments`` (docs/method.md §5)."""

    solution_correct: bool  # the truth: the judged solution's ``correct``
    verdict_right: bool  # the final verdict equals the truth (an unreadable one is wrong)
    verifier_reward: float  # r_v = 1[verdict right] + gamma * format score (verifier rounds)
    advantage: float  # the verification's GRPO advantage within its solution's N
    sample_weight: float  # the class-aware weight of its policy-gradient term


@dataclass
class EvalRow:
    """One held-out problem's greedy solution (``eval_table``; :func:`~tango_steps.round.evaluate.evaluate`)."""

    prompt_id: str  # the problem's id in its task
    question: str  # the problem statement
    gold: str  # the gold answer
    text: str  # the generator's greedy solution
    truncated: bool  # cut at evaluation.max_tokens
    length: int  # response tokens
    num_steps: int  # the solution's <step> blocks
    correct: bool  # the task's exact verdict on the answer
    first_error: int | None  # the task's first wrong step
    step_labels: list[bool] | None  # the task's exact verdict on each step, where it has them


@dataclass
class EvalVerdicts:
    """What the verifier's greedy judging adds to ``eval_table`` (docs/method.md §2, §8)."""

    final_verdict: bool | None  # the overall verdict; None when unparseable
    step_verdicts: list[bool] | None  # per-step verdicts; None unless exactly K were readable
    predicted_first_error: int  # the first INCORRECT step; -1 for none, -2 when no step verdict was usable
    verifier_format_score: float  # the verification's format score


def columns(row: type) -> list[str]:
    """The column names of a table of ``row`` (a dataclass above), in order."""
    return [f.name for f in fields(row)]


def table(rows: list[Any], row: type) -> pd.DataFrame:
    """The DataFrame of ``rows`` (instances of ``row``) with ``row``'s columns, also when there are none."""
    return pd.DataFrame([vars(r) for r in rows], columns=columns(row))

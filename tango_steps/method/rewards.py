"""Rewards of both models (docs/method.md §4 generator, §5 verifier).

- generator outcome reward: r_out = 1[answer equivalent to gold] (+ format weight x format score,
  weight 0 in the paper);
- generator step rewards: y_k / K with y_k = +1 (CORRECT) or -1 (INCORRECT), placed on the LAST
  token of step k;
- verifier reward: r_v = 1[final verdict == true correctness] + gamma x format score, gamma = 0.8.

"Last token of step k" is the token holding the step's last character (the ``>`` of its
``</step>``), found on the SAMPLED token ids (:func:`sampled_step_end_tokens`, computed once in the rollout). The
reference code is off by up to one token here; the tests check the boundary exactly against the
tokenizer's character offsets.
"""

from __future__ import annotations

from collections.abc import Sequence


def outcome_reward(correct: bool, format_score: float = 0.0, format_weight: float = 0.0) -> float:
    """Generator outcome reward r_out (docs/method.md §4): 1 if correct else 0, plus an optional format term.

    The paper uses format weight 0 and keeps the verifier's final verdict out of this reward.
    """
    return float(bool(correct)) + float(format_weight) * float(format_score)


def step_rewards(step_verdicts: Sequence[bool] | None) -> list[float] | None:
    """Step rewards y_k / K (docs/method.md §4), y_k = +1 for CORRECT and -1 for INCORRECT.

    Returns None when the verdicts are unusable (None: count != K) and [] for K = 0: either way the
    solution then gets no step reward.
    """
    if step_verdicts is None:
        return None
    k = len(step_verdicts)
    return [(1.0 if v else -1.0) / k for v in step_verdicts]


def verifier_reward(
    final_verdict: bool | None,
    solution_correct: bool,
    format_score: float,
    gamma: float,
) -> float:
    """Verifier reward r_v = 1[final verdict == true correctness] + gamma * format score (docs/method.md §5).

    An unparseable final verdict (None) counts as INCORRECT with zero reward (docs/method.md §2).
    """
    if final_verdict is None:
        return 0.0
    return float(final_verdict == bool(solution_correct)) + gamma * float(format_score)


def sampled_step_end_tokens(tokenizer, response_ids: list[int], step_spans: list[tuple[int, int]]) -> list[int]:
    """Index of the sampled token holding the last character of each step (docs/method.md §4).

    Works on the SAMPLED ids (not a re-tokenisation, which may split the text differently): the
    token holding character ``end - 1`` is the first ``i`` whose decoded prefix ``ids[: i + 1]`` is
    longer than ``end - 1`` characters, found by bisection (prefix lengths never decrease).
    """
    cache: dict[int, int] = {}

    def prefix_len(i: int) -> int:
        if i not in cache:
            cache[i] = len(tokenizer.decode(response_ids[: i + 1], skip_special_tokens=True))
        return cache[i]

    out = []
    lo_start = 0
    for _, end in step_spans:
        lo, hi = lo_start, len(response_ids) - 1
        if hi < 0 or prefix_len(hi) < end:
            out.append(len(response_ids) - 1 if response_ids else -1)
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if prefix_len(mid) >= end:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
        lo_start = lo
    return out


def outcome_rewards(
    correct: Sequence[bool],
    truncated: Sequence[bool],
    answered: Sequence[bool],
    format_scores: Sequence[float] | None = None,
    format_weight: float = 0.0,
) -> tuple[list[float], dict[str, int]]:
    """Generator outcome rewards r_out of a batch (docs/method.md §4), with truncation handled.

    ``correct`` is the task's own verdict on each completion (``Task.check``, computed once in the
    rollout): exact match for the embedded tasks, Math-Verify only for maths datasets. There is one
    correctness oracle per task, shared by this reward, the verifier's RL target, the warm-up and the
    evaluation; Math-Verify would read ``yae`` as the product ``y*a*e`` and so equal to ``eay``
    (ENVIRONMENT.md "Answer grading"). A completion that hit the token limit gets reward 0 whatever it
    says and is counted as truncated.

    Returns:
        rewards, and counts ``{"truncated", "no_answer", "correct"}`` (``correct`` counts rewarded ones).
    """
    if not len(correct) == len(truncated) == len(answered):
        raise ValueError(
            f"got {len(correct)} verdicts, {len(truncated)} truncation flags and {len(answered)} answer flags"
        )
    if format_scores is None:
        format_scores = [0.0] * len(correct)
    rewards = [
        0.0 if t else outcome_reward(bool(c), f, format_weight)
        for c, t, f in zip(correct, truncated, format_scores, strict=True)
    ]
    counts = {
        "truncated": sum(bool(t) for t in truncated),
        "no_answer": sum(not a for a in answered),
        "correct": sum(bool(c) and not t for c, t in zip(correct, truncated, strict=True)),
    }
    return rewards, counts

"""Tests of tango_steps.method.advantages (docs/method.md §4, §5)."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tango_steps.method.advantages import (
    EPS,
    OUTCOME_ESTIMATORS,
    VerifierReweighter,
    collate_steps,
    compute_generator_advantages,
    compute_verifier_advantages,
    generator_estimator_names,
    masked_whiten,
    reverse_cumsum,
    step_advantages,
)
from tango_steps.method.rewards import step_rewards
from tango_steps.method.schedule import alpha_schedule

# ----------------------------------------------------------------------------------------------
# The hand-worked example (also written out in docs/advantages.md)
# ----------------------------------------------------------------------------------------------


def hand_example():
    """One prompt, M = 3 solutions, T = 8 token slots.

    A: correct (r_out 1), 2 aligned steps judged [CORRECT, CORRECT] -> y/K = [+1/2, +1/2],
       steps end on tokens 2 and 4, 6 response tokens (token 5 is the answer).
    B: wrong (r_out 0), 3 aligned steps judged [CORRECT, INCORRECT, INCORRECT] -> [+1/3, -1/3, -1/3],
       steps end on tokens 1, 3 and 5, 8 response tokens.
    C: wrong (r_out 0), verifier judged the wrong number of steps -> no step reward, 4 tokens.
    """
    rewards, mask, index = collate_steps(
        [step_rewards([True, True]), step_rewards([True, False, False]), step_rewards(None)],
        [[2, 4], [1, 3, 5], None],
    )
    response_mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.float32
    )
    r_out = torch.tensor([1.0, 0.0, 0.0])
    group = torch.tensor([0, 0, 0])
    return r_out, rewards, mask, index, response_mask, group


def test_hand_worked_example_grpo():
    r_out, rewards, mask, index, response_mask, group = hand_example()
    adv, metrics = compute_generator_advantages(r_out, rewards, mask, index, response_mask, group, alpha=0.1)

    # Outcome part: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3).
    s_out = math.sqrt(1 / 3) + EPS
    a_out = [(2 / 3) / s_out, (-1 / 3) / s_out, (-1 / 3) / s_out]  # ~ [1.1547, -0.5774, -0.5774]

    # Step part: pool [1/2, 1/2, 1/3, -1/3, -1/3]; mean 2/15;
    # squared deviations 2 (11/30)^2 + (1/5)^2 + 2 (7/15)^2 = 67/90, unbiased var 67/360.
    s_step = math.sqrt(67 / 360) + EPS
    a1 = (11 / 30) / s_step  # A's steps          ~ +0.8499
    b1 = (1 / 5) / s_step  # B's CORRECT step    ~ +0.4636
    b2 = (-7 / 15) / s_step  # B's INCORRECT steps ~ -1.0817
    # Reverse cumulative sums over the step ends:
    a_step_a = [2 * a1] * 3 + [a1] * 2 + [0.0] + [0.0, 0.0]  # tokens 0-2 | 3-4 | 5 (answer) | padding
    a_step_b = [b1 + 2 * b2] * 2 + [2 * b2] * 2 + [b2] * 2 + [0.0] * 2
    a_step_c = [0.0] * 8

    alpha = 0.1
    expected = torch.tensor(
        [
            [(1 - alpha) * a_out[0] * m + alpha * s for m, s in zip(response_mask[0].tolist(), a_step_a, strict=True)],
            [(1 - alpha) * a_out[1] * m + alpha * s for m, s in zip(response_mask[1].tolist(), a_step_b, strict=True)],
            [(1 - alpha) * a_out[2] * m + alpha * s for m, s in zip(response_mask[2].tolist(), a_step_c, strict=True)],
        ]
    )
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    # The rounded table of docs/advantages.md:
    rounded = [
        [1.2092, 1.2092, 1.2092, 1.1242, 1.1242, 1.0392, 0.0, 0.0],
        [-0.6896, -0.6896, -0.7360, -0.7360, -0.6278, -0.6278, -0.5196, -0.5196],
        [-0.5196, -0.5196, -0.5196, -0.5196, 0.0, 0.0, 0.0, 0.0],
    ]
    torch.testing.assert_close(adv, torch.tensor(rounded), atol=1e-4, rtol=0)
    assert metrics["generator/step_aligned_frac"] == pytest.approx(2 / 3)
    assert metrics["generator/alpha"] == 0.1


def test_hand_example_alpha_zero_is_pure_outcome_and_alpha_one_pure_step():
    r_out, rewards, mask, index, response_mask, group = hand_example()
    adv0, _ = compute_generator_advantages(r_out, rewards, mask, index, response_mask, group, alpha=0.0)
    assert torch.allclose(adv0[0, :6], torch.full((6,), 2 / 3 / (math.sqrt(1 / 3) + EPS)))
    adv1, _ = compute_generator_advantages(r_out, rewards, mask, index, response_mask, group, alpha=1.0)
    assert torch.all(adv1[2] == 0)  # C has no step reward
    assert adv1[0, 5] == 0  # the answer token after A's last step


def test_rloo_step_scale_is_a_named_setting():
    r_out, rewards, mask, index, response_mask, group = hand_example()
    kw = dict(estimator="rloo", alpha=1.0)
    adv1, _ = compute_generator_advantages(r_out, rewards, mask, index, response_mask, group, **kw)
    adv10, _ = compute_generator_advantages(
        r_out, rewards, mask, index, response_mask, group, rloo_step_scale=10.0, **kw
    )
    torch.testing.assert_close(adv10, 10 * adv1)
    # RLOO by hand for A's first step: 1/2 - mean(1/2, 1/3, -1/3, -1/3) = 1/2 - 1/24
    assert adv1[0, 4].item() == pytest.approx(0.5 - 1 / 24, abs=1e-6)
    adv_out, _ = compute_generator_advantages(
        r_out, rewards, mask, index, response_mask, group, estimator="rloo", alpha=0.0
    )
    assert adv_out[0, 0].item() == pytest.approx(1.0)  # 1 - mean(0, 0)
    assert adv_out[1, 0].item() == pytest.approx(-0.5)  # 0 - mean(1, 0)


def reinforce_pp_example():
    """Two responses of one prompt, T = 3 token slots (REINFORCE++, docs/method.md §4).

    A: correct (r_out 1), 1 token, 1 aligned step [CORRECT] -> y/K = [+1], ending on token 0.
    B: wrong (r_out 0), 3 tokens, 2 aligned steps [INCORRECT, CORRECT] -> [-1/2, +1/2], ending on
       tokens 0 and 1; token 2 (the answer) is after B's last step.
    """
    rewards, mask, index = collate_steps([step_rewards([True]), step_rewards([False, True])], [[0], [0, 1]])
    response_mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    return torch.tensor([1.0, 0.0]), rewards, mask, index, response_mask, torch.tensor([0, 0])


def test_reinforce_pp_whitens_outcome_per_token():
    """REINFORCE++ whitens RETURNS per token over the batch: A's single token counts once, B's three.

    Replaces the old per-response test: the old code whitened r_out over responses (each counted
    once), giving A_out = +-1/sqrt(1/2) = +-0.7071 here, which is not REINFORCE++.
    """
    r_out, rewards, mask, index, response_mask, group = reinforce_pp_example()
    adv, metrics = compute_generator_advantages(
        r_out, rewards, mask, index, response_mask, group, alpha=0.0, estimator="reinforce_pp"
    )
    # Token pool of returns: A = [1], B = [0, 0, 0]. mean = 1/4;
    # squared deviations (3/4)^2 + 3 (1/4)^2 = 12/16, unbiased var = (12/16) / 3 = 1/4, std = 1/2.
    # A_out(A) = (3/4) / (1/2) = +1.5; A_out(B) = (-1/4) / (1/2) = -0.5 at each of its tokens.
    expected = torch.tensor([[1.5, 0.0, 0.0], [-0.5, -0.5, -0.5]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert adv.sum().item() == pytest.approx(0.0, abs=1e-5)  # zero mean per TOKEN, not per response
    old_per_response = (1 / 2) / math.sqrt(1 / 2)  # mean 1/2, unbiased std sqrt(1/2) over the 2 responses
    assert abs(adv[0, 0].item() - old_per_response) > 0.5
    assert metrics["generator/adv_outcome_abs_mean"] == pytest.approx((1.5 + 3 * 0.5) / 4, abs=1e-5)


def test_reinforce_pp_whitens_step_returns_not_step_rewards():
    """REINFORCE++ sums the RAW step rewards backwards, then whitens the returns over the batch's step tokens.

    Replaces the old test, which whitened the step rewards over the batch's pool BEFORE the reverse
    cumulative sum (so it matched GRPO's step part on a one-prompt batch); docs/method.md §4 whitens the
    returns. The released code's step-return loop ran over the wrong dimension; ours sums per response.
    """
    r_out, rewards, mask, index, response_mask, group = reinforce_pp_example()
    adv, _ = compute_generator_advantages(
        r_out, rewards, mask, index, response_mask, group, alpha=1.0, estimator="reinforce_pp"
    )
    # Raw returns: A token 0: +1; B token 0: -1/2 + 1/2 = 0, B token 1: +1/2; B token 2 is after B's
    # last step (not a step token). Step-token pool {1, 0, 1/2}: mean 1/2, unbiased var
    # ((1/2)^2 + (1/2)^2 + 0) / 2 = 1/4, std 1/2 -> A: (1 - 1/2)/(1/2) = +1; B: (0 - 1/2)/(1/2) = -1, 0; then 0.
    expected = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)

    # Whitening BEFORE the sum (the old code) gives something else: step pool {+1, -1/2, +1/2}, mean
    # 1/3, squared deviations (2/3)^2 + (5/6)^2 + (1/6)^2 = 7/6, unbiased var 7/12, std 0.76376:
    # normalised +0.8729 (A), -1.0911, +0.2182 (B); reverse sums A = [0.8729], B = [-0.8729, 0.2182, 0].
    s = math.sqrt(7 / 12) + EPS
    normed = torch.tensor([[(2 / 3) / s, 0.0], [(-5 / 6) / s, (1 / 6) / s]])
    before = step_advantages(normed, mask, index, response_mask)
    torch.testing.assert_close(before, torch.tensor([[0.8729, 0.0, 0.0], [-0.8729, 0.2182, 0.0]]), atol=1e-4, rtol=0)
    assert (adv - before).abs().max().item() > 0.2  # B's token 1: 0 (returns) vs +0.2182 (rewards)


def test_reinforce_pp_blend_with_paper_alpha():
    """A = (1 - alpha) A_out + alpha A_step with REINFORCE++'s alpha0 = 0.5 (docs/method.md §4) on the example."""
    r_out, rewards, mask, index, response_mask, group = reinforce_pp_example()
    adv, _ = compute_generator_advantages(
        r_out, rewards, mask, index, response_mask, group, alpha=0.5, estimator="reinforce_pp"
    )
    # 0.5 * [1.5 | -0.5, -0.5, -0.5] + 0.5 * [1 | -1, 0, 0]
    torch.testing.assert_close(adv, torch.tensor([[1.25, 0.0, 0.0], [-0.75, -0.25, -0.25]]), atol=1e-5, rtol=0)


def test_reinforce_pp_step_part_zero_after_last_step_and_unaligned():
    r_out, rewards, mask, index, response_mask, group = hand_example()
    adv, _ = compute_generator_advantages(
        r_out, rewards, mask, index, response_mask, group, alpha=1.0, estimator="reinforce_pp"
    )
    assert adv[0, 5] == 0 and torch.all(adv[0, 6:] == 0)  # A's answer token (after its last step), padding
    assert torch.all(adv[1, 6:] == 0)  # B's tokens after its last step (token 5)
    assert torch.all(adv[2] == 0)  # C: no aligned steps
    # the step tokens (A 0-4, B 0-5) have zero mean
    assert (adv[0, :5].sum() + adv[1, :6].sum()).item() == pytest.approx(0.0, abs=1e-5)
    assert adv[1, 0] < 0 < adv[0, 0]


def test_masked_whiten_pools():
    v = torch.tensor([[1.0, 2.0, 3.0], [9.0, 9.0, 9.0]])
    m = torch.tensor([[True, True, True], [False, False, False]])
    # mean 2, unbiased std 1 over the three masked entries; the masked-out row gives 0
    expected = torch.tensor([[-1 / (1 + EPS), 0.0, 1 / (1 + EPS)], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(masked_whiten(v, m), expected)
    one = torch.tensor([[True, False, False], [False, False, False]])
    assert masked_whiten(v, one).tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert masked_whiten(v, one, small_pool_value="identity").tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_unknown_estimator_and_bad_alpha():
    r_out, rewards, mask, index, response_mask, group = hand_example()
    with pytest.raises(ValueError, match="unknown advantage estimator 'grop'; known: grpo, reinforce_pp, rloo"):
        compute_generator_advantages(r_out, rewards, mask, index, response_mask, group, alpha=0.1, estimator="grop")
    assert generator_estimator_names() == ["grpo", "reinforce_pp", "rloo"]
    with pytest.raises(ValueError, match="alpha must be in"):
        compute_generator_advantages(r_out, rewards, mask, index, response_mask, group, alpha=1.5)


def test_group_of_one_gets_zero_outcome_and_raw_step_rewards():
    rewards, mask, index = collate_steps([[0.5, -0.5]], [[0, 1]])
    adv, _ = compute_generator_advantages(
        torch.tensor([1.0]), rewards, mask, index, torch.ones(1, 3), torch.tensor([7]), alpha=1.0
    )
    # pool of 2 here (one response, two steps): normalised to +-1/sqrt(1/2) ~ +-0.7071
    assert adv[0].tolist() == pytest.approx([0.0, -0.70710, 0.0], abs=1e-4)
    rewards, mask, index = collate_steps([[1.0]], [[1]])
    adv, _ = compute_generator_advantages(
        torch.tensor([1.0]), rewards, mask, index, torch.ones(1, 3), torch.tensor([0]), alpha=0.5
    )
    assert adv[0].tolist() == pytest.approx([0.5, 0.5, 0.0])  # outcome 0, pool of one keeps 1.0


def test_collate_steps_errors():
    with pytest.raises(ValueError, match="2 step-reward rows but 1 index rows"):
        collate_steps([[1.0], [1.0]], [[0]])
    with pytest.raises(ValueError, match="response 0: 2 step rewards but 1 token indices"):
        collate_steps([[1.0, 2.0]], [[0]])


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------

_groups = st.lists(st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=1, max_size=6), min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(_groups, st.sampled_from(sorted(OUTCOME_ESTIMATORS)))
def test_outcome_advantages_have_zero_mean_per_group(groups, name):
    r = torch.tensor([x for g in groups for x in g], dtype=torch.float64)
    gi = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    a = OUTCOME_ESTIMATORS[name](r, gi, EPS)  # response-level estimators (REINFORCE++ is token-level)
    for i in range(len(groups)):
        assert abs(a[gi == i].sum().item()) < 1e-6


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.floats(-5, 5), min_size=1, max_size=12), min_size=1, max_size=4).filter(
        lambda rows: len({len(r) for r in rows}) == 1
    )
)
def test_reverse_cumsum_equals_double_loop(rows):
    x = torch.tensor(rows, dtype=torch.float64)
    naive = [[sum(row[j] for j in range(t, len(row))) for t in range(len(row))] for row in rows]
    torch.testing.assert_close(reverse_cumsum(x), torch.tensor(naive, dtype=torch.float64))


def naive_generator_advantages(r_out, verdicts, ends, lengths, groups, alpha, t):
    """Loop-by-loop GRPO version of docs/method.md §4, written from the text, for equivalence."""
    out = [[0.0] * t for _ in r_out]
    for g in set(groups):
        members = [i for i in range(len(r_out)) if groups[i] == g]
        rs = [r_out[i] for i in members]
        mean = sum(rs) / len(rs)
        std = statistics.stdev(rs) if len(rs) > 1 else None
        pool = [
            (i, k, (1 if v else -1) / len(verdicts[i]))
            for i in members
            if verdicts[i]
            for k, v in enumerate(verdicts[i])
        ]
        vals = [p[2] for p in pool]
        pm, ps = (sum(vals) / len(vals), statistics.stdev(vals)) if len(vals) > 1 else (0.0, 1.0)
        eps_p = EPS if len(vals) > 1 else 0.0
        normed = {(i, k): (v - pm) / (ps + eps_p) for i, k, v in pool}
        for i in members:
            a_out = (r_out[i] - mean) / (std + EPS) if std is not None else 0.0
            for tok in range(lengths[i]):
                a_step = sum(normed[(i, k)] for k in range(len(verdicts[i] or [])) if ends[i][k] >= tok)
                out[i][tok] = (1 - alpha) * a_out + alpha * a_step
    return out


@st.composite
def _batches(draw):
    t = draw(st.integers(3, 10))
    n = draw(st.integers(1, 7))
    r_out, verdicts, ends, lengths, groups = [], [], [], [], []
    for _ in range(n):
        length = draw(st.integers(1, t))
        k = draw(st.integers(0, 3))
        v = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=k, max_size=k)))
        e = sorted(draw(st.lists(st.integers(0, length - 1), min_size=len(v or []), max_size=len(v or []))))
        r_out.append(float(draw(st.booleans())))
        verdicts.append(v)
        ends.append(e)
        lengths.append(length)
        groups.append(draw(st.integers(0, 2)))
    return r_out, verdicts, ends, lengths, groups, draw(st.floats(0, 1)), t


@settings(max_examples=200, deadline=None)
@given(_batches())
def test_vectorised_equals_naive_loops(batch):
    r_out, verdicts, ends, lengths, groups, alpha, t = batch
    rewards, mask, index = collate_steps(
        [step_rewards(v) for v in verdicts], [e if v else None for v, e in zip(verdicts, ends, strict=True)]
    )
    response_mask = torch.tensor([[1.0 if j < n else 0.0 for j in range(t)] for n in lengths])
    adv, _ = compute_generator_advantages(
        torch.tensor(r_out, dtype=torch.float64), rewards.double(), mask, index, response_mask.double(),
        torch.tensor(groups), alpha=alpha,
    )  # fmt: skip
    expected = naive_generator_advantages(r_out, verdicts, ends, lengths, groups, alpha, t)
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6)


def naive_reinforce_pp(r_out, verdicts, ends, lengths, alpha, t):
    """Loop-by-loop REINFORCE++ of docs/method.md §4 (per-token returns whitened over the batch), for equivalence."""

    def whiten(pool, small):  # unbiased std; pool of <= 1: 0 ("zero") or unchanged ("identity")
        if len(pool) <= 1:
            return {key: (0.0 if small == "zero" else v) for key, v in pool.items()}
        mean, std = sum(pool.values()) / len(pool), statistics.stdev(pool.values())
        return {key: (v - mean) / (std + EPS) for key, v in pool.items()}

    # step rewards enter as float32 (collate_steps), so a pool that is constant in exact arithmetic
    # (e.g. -1/3 x 3 and -1) differs by float32 rounding, which whitening with std + 1e-6 magnifies to
    # ~0.01: mirror that rounding rather than compare float32 inputs with exact ones
    y = [[float(np.float32((1 if v else -1) / len(vs))) for v in vs] if vs else vs for vs in verdicts]
    a_out = whiten({(i, tok): r_out[i] for i in range(len(r_out)) for tok in range(lengths[i])}, "zero")
    returns = {
        (i, tok): sum(y[i][k] for k in range(len(verdicts[i])) if ends[i][k] >= tok)
        for i in range(len(r_out))
        if verdicts[i]
        for tok in range(max(ends[i]) + 1)
    }
    a_step = whiten(returns, "identity")
    return [
        [
            (1 - alpha) * a_out[(i, tok)] + alpha * a_step.get((i, tok), 0.0) if tok < lengths[i] else 0.0
            for tok in range(t)
        ]
        for i in range(len(r_out))
    ]


@settings(max_examples=200, deadline=None)
@given(_batches())
# found by hypothesis: two returns equal in exact arithmetic (-1/3 x 3 and -1), not in float32
@example(([0.0, 0.0], [[False, False, False], [False]], [[0, 0, 0], [0]], [1, 1], [0, 0], 1.0, 3))
def test_reinforce_pp_equals_naive_loops(batch):
    r_out, verdicts, ends, lengths, groups, alpha, t = batch
    rewards, mask, index = collate_steps(
        [step_rewards(v) for v in verdicts], [e if v else None for v, e in zip(verdicts, ends, strict=True)]
    )
    response_mask = torch.tensor([[1.0 if j < n else 0.0 for j in range(t)] for n in lengths])
    adv, _ = compute_generator_advantages(
        torch.tensor(r_out, dtype=torch.float64), rewards.double(), mask, index, response_mask.double(),
        torch.tensor(groups), alpha=alpha, estimator="reinforce_pp",
    )  # fmt: skip
    expected = naive_reinforce_pp(r_out, verdicts, ends, lengths, alpha, t)
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6)


def test_step_advantages_zero_after_last_step_and_on_padding():
    normed = torch.tensor([[1.0, 2.0]])
    a = step_advantages(
        normed, torch.tensor([[True, True]]), torch.tensor([[1, 3]]), torch.tensor([[1, 1, 1, 1, 1, 0]])
    )
    assert a.tolist() == [[3.0, 3.0, 2.0, 2.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------------------------
# alpha schedule
# ----------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["exp", "linear", "cosine"]),
    st.integers(1, 1000),
    st.floats(0.01, 1.0),
    st.floats(1e-4, 1e-2),
)
def test_alpha_hits_endpoints_and_decays(kind, total, alpha0, alpha_min):
    assert alpha_schedule(0, total, alpha0, alpha_min, kind) == pytest.approx(alpha0)
    assert alpha_schedule(total, total, alpha0, alpha_min, kind) == alpha_min
    assert alpha_schedule(total + 5, total, alpha0, alpha_min, kind) == alpha_min
    values = [alpha_schedule(s, total, alpha0, alpha_min, kind) for s in range(0, total + 1, max(1, total // 20))]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(values))
    assert all(alpha_min - 1e-12 <= v <= alpha0 + 1e-12 for v in values)


def test_alpha_exp_matches_paper_formula():
    # alpha(s) = max(alpha_min, alpha0 exp(-k s)), k = ln(alpha0 / alpha_min) / T_g; paper: 0.1 -> 1e-3
    k = math.log(0.1 / 1e-3) / 300
    assert alpha_schedule(150, 300, 0.1, 1e-3, "exp") == pytest.approx(0.1 * math.exp(-k * 150))
    assert alpha_schedule(150, 300, 0.1, 1e-3, "exp") == pytest.approx(0.01)  # geometric midpoint
    assert alpha_schedule(77, 300, 0.1, 1e-3, "constant") == 0.1
    assert alpha_schedule(150, 300, 0.1, 1e-3, "linear") == pytest.approx((0.1 + 1e-3) / 2)
    assert alpha_schedule(150, 300, 0.1, 1e-3, "cosine") == pytest.approx((0.1 + 1e-3) / 2)


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ((0, 10, 0.1, 1e-3, "expo"), "unknown alpha schedule 'expo'; known: exp, constant, linear, cosine"),
        ((0, 10, 0.1, 0.2, "exp"), "alpha_min <= alpha0"),
        ((0, 0, 0.1, 1e-3, "exp"), "total_steps must be > 0"),
        ((-1, 10, 0.1, 1e-3, "exp"), "step must be >= 0"),
        ((1, 10, 0.1, 0.0, "exp"), "needs alpha_min > 0"),
    ],
)
def test_alpha_errors(args, msg):
    with pytest.raises(ValueError, match=msg):
        alpha_schedule(*args)


# ----------------------------------------------------------------------------------------------
# Verifier advantages and reweighting
# ----------------------------------------------------------------------------------------------


def test_verifier_grpo_per_solution():
    r_v = torch.tensor([1.8, 0.8, 1.8, 0.0, 0.0])
    a = compute_verifier_advantages(r_v, torch.tensor([0, 0, 0, 1, 1]))
    assert a[3:].tolist() == [0.0, 0.0]  # identical rewards: no signal
    assert a[:3].sum().item() == pytest.approx(0.0, abs=1e-6)


def test_reweighter_hand_example_and_resume():
    rw = VerifierReweighter(decay=0.8, power=0.5)
    # batch 1: 3 solutions with N = 2 verifications each: one correct, two incorrect
    labels = torch.tensor([True, True, False, False, False, False])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    w = rw(labels, groups)  # EMA initialised from the first batch: correct 1, incorrect 2
    assert (rw.ema_correct, rw.ema_incorrect) == (1.0, 2.0)
    s_c, s_i = 1 / math.sqrt(1), 1 / math.sqrt(2)
    mean = (2 * s_c + 4 * s_i) / 6
    assert w.tolist() == pytest.approx([s_c / mean] * 2 + [s_i / mean] * 4)
    # batch 2: 3 incorrect solutions -> EMA correct 0.8, incorrect 0.8 * 2 + 0.2 * 3 = 2.2
    state = rw.to_dict()
    w2 = rw(torch.tensor([False, False, False]))
    assert rw.ema_correct == pytest.approx(0.8) and rw.ema_incorrect == pytest.approx(2.2)
    assert w2.tolist() == pytest.approx([1.0, 1.0, 1.0])
    # resume: a restored reweighter continues identically
    restored = VerifierReweighter.from_dict(state)
    assert restored(torch.tensor([False, False, False])).tolist() == w2.tolist()
    assert restored.to_dict() == rw.to_dict()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=1, max_size=20), min_size=1, max_size=5))
def test_reweighting_weights_average_one(batches):
    rw = VerifierReweighter(decay=0.8, power=0.5)
    for b in batches:
        w = rw(torch.tensor(b))
        assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
        if any(b) and not all(b):
            # the rarer class (by EMA) gets the larger weight
            labels = torch.tensor(b)
            rare_is_correct = rw.ema_correct < rw.ema_incorrect
            if abs(rw.ema_correct - rw.ema_incorrect) > 1e-9:
                assert (w[labels].mean() > w[~labels].mean()) == rare_is_correct


def test_reweighter_errors():
    with pytest.raises(RuntimeError, match="before any update"):
        VerifierReweighter(decay=0.8, power=0.5).weights(torch.tensor([True]))
    with pytest.raises(ValueError, match="unknown VerifierReweighter state keys: bogus"):
        VerifierReweighter.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="decay must be in"):
        VerifierReweighter(decay=1.0, power=0.5)


def test_reweighting_power_one_equalises_the_classes_total_weight():
    """power 1 (inverse frequency, the tiny recipe) equalises the classes' total weight; 0.5 (docs/method.md §5) not."""
    truth = torch.tensor([True] * 4 + [False] * 28)
    w1 = VerifierReweighter(decay=0.8, power=1.0)(truth)
    assert w1[truth].sum() == pytest.approx(w1[~truth].sum()) and w1.mean() == pytest.approx(1.0)
    # the paper's 1/sqrt: the wrong class keeps sqrt(28/4) ~ 2.6x the mass
    w_half = VerifierReweighter(decay=0.8, power=0.5)(truth)
    assert w_half[~truth].sum() / w_half[truth].sum() == pytest.approx((28 / 4) ** 0.5, rel=1e-5)
    state = VerifierReweighter(decay=0.8, power=1.0)
    state(truth)
    assert VerifierReweighter.from_dict(state.to_dict()).power == 1.0
    with pytest.raises(ValueError, match="power must be >= 0"):
        VerifierReweighter(decay=0.8, power=-1)

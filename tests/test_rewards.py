"""Tests of tango_steps.rewards (TANGO.md §4, §5)."""

from __future__ import annotations

import random

import pytest
import torch

from tango_steps.formats import format_solution, parse_solution
from tango_steps.rewards import (
    outcome_reward,
    outcome_rewards,
    place_step_rewards,
    step_end_token_indices,
    step_rewards,
    token_offsets,
    verifier_reward,
)


def test_outcome_reward():
    assert outcome_reward(True) == 1.0
    assert outcome_reward(False) == 0.0
    assert outcome_reward(False, format_score=1.0) == 0.0  # paper: format weight 0
    assert outcome_reward(True, format_score=0.5, format_weight=0.2) == pytest.approx(1.1)


def test_step_rewards_y_over_k():
    assert step_rewards([True, False, True, True]) == [0.25, -0.25, 0.25, 0.25]
    assert step_rewards([False]) == [-1.0]
    assert step_rewards([]) == []
    assert step_rewards(None) is None


@pytest.mark.parametrize(
    ("final", "truth", "fmt", "expected"),
    [
        (True, True, 1.0, 1.8),
        (False, False, 1.0, 1.8),
        (True, False, 1.0, 0.8),
        (False, True, 0.2, 0.16),
        (True, True, 0.0, 1.0),
        (None, True, 1.0, 0.0),  # unparseable final verdict: zero reward (TANGO.md §2)
        (None, False, 0.0, 0.0),
    ],
)
def test_verifier_reward(final, truth, fmt, expected):
    assert verifier_reward(final, truth, fmt, gamma=0.8) == pytest.approx(expected)


def test_step_end_token_indices_hand_offsets():
    # text: "<step>ab</step><step>c</step>x" ; step spans (0,15) and (15,29)
    text = "<step>ab</step><step>c</step>x"
    spans = parse_solution(text).step_spans
    assert spans == [(0, 15), (15, 29)]
    # tokens: "<step>" "ab" "</step" ">" "<step>" "c</" "step>x"   (the last one runs past the step end)
    offsets = [(0, 6), (6, 8), (8, 14), (14, 15), (15, 21), (21, 24), (24, 30)]
    assert step_end_token_indices(spans, offsets) == [3, 6]
    # off by one would be [2, 5] (token before) or [4, ...] (token after): both wrong
    # special tokens with empty offsets are skipped
    offsets_bos = [(0, 0), *offsets, (0, 0)]
    assert step_end_token_indices(spans, offsets_bos) == [4, 7]
    # a decode truncated before the second step ends: the step maps to the last token
    assert step_end_token_indices(spans, offsets[:5]) == [3, 4]
    assert step_end_token_indices([(0, 5)], []) == [-1]


@pytest.fixture(scope="module")
def bpe_tokenizer():
    return train_bpe()


def train_bpe():
    """A real byte-level BPE (Qwen2 components, ENVIRONMENT.md recipe) trained on solution text."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = []
    for _ in range(300):
        steps = [
            f"{rng.randint(1, 99)} + {rng.randint(1, 99)} = {rng.randint(1, 200)}" for _ in range(rng.randint(1, 4))
        ]
        corpus.append(format_solution(steps, str(rng.randint(1, 200))))
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    qwen_split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(qwen_split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_step_end_token_is_exactly_the_token_holding_the_closing_bracket(bpe_tokenizer):
    rng = random.Random(1)
    checked = straddled = 0
    for _ in range(200):
        steps = [rng.choice(["3 + 4 = 7", "x", "", "é ∑ 😀", "12*3=36\n"]) for _ in range(rng.randint(1, 5))]
        text = rng.choice(["", " ", "\n"]) + format_solution(steps, str(rng.randint(0, 99)))
        parsed = parse_solution(text)
        offsets = token_offsets(bpe_tokenizer, text)
        idx = step_end_token_indices(parsed.step_spans, offsets)
        for (s, e), t in zip(parsed.step_spans, idx, strict=True):
            ts, te = offsets[t]
            assert ts < e <= te or ts <= e - 1 < te, (text, (s, e), offsets[t])  # holds the step's last char
            if t + 1 < len(offsets):
                assert offsets[t + 1][0] >= e  # the next token starts at or after the step end
            checked += 1
            straddled += te > e
    assert checked > 300
    assert straddled > 0  # BPE merged "><" across a step boundary: the case the reference code gets wrong


def test_place_step_rewards():
    dense = place_step_rewards([0.5, -0.5, 0.25], [1, 3, 3], num_tokens=5)
    assert dense.tolist() == [0.0, 0.5, 0.0, -0.25, 0.0]
    assert place_step_rewards([1.0], [9], num_tokens=4).tolist() == [0.0] * 4  # beyond truncation: dropped
    with pytest.raises(ValueError, match="2 step rewards but 1 token indices"):
        place_step_rewards([1.0, 2.0], [0], 3)
    assert place_step_rewards([], [], 2).dtype == torch.float32


def test_outcome_rewards_truncated_completions_get_zero_and_are_counted():
    correct = [True, True, False, False, False]
    truncated = [False, True, False, True, False]
    answered = [True, True, True, False, False]
    rewards, counts = outcome_rewards(correct, truncated, answered)
    assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0]  # the truncated copy of the right answer gets 0
    assert counts == {"truncated": 2, "no_answer": 2, "correct": 1}  # a truncated right answer is not rewarded
    r, _ = outcome_rewards([True], [False], [True], format_scores=[1.0], format_weight=0.5)
    assert r == [1.5]
    with pytest.raises(ValueError, match="got 1 verdicts, 2 truncation flags"):
        outcome_rewards([True], [False, False], [True])

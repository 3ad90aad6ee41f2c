"""Tests of tango_steps.method.rewards (docs/method.md §4, §5)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from tango_steps.method.formats import format_solution, parse_solution
from tango_steps.method.rewards import (
    outcome_reward,
    outcome_rewards,
    sampled_step_end_tokens,
    step_rewards,
    verifier_reward,
)


# The offset method: an independent way to find the token holding each step's last character, from
# the tokenizer's character offsets of its OWN split. The pipeline works on sampled ids instead
# (sampled_step_end_tokens); on canonical ids both must agree.
def step_end_token_indices(step_spans: Sequence[tuple[int, int]], offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Index of the last token of each step (docs/method.md §4 "placed on the last token of step k").

    The last token of a step spanning characters ``[start, end)`` is the last token that starts
    before ``end``, i.e. the token holding character ``end - 1`` even when that token runs on past
    the step (BPE may merge ``>`` with a following newline). Tokens with empty offsets (special
    tokens) are ignored. A step whose end lies beyond the tokenised text (a truncated decode) maps to
    the last token.

    Args:
        step_spans: character spans of the steps, as ``ParsedSolution.step_spans``.
        offsets: ``(start, end)`` character offsets of each response token, as returned by a fast
            tokenizer with ``return_offsets_mapping=True`` on the response text.

    Returns:
        One token index per step, non-decreasing; ``-1`` for a step before any token.
    """
    starts = [s if e > s else None for s, e in offsets]
    out: list[int] = []
    t = -1
    for _, end in step_spans:
        # Advance to the last non-empty token with start < end (spans are increasing, so t only grows).
        while t + 1 < len(starts) and (starts[t + 1] is None or starts[t + 1] < end):
            t += 1
        last = t
        while last >= 0 and starts[last] is None:
            last -= 1
        out.append(last)
    return out


def token_offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    """Character offsets of the tokens of ``text`` (no special tokens), from a fast HF tokenizer (docs/method.md §4)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [tuple(o) for o in enc["offset_mapping"]]


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
        (None, True, 1.0, 0.0),  # unparseable final verdict: zero reward (docs/method.md §2)
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


def test_sampled_step_end_tokens_equal_offset_method_on_canonical_ids(tiny_tokenizer):
    rng = random.Random(0)
    for _ in range(30):
        steps = [f"{rng.randint(0, 20)} + {rng.randint(1, 9)} = {rng.randint(0, 30)}" for _ in range(rng.randint(1, 4))]
        text = format_solution(steps, str(rng.randint(0, 30)))
        spans = parse_solution(text).step_spans
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert sampled_step_end_tokens(tiny_tokenizer, ids, spans) == step_end_token_indices(
            spans, token_offsets(tiny_tokenizer, text)
        )

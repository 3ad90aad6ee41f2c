"""Tests of tango_steps.method.formats and tango_steps.tasks.templates (docs/method.md §2, §5)."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tango_steps.method.formats import (
    find_blocks,
    format_solution,
    format_verification,
    last_boxed,
    parse_solution,
    parse_verification,
    verifier_format_score,
)
from tango_steps.tasks.templates import COMPACT, FULL, PromptTemplate, get_template, register_template, render_solution

GOOD = "<think><step>2+3=5</step><step>5*4=20</step></think>\n<answer>\\boxed{20}</answer>"


# ----------------------------------------------------------------------------------------------
# parse_solution
# ----------------------------------------------------------------------------------------------


def test_parse_good_solution_steps_spans_answer():
    p = parse_solution(GOOD)
    assert p.steps == ["2+3=5", "5*4=20"]
    assert p.num_steps == 2
    for (s, e), step in zip(p.step_spans, p.steps, strict=True):
        assert GOOD[s:e] == f"<step>{step}</step>"
    assert p.step_spans[0] == (7, 25)
    assert p.answer == "20"
    assert p.format_score == 1.0
    assert p.well_formed


def test_format_solution_round_trips():
    text = format_solution(["a = 1", "b = a + 1"], "\\frac{1}{2}")
    p = parse_solution(text)
    assert p.steps == ["a = 1", "b = a + 1"]
    assert p.answer == "\\frac{1}{2}"
    assert p.format_score == 1.0


def test_answer_nested_braces_and_last_box_wins():
    p = parse_solution("<think><step>x</step></think><answer>\\boxed{1} so \\boxed{\\frac{a}{\\sqrt{b}}}</answer>")
    assert p.answer == "\\frac{a}{\\sqrt{b}}"


def test_answer_from_last_answer_block_only():
    text = "\\boxed{7}<think><step>x</step></think><answer>\\boxed{1}</answer><answer>\\boxed{2}</answer>"
    p = parse_solution(text)
    assert p.answer == "2"
    assert p.format_score == 0.0  # two <answer> blocks: not the exact envelope


def test_escaped_braces_do_not_confuse_box_matching():
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"


@pytest.mark.parametrize(
    ("text", "steps", "answer", "score"),
    [
        ("", [], None, 0.0),
        ("   ", [], None, 0.0),
        ("no tags at all, the answer is 5", [], None, 0.0),
        ("<step>unclosed", [], None, 0.0),
        ("</step>close first<step>", [], None, 0.0),
        ("<step>a<step>b</step>c</step>", ["a<step>b"], None, 0.0),  # non-greedy: first close pairs
        ("<step></step>", [""], None, 0.0),
        ("<think><step>a</step></think><answer>5</answer>", ["a"], None, 0.5),  # no box
        ("<think></think><answer>\\boxed{5}</answer>", [], "5", 0.5),  # no steps
        ("<think>intro<step>a</step></think><answer>\\boxed{5}</answer>", ["a"], "5", 0.8),  # stray text
        ("<think><step>a</step></think><answer>\\boxed{5}", ["a"], None, 0.0),  # truncated answer
        ("<think><step>a</step></think><answer>\\boxed{5</answer>", ["a"], None, 0.5),  # unbalanced box
        ("<think><step>a</step><answer>\\boxed{5}</answer>", ["a"], "5", 0.0),  # no </think>
        ("prefix <think><step>a</step></think><answer>\\boxed{5}</answer>", ["a"], "5", 0.0),
        ("<think><step>a</step></think><answer>\\boxed{5}</answer> trailing", ["a"], "5", 0.0),
        ("<answer>\\boxed{5}</answer><think><step>a</step></think>", ["a"], "5", 0.0),  # wrong order
        ("<think><think><step>a</step></think><answer>\\boxed{5}</answer>", ["a"], "5", 0.0),
        ("<STEP>a</STEP>", [], None, 0.0),  # tags are case-sensitive
        ("<think><step>∑ é 😀</step></think><answer>\\boxed{π}</answer>", ["∑ é 😀"], "π", 1.0),
        ("<think><step>a</step></think><answer>\\boxed{}</answer>", ["a"], "", 1.0),  # empty box
        ("<think><step>a</step></think><answer>\\boxed {5}</answer>", ["a"], "5", 1.0),
        ("\x00\x01<step>\ufffd</step>", ["\ufffd"], None, 0.0),
    ],
)
def test_parse_solution_malformed_table(text, steps, answer, score):
    p = parse_solution(text)
    assert p.steps == steps
    assert p.answer == answer
    assert p.format_score == pytest.approx(score)
    assert len(p.step_spans) == len(p.steps)


@pytest.mark.parametrize("bad", [None, 123, b"<step>x</step>"])
def test_parse_solution_non_string_never_raises(bad):
    p = parse_solution(bad)
    assert p.format_score == 0.0


def test_parse_one_megabyte_of_noise_fast():
    rng = random.Random(0)
    alphabet = ["<step>", "</step>", "<think>", "</answer>", "\\boxed{", "{", "}", "x", " ", "\n", "\\"]
    text = "".join(rng.choice(alphabet) for _ in range(400_000))[:1_000_000]
    t0 = time.perf_counter()
    parse_solution(text)
    parse_verification(text, 3)
    parse_solution("<step>" * 200_000)
    parse_verification("<step_verification>" + "<step>\\boxed{" * 100_000, 5)
    assert time.perf_counter() - t0 < 20.0  # linear scanning; a backtracking regex takes hours


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_fuzz_arbitrary_text(text):
    p = parse_solution(text)
    assert 0.0 <= p.format_score <= 1.0
    for (s, e), step in zip(p.step_spans, p.steps, strict=True):
        assert text[s:e] == "<step>" + step + "</step>"
    v = parse_verification(text, 2)
    assert 0.0 <= v.format_score <= 1.0


_pieces = st.sampled_from(
    ["<step>", "</step>", "<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "}", "{", "CORRECT",
     "INCORRECT", "<step_verification>", "</step_verification>", "<final_verification>", "</final_verification>",
     "x", " ", "\n"]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(_pieces, max_size=40), st.integers(min_value=0, max_value=5))
def test_parse_fuzz_tag_soup(pieces, k):
    text = "".join(pieces)
    p = parse_solution(text)
    assert 0.0 <= p.format_score <= 1.0
    v = parse_verification(text, k)
    assert v.step_verdicts is None or len(v.step_verdicts) == k
    assert 0.0 <= v.format_score <= 1.0


# ----------------------------------------------------------------------------------------------
# parse_verification and the verifier format score (docs/method.md §5)
# ----------------------------------------------------------------------------------------------


def test_parse_good_verification():
    text = format_verification([True, False, True], final_verdict=False, analyses=["ok", "7*3 is 21 not 24", ""])
    v = parse_verification(text, 3)
    assert v.step_verdicts == [True, False, True]
    assert v.final_verdict is False
    assert v.format_score == 1.0
    assert v.num_judged == 3
    assert "Step 2 Analysis: 7*3 is 21 not 24 \\boxed{INCORRECT}" in text


SV = "<step_verification>{}</step_verification>\n<final_verification>{}</final_verification>"
S_OK = "<step>Step 1 Analysis: fine \\boxed{CORRECT}</step>"
S_BAD = "<step>Step 2 Analysis: wrong \\boxed{INCORRECT}</step>"


@pytest.mark.parametrize(
    ("text", "k", "well_formed", "step_verdicts", "final", "score"),
    [
        (SV.format(S_OK + S_BAD, "\\boxed{CORRECT}"), 2, True, [True, False], True, 1.0),
        (SV.format(S_OK + S_BAD, "\\boxed{INCORRECT}"), 2, True, [True, False], False, 1.0),
        # count != K: no step verdicts, -0.8 (only for a well-formed solution)
        (SV.format(S_OK, "\\boxed{CORRECT}"), 2, True, None, True, 0.2),
        (SV.format(S_OK, "\\boxed{CORRECT}"), 2, False, None, True, 1.0),
        # no step blocks: -0.8, and count != K: another -0.8
        (SV.format("", "\\boxed{CORRECT}"), 2, True, None, True, 0.0),
        (SV.format("", "\\boxed{CORRECT}"), 0, True, [], True, 0.2),
        # final not exactly a boxed verdict: -0.8 (but the verdict is still read leniently)
        (SV.format(S_OK + S_BAD, "The answer is \\boxed{correct}"), 2, True, [True, False], True, 0.2),
        (SV.format(S_OK + S_BAD, "\\boxed{\\text{INCORRECT}}"), 2, True, [True, False], False, 0.2),
        (SV.format(S_OK + S_BAD, "\\boxed{MAYBE}"), 2, True, [True, False], None, 0.2),
        (SV.format(S_OK + S_BAD, "CORRECT"), 2, True, [True, False], None, 0.2),
        # stray text between step blocks: -0.4
        (SV.format(S_OK + " hmm " + S_BAD, "\\boxed{CORRECT}"), 2, True, [True, False], True, 0.6),
        # not the exact envelope: 0
        ("x" + SV.format(S_OK + S_BAD, "\\boxed{CORRECT}"), 2, True, [True, False], True, 0.0),
        (SV.format(S_OK + S_BAD, "\\boxed{CORRECT}") + " bye", 2, True, [True, False], True, 0.0),
        ("<step_verification>" + S_OK + S_BAD, 2, True, None, None, 0.0),  # truncated
        ("<final_verification>\\boxed{CORRECT}</final_verification>", 0, True, [], True, 0.0),
        ("", 2, True, None, None, 0.0),
        ("", 0, True, [], None, 0.0),
        # a step block without a verdict makes the verdicts unusable
        (SV.format(S_OK + "<step>no box</step>", "\\boxed{CORRECT}"), 2, True, None, True, 1.0),
        # two final blocks: last one read, envelope not exact
        (SV.format(S_OK, "\\boxed{CORRECT}") + "<final_verification>\\boxed{INCORRECT}</final_verification>",
         1, True, [True], False, 0.0),
        # nested boxes inside a step: the last box counts
        (SV.format("<step>\\boxed{INCORRECT} no wait \\boxed{CORRECT}</step>", "\\boxed{CORRECT}"),
         1, True, [True], True, 1.0),
    ],
)  # fmt: skip
def test_parse_verification_table(text, k, well_formed, step_verdicts, final, score):
    v = parse_verification(text, k, solution_well_formed=well_formed)
    assert v.step_verdicts == step_verdicts
    assert v.final_verdict == final
    assert v.format_score == pytest.approx(score)
    assert verifier_format_score(text, k, well_formed) == pytest.approx(score)


def test_format_verification_checks_lengths():
    with pytest.raises(ValueError, match="2 analyses for 1 step verdicts"):
        format_verification([True], True, analyses=["a", "b"])


def test_find_blocks_matches_non_greedy_regex():
    import re

    rng = random.Random(1)
    for _ in range(200):
        text = "".join(rng.choice(["<step>", "</step>", "a", "b"]) for _ in range(rng.randint(0, 30)))
        expected = [m.span() for m in re.finditer(r"<step>(.*?)</step>", text, re.DOTALL)]
        assert find_blocks(text, "<step>", "</step>") == expected


# ----------------------------------------------------------------------------------------------
# templates
# ----------------------------------------------------------------------------------------------


def test_templates_render_and_keep_braces():
    p = parse_solution(GOOD)
    for tpl in (FULL, COMPACT):
        g = tpl.generator_prompt("What is {solution} 2+2?")
        assert "What is {solution} 2+2?" in g  # single-pass substitution: user text is not re-expanded
        v = tpl.verifier_prompt("Q?", p)
        assert "<step>2+3=5</step>" in v and "Final answer: 20" in v and "2 steps" in v
    assert "\\boxed{FINAL}" in FULL.generator
    assert get_template("compact") is COMPACT


def test_render_solution_without_steps_shows_raw_text():
    assert render_solution(parse_solution("just 5"), "just 5") == "just 5"
    assert render_solution(parse_solution(""), "") == "(empty solution)"


def test_template_validation_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown prompt template 'ful'; known: compact, full"):
        get_template("ful")
    with pytest.raises(ValueError, match=r"verifier template lacks \{num_steps\}"):
        PromptTemplate("x", "{problem}", "{problem} {solution}")
    with pytest.raises(ValueError, match=r"generator template may not use \{solution\}"):
        PromptTemplate("x", "{problem}{solution}", "{problem}{solution}{num_steps}")
    with pytest.raises(ValueError, match="generator must be a non-empty string"):
        PromptTemplate("x", "  ", "{problem}{solution}{num_steps}")
    with pytest.raises(ValueError, match="already registered"):
        register_template(PromptTemplate("full", "{problem}", "{problem}{solution}{num_steps}"))


def test_register_custom_template():
    from tango_steps.tasks import templates

    tpl = PromptTemplate("mine", "Q: {problem}\nA:", "{problem}|{solution}|{num_steps}")
    try:
        register_template(tpl)
        assert get_template("mine").generator_prompt("1+1") == "Q: 1+1\nA:"
    finally:
        templates.TEMPLATES.pop("mine", None)


def test_the_final_verdict_from_the_steps_is_their_and():
    """Issue #36, ``verifier.final_from_steps``: the final verdict is the AND of the usable step verdicts, whatever the
    verifier wrote; unusable step verdicts give no verdict (INCORRECT, no reward); the written final still counts in
    the format score."""
    from tango_steps.method.formats import format_verification, parse_verification

    text = format_verification([True, False, True], True)  # writes CORRECT, flags step 2
    assert parse_verification(text, 3).final_verdict is True
    v = parse_verification(text, 3, final_from_steps=True)
    assert v.final_verdict is False and v.step_verdicts == [True, False, True] and v.format_score == 1.0
    clean = format_verification([True, True], False)  # writes INCORRECT, flags nothing
    assert parse_verification(clean, 2, final_from_steps=True).final_verdict is True
    assert parse_verification(clean, 3, final_from_steps=True).final_verdict is None  # 2 verdicts for 3 steps


def test_final_from_steps_is_a_verifier_option_with_a_consistent_warm_up():
    from tango_steps.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"generator\.final_from_steps"):
        load_config(overrides={"generator": {"final_from_steps": True}})
    with pytest.raises(ConfigError, match="self_check_and"):  # self_check's final target is the outcome label
        load_config(overrides={"verifier": {"final_from_steps": True}})
    cfg = load_config(overrides={"verifier": {"final_from_steps": True, "warmup": "self_check_and"}})
    assert cfg.verifier.final_from_steps
    load_config(overrides={"verifier": {"final_from_steps": True, "warmup": "outcome"}})  # AND-consistent already


def test_the_self_check_and_warm_up_targets_the_and_of_its_step_targets():
    """The B2 warm-up: self_check's step targets (the generator's redo of each step), the final target their AND,
    never the outcome label; the plain recipe keeps the outcome label."""
    from tango_steps.method.formats import parse_verification
    from tango_steps.rollout.base import Completion
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template
    from tango_steps.training.warmup import self_check_rows

    task, template = get_task("arithmetic"), get_template("compact")
    problems = task.problems(40, "train", 0)
    # gold solutions, every other one with a wrong final answer: both classes
    texts = [p.gold_solution.replace("\\boxed{", "\\boxed{1" if i % 2 else "\\boxed{") for i, p in enumerate(problems)]

    class Redo:  # the "generator" redoes every step wrong: every step is flagged
        def generate(self, prompts, settings):
            return [[Completion("999</step>", [1], None, "stop")] for _ in prompts]

    for rule in (False, True):
        rows, _ = self_check_rows(task, template, Redo(), problems, texts, seed=0, final_from_steps=rule)
        finals = [parse_verification(r["completion"], 99).final_verdict for r in rows]
        steps = [r["completion"].count("INCORRECT") for r in rows]
        if rule:
            assert all(f is False for f, n in zip(finals, steps, strict=True) if n), "a flagged step: final INCORRECT"
        else:
            assert any(f is True for f in finals)  # correct gold solutions keep the outcome label CORRECT


def test_a_new_verifier_recipe_reuses_the_shipped_generator(monkeypatch, tmp_path):
    """Issue #36: the ``self_check_and`` warm-up (a verifier recipe the repository does not ship) starts from the
    SHIPPED generator of the same generator settings instead of warming one up again (~10 minutes on 2 cores)."""
    from dataclasses import replace

    from tango_steps.training import warmup

    settings = replace(warmup.WarmupSettings(), verifier_recipe="self_check_and")
    assert not (warmup.SHIPPED / settings.key()).exists()  # the pair is not shipped: its verifier is built

    def no_warm_up(*a, **k):
        raise AssertionError("the generator was warmed up again")

    monkeypatch.setattr(warmup, "warm_up_generator", no_warm_up)
    monkeypatch.setenv("TANGO_CACHE", str(tmp_path))
    folder, report = warmup.warmed_up_generator(settings)
    assert (folder / "generator" / "config.json").exists() and folder.parent == warmup.SHIPPED
    assert report["generator_heldout"] and "verifier_heldout" not in report

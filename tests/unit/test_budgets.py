"""Token budgets measured on the task's gold data at start; verifier prompts cut at the solution's tail (issue #12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tango_steps.config import ConfigError, load_config
from tango_steps.method.formats import format_solution, parse_solution
from tango_steps.pipeline.budgets import check_budgets, measure, needed, percentile, run_tokenizer
from tango_steps.tasks.templates import CUT_MARK, get_template

REPO = Path(__file__).resolve().parents[2]


def test_percentile_and_margin():
    assert percentile(list(range(1, 101))) == 99
    assert percentile([5]) == 5 and percentile([]) == 0
    assert needed(100) == 110


@pytest.mark.parametrize("recipe", ["tiny.yaml", "ablation.yaml", "study.yaml", "last_letters.yaml"])
def test_the_tiny_recipes_hold_their_tasks(recipe):
    cfg = load_config(REPO / "configs" / recipe)
    lengths = check_budgets(cfg)
    assert 0 < lengths["train_solution"] and needed(lengths["heldout_solution"]) <= cfg.evaluation.max_tokens


def test_a_self_check_verifier_needs_room_for_its_analyses():
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    tok = run_tokenizer(cfg, "generator")

    def verification(warmup: str) -> int:
        return measure(
            cfg.model_copy(update={"verifier": cfg.verifier.model_copy(update={"warmup": warmup})}), tok, tok
        )["verification"]

    assert verification("self_check") > verification("outcome")


def test_last_letters_at_the_old_study_limits_is_rejected_naming_the_fields():
    """The first study's recipe (96 new / 128 prompt tokens) cut last_letters' gold solutions."""
    cfg = load_config(REPO / "configs" / "ablation.yaml", {"task": {"name": "last_letters"}})
    tok = run_tokenizer(cfg, "generator")
    lengths = measure(cfg, tok, tok)
    assert lengths["heldout_solution"] > 96  # held-out problems have up to 12 words
    with pytest.raises(ConfigError) as e:
        check_budgets(cfg, tok, tok)
    msg = str(e.value)
    assert "generator_sampling.max_tokens: 96 is too small for task 'last_letters'" in msg
    assert "evaluation.max_tokens: 96 is too small" in msg
    assert f"set it to at least {needed(lengths['heldout_solution'])}" in msg


def test_verifier_prompt_keeps_the_problem_and_cuts_the_solution_tail(tiny_tokenizer):
    template = get_template("compact")
    question = "Evaluate left to right: 12 + 7 * 3 - 5"
    text = format_solution(["12 + 7 = 19", "19 * 3 = 57", "57 - 5 = 52"], "52")
    parsed = parse_solution(text)

    def count(s: str) -> int:
        return len(tiny_tokenizer(s, add_special_tokens=False)["input_ids"])

    full = template.verifier_prompt(question, parsed, text)
    prompt, cut = template.fit_verifier_prompt(question, parsed, text, count, count(full))
    assert (prompt, cut) == (full, False)
    limit = count(full) - 10
    prompt, cut = template.fit_verifier_prompt(question, parsed, text, count, limit)
    assert cut and count(prompt) <= limit
    assert prompt.startswith(f"Problem: {question}\nSolution:\n<step>12 + 7 = 19</step>")  # the start survives
    assert CUT_MARK in prompt and "Final answer: 52" not in prompt  # the tail went
    assert prompt.endswith("Check all 3 steps.\nVerification:\n")  # K and the cue survive


def test_a_small_data_file_is_measured_and_its_heldout_limit_named(tmp_path):
    rows = [f'{{"question": "What is {i} + 1?", "answer": "{i} + 1 = {i + 1}\\n#### {i + 1}"}}' for i in range(60)]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("\n".join(rows) + "\n")
    task = {"name": "dataset", "params": {"benchmark": "gsm8k", "path": str(data)}}
    cfg = load_config(REPO / "configs" / "tiny.yaml", {"task": task, "evaluation.heldout_problems": 5})
    tok = run_tokenizer(load_config(REPO / "configs" / "tiny.yaml"), "generator")
    lengths = check_budgets(cfg, tok, tok)  # fewer train rows than the sample: all are measured
    assert set(lengths) == {"generator_prompt"}  # no gold steps: prompts only
    with pytest.raises(ConfigError, match=r"evaluation\.heldout_problems: .*asked for 500 heldout problems"):
        check_budgets(load_config(REPO / "configs" / "tiny.yaml", {"task": task}), tok, tok)


def test_quick_rounds_checks_the_budgets_as_the_flow_does(monkeypatch):
    """Issue #36: benchmarks/studies/quick_rounds.py (how studies run in one process) refuses a budget the flow's
    start refuses, before any model loads; it used to run with answers cut at the budget."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("quick_rounds", REPO / "benchmarks/studies/quick_rounds.py")
    quick = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quick)

    def no_models(*a, **k):
        raise AssertionError("models were loaded before the budgets were checked")

    monkeypatch.setattr(quick, "initial_checkpoints", no_models)
    monkeypatch.setattr(sys, "argv", ["quick_rounds.py", "--rounds", "1", "--set", "evaluation.max_tokens=4"])
    with pytest.raises(ConfigError, match=r"evaluation\.max_tokens"):
        quick.main()

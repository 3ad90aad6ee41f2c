"""The tiny default's warm-up (tango_steps.training.warmup): accuracy band, verifier format, outcome labels only.

The warm-up runs once per cache directory (``TANGO_CACHE``; .ci/run points it into the clone) and
takes minutes on 2 cores: it is the slowest part of the suite, shared with the flow tests.
"""

from __future__ import annotations

import json

import pytest

from tango_steps.method.formats import format_solution
from tango_steps.rollout.hf import HFEngine
from tango_steps.tasks import get_task
from tango_steps.tasks.templates import get_template
from tango_steps.training.warmup import WarmupSettings, generator_accuracy, self_check_rows, verifier_warmup_rows

pytestmark = pytest.mark.slow


def test_generator_lands_in_the_accuracy_band(warmed):
    out, report = warmed
    task = get_task("arithmetic")
    fresh = task.problems(300, "heldout", seed=12345)  # not the problems the stop rule looked at
    m = generator_accuracy(HFEngine(str(out / "generator")), task, get_template("compact"), fresh, 96)
    assert 0.2 <= m["accuracy"] <= 0.7, m
    assert m["format_rate"] >= 0.9, m
    assert 0.2 <= report["generator_heldout"]["accuracy"] <= 0.7


def test_verifier_learned_the_format(warmed):
    _, report = warmed
    assert report["verifier_heldout"]["format_rate"] >= 0.8, report["verifier_heldout"]
    assert report["verifier_data"]["used_per_class"] > 0


class OutcomeOnly:
    """A check result that refuses to give step labels: a warm-up that reads one fails."""

    def __init__(self, correct):
        self.correct = correct

    def __getattr__(self, name):
        raise AssertionError(f"warm-up read step-level field '{name}'")


def test_verifier_warmup_rows_read_outcome_labels_only():
    task = get_task("arithmetic")
    probs = task.problems(4, "train")
    texts = [probs[0].gold_solution, probs[1].gold_solution, format_solution(["1 + 1 = 3"], "3"), "garbage"]

    class Spy:
        def check(self, p, text):
            return OutcomeOnly(task.check(p, text).correct)

    rows, counts = verifier_warmup_rows(Spy(), get_template("compact"), probs, texts, seed=0)
    assert counts == {"correct": 2, "wrong": 2, "used_per_class": 2}
    wrong = [r["completion"] for r in rows if r["completion"].endswith("\\boxed{INCORRECT}</final_verification>")]
    assert len(wrong) == 2
    assert any("\\boxed{INCORRECT}</step>" in w for w in wrong)  # the last step of a wrong solution
    with pytest.raises(RuntimeError, match="needs both correct and wrong generator samples"):
        verifier_warmup_rows(Spy(), get_template("compact"), probs[:2], texts[:2], seed=0)


def test_self_check_rows_use_the_models_recheck_and_outcome_labels_only():
    """The self_check warm-up: step verdicts are a model's re-check of each step, never the task's labels."""
    from tango_steps.rollout.base import Completion

    class Arithmetic:
        """A stand-in generator that redoes "a op b =" correctly, as a perfect calculator would."""

        def __init__(self):
            self.prompts = []

        def generate(self, prompts, sampling):
            self.prompts += prompts
            out = []
            for p in prompts:
                a, op, b = p.rsplit("<step>", 1)[1].removesuffix(" =").split()
                v = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
                out.append([Completion(text=f" {v}</step>", token_ids=[], logprobs=[], finish_reason="stop")])
            return out

    task = get_task("arithmetic")
    p = task.make_problem(12, [("+", 7), ("*", 3), ("-", 5)])

    class Spy:
        split_step = staticmethod(task.split_step)

        def check(self, problem, text):
            return OutcomeOnly(task.check(problem, text).correct)

    slip = format_solution(["12 + 7 = 19", "19 * 3 = 56", "56 - 5 = 51"], "51")  # step 2 slips, step 3 carries it
    engine = Arithmetic()
    rows, counts = self_check_rows(Spy(), get_template("compact"), engine, [p, p], [p.gold_solution, slip], seed=0)
    assert counts == {"correct": 1, "wrong": 1, "used_per_class": 1, "steps_rechecked": 6, "steps_agreed": 5}
    assert engine.prompts[4].endswith("<think><step>12 + 7 = 19</step><step>19 * 3 =")  # the solution's own prefix
    wrong = next(r["completion"] for r in rows if r["completion"].endswith("\\boxed{INCORRECT}</final_verification>"))
    assert "Step 2 Analysis: 19 * 3 = 57 \\boxed{INCORRECT}" in wrong
    assert "Step 3 Analysis: 56 - 5 = 51 \\boxed{CORRECT}" in wrong  # a carried-over error is not caught
    assert task.split_step("19 * 3 = 57") == ("19 * 3 =", "57") and task.split_step("nonsense") is None
    assert get_task("last_letters").split_step("cherry -> y -> eay") == ("cherry ->", "y -> eay")


def test_the_verifier_recipe_is_part_of_the_warmup_key():
    assert WarmupSettings(verifier_recipe="outcome").key() != WarmupSettings().key()
    assert WarmupSettings(verifier_recipe="self_check").key() == WarmupSettings().key()  # the default
    with pytest.raises(ValueError, match="unknown verifier warm-up 'x'"):
        WarmupSettings(verifier_recipe="x")


def test_run_recipes_map_to_warmup_settings():
    """The arithmetic recipes keep the shipped models' key; a task with long solutions warms up at its run's limit."""
    from pathlib import Path

    from tango_steps.config import load_config
    from tango_steps.training.warmup import warmup_settings

    configs = Path(__file__).resolve().parents[2] / "configs"
    for name in ("tiny.yaml", "ablation.yaml", "reinforce_pp.yaml"):
        assert warmup_settings(load_config(configs / name)).key() == WarmupSettings().key(), name
    small = load_config(configs / "tiny.yaml", {"generator_sampling.max_tokens": 64, "evaluation.max_tokens": 64})
    assert warmup_settings(small).max_new_tokens == WarmupSettings.max_new_tokens  # never below the default
    long = load_config(configs / "tiny.yaml", {"task": {"name": "last_letters"}, "evaluation.max_tokens": 232})
    assert warmup_settings(long).max_new_tokens == 232


def test_verifier_settings_reuse_the_generator_warmup():
    """The generator's cache key ignores the verifier's settings (so a verifier change costs no generator SFT)."""
    from tango_steps.training.warmup import SFTSettings

    base = WarmupSettings()
    for other in (
        WarmupSettings(verifier_recipe="outcome"),
        WarmupSettings(verifier_solutions=64),
        WarmupSettings(verifier_sft=SFTSettings(max_steps=1)),
    ):
        assert other.generator_key() == base.generator_key() and other.key() != base.key()
    assert WarmupSettings(seed=1).generator_key() != base.generator_key()
    assert WarmupSettings(generator_sft=SFTSettings(max_steps=1)).generator_key() != base.generator_key()


def test_two_processes_never_warm_up_the_same_models_twice(tmp_path, monkeypatch):
    """AblationFlow's parallel branches share one warm-up: the second caller waits, then reuses it; a
    second verifier recipe reuses the generator's warm-up."""
    import threading
    import time

    from tango_steps.training import warmup

    calls = []

    def slow_generator(settings, out, log=print):
        calls.append(("generator", out))
        time.sleep(0.5)
        return {"generator_built_by": len(calls)}

    def slow_verifier(settings, generator_dir, out, log=print):
        calls.append(("verifier", out, generator_dir))
        time.sleep(0.5)
        return {"verifier_built_by": len(calls)}

    monkeypatch.setattr(warmup, "warm_up_generator", slow_generator)
    monkeypatch.setattr(warmup, "warm_up", slow_verifier)
    results, logs = [], []
    threads = [
        threading.Thread(target=lambda: results.append(warmup.warmed_up_models(root=tmp_path, log=logs.append)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    gen_dir = tmp_path / "generators" / WarmupSettings().generator_key()
    assert calls == [("generator", gen_dir), ("verifier", tmp_path / WarmupSettings().key(), gen_dir)]
    assert results[0] == results[1] and results[0][1]["generator_built_by"] == 1
    assert results[0][1]["verifier_built_by"] == 2
    assert any("waiting for it" in m for m in logs)
    # a new verifier recipe: only the verifier stage runs, on the same generator
    out, report = warmup.warmed_up_models(WarmupSettings(verifier_recipe="outcome"), root=tmp_path)
    assert calls[-1] == ("verifier", out, gen_dir) and len(calls) == 3
    assert report["generator_built_by"] == 1 and json.loads((out / "report.json").read_text()) == report


def test_warmup_sft_trains_in_fp32_without_checkpointing_on_cpu(tmp_path):
    """TRL's SFTConfig defaults to bf16 and gradient checkpointing even on CPU: emulated bf16 is slow
    on CPUs without native bf16 and rounds differently per CPU, so warm-ups diverged across machines."""
    import torch

    from tango_steps.training.warmup import SFTSettings, sft_config

    cfg = sft_config(SFTSettings(), 0, str(tmp_path))
    assert cfg.bf16 == torch.cuda.is_available() and not cfg.gradient_checkpointing
    assert cfg.completion_only_loss and cfg.use_cpu == (not torch.cuda.is_available())

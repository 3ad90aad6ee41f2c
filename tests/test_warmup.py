"""The tiny default's warm-up (tango_steps.warmup): accuracy band, verifier format, outcome labels only.

The warm-up runs once per cache directory (``TANGO_CACHE``; .ci/run points it into the clone) and
takes minutes on 2 cores: it is the slowest part of the suite, shared with the flow tests.
"""

from __future__ import annotations

import json

import pytest

from tango_steps.formats import format_solution
from tango_steps.rollout import HFEngine
from tango_steps.tasks import get_task
from tango_steps.templates import get_template
from tango_steps.warmup import generator_accuracy, verifier_warmup_rows

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


def test_verifier_warmup_rows_read_outcome_labels_only():
    class OutcomeOnly:
        """A check result that refuses to give step labels."""

        def __init__(self, correct):
            self.correct = correct

        def __getattr__(self, name):
            raise AssertionError(f"verifier warm-up read step-level field '{name}'")

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


def test_two_processes_never_warm_up_the_same_models_twice(tmp_path, monkeypatch):
    """AblationFlow's parallel branches share one warm-up: the second caller waits, then reuses it."""
    import threading
    import time

    from tango_steps import warmup

    calls = []

    def slow_warm_up(settings, out, log=print):
        calls.append(out)
        time.sleep(0.5)
        report = {"built_by": len(calls)}
        (out / "report.json").write_text(json.dumps(report))
        return report

    monkeypatch.setattr(warmup, "warm_up", slow_warm_up)
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
    assert len(calls) == 1
    assert [r[1] for r in results] == [{"built_by": 1}] * 2 and results[0][0] == results[1][0]
    assert any("waiting for it" in m for m in logs)

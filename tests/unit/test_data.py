"""The repository's data/ folder: the shipped warmed-up tiny models are the current default warm-up."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from tango_steps.training.warmup import SHIPPED, WarmupSettings, warmed_up_models

REBUILD = "stale shipped tiny models: rebuild them with `python data/build_tiny_models.py`"


def test_shipped_tiny_models_are_the_current_default_warmup():
    settings = WarmupSettings()
    assert sorted(p.name for p in SHIPPED.iterdir()) == [settings.key()], REBUILD
    folder = SHIPPED / settings.key()
    roles = ("generator", "verifier")
    keys = {role: json.loads((folder / role / "tango.json").read_text())["warmup_key"] for role in roles}
    assert keys == {"generator": settings.generator_key(), "verifier": settings.key()}, REBUILD
    report = json.loads((folder / "report.json").read_text())
    assert report["settings"] == json.loads(json.dumps(asdict(settings), default=str))


def test_the_default_warmup_is_read_from_data_not_rebuilt(monkeypatch):
    from tango_steps.training import warmup

    def refuse(*args, **kwargs):
        raise AssertionError("the default warm-up was rebuilt although data/ ships it")

    monkeypatch.setattr(warmup, "warm_up_generator", refuse)
    monkeypatch.setattr(warmup, "warm_up", refuse)
    out, report = warmed_up_models()
    assert out == SHIPPED / WarmupSettings().key() and (out / "verifier" / "model.safetensors").exists()
    assert 0.2 <= report["generator_heldout"]["accuracy"] <= 0.7
    # other settings (another seed) are never served from data/: they build into the cache
    with pytest.raises(AssertionError, match="rebuilt"):
        warmed_up_models(WarmupSettings(seed=12345))


@pytest.mark.parametrize("task", ["arithmetic", "last_letters"])
def test_shipped_heldout_sets_are_what_the_task_generates(task):
    """data/heldout/<task>.jsonl is the task's held-out list (rebuild: python data/build_heldout.py)."""
    from tango_steps.tasks import get_task
    from tango_steps.tasks.heldout import HELDOUT_DIR, SHIPPED_SIZE, generated, heldout_set

    rows = [json.loads(line) for line in (HELDOUT_DIR / f"{task}.jsonl").read_text().splitlines()]
    want = [json.loads(json.dumps(p.to_dict())) for p in generated(task, SHIPPED_SIZE)]
    assert rows == want, "stale held-out file: rebuild it with `python data/build_heldout.py`"
    assert len({r["id"] for r in rows}) == SHIPPED_SIZE
    loaded = heldout_set(task, 40)
    assert [p.id for p in loaded] == [r["id"] for r in rows[:40]]
    checker = get_task(task)
    for p in loaded:  # problems read back from JSON grade their gold solutions as the generator's do
        check = checker.check(p, p.gold_solution)
        assert check.correct and all(check.step_labels) and check.first_error == -1


def test_heldout_sets_are_shared_by_seeds_and_read_from_the_file(tmp_path, monkeypatch):
    import tango_steps.tasks.heldout as heldout
    from tango_steps.config import TangoConfig
    from tango_steps.round.plan import heldout_problems

    a = heldout_problems(TangoConfig.model_validate({"seed": 0, "evaluation": {"heldout_problems": 7}}))
    b = heldout_problems(TangoConfig.model_validate({"seed": 3, "evaluation": {"heldout_problems": 7}}))
    assert [p.id for p in a] == [p.id for p in b]
    # the file is what is read: a one-line file that differs from the generator changes the list
    fake = dict(a[0].to_dict(), id="arithmetic-from-the-file")
    (tmp_path / "arithmetic.jsonl").write_text(json.dumps(fake) + "\n")
    monkeypatch.setattr(heldout, "HELDOUT_DIR", tmp_path)
    assert [p.id for p in heldout.heldout_set("arithmetic", 1)] == ["arithmetic-from-the-file"]
    # a damaged file is an error naming the file and the line
    (tmp_path / "arithmetic.jsonl").write_text(json.dumps(fake) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"arithmetic.jsonl, line 2: not a held-out problem"):
        heldout.heldout_set("arithmetic", 2)
    # other parameters are drawn from the generator
    assert heldout.heldout_set("arithmetic", 1, {"max_ops": 2})[0].id != "arithmetic-from-the-file"

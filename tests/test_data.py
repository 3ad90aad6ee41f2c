"""The repository's data/ folder: the shipped warmed-up tiny models are the current default warm-up."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from tango_steps.warmup import SHIPPED, WarmupSettings, warmed_up_models

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
    from tango_steps import warmup

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

"""Both warm-up stages end to end on small settings (TRL SFT for real; about 45 s)."""

from __future__ import annotations

import json

from tango_steps.training.warmup import WarmupSettings


def test_both_warmup_stages_run_for_real(tmp_path, warmed):
    """The two stages end to end on small settings: a generator SFT with its accuracy stop, then each
    verifier recipe on the shipped generator (copied into a fresh cache, so only the verifier trains)."""
    import shutil

    from tango_steps.models.tiny import TinyModelSpec
    from tango_steps.training.warmup import SFTSettings, warm_up_generator, warmed_up_models

    small = WarmupSettings(
        generator=TinyModelSpec(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=128),
        generator_sft=SFTSettings(max_steps=4, batch_size=4, warmup_steps=0),
        eval_every=2,
        eval_problems=4,
        target_accuracy=1.0,
    )
    report = warm_up_generator(small, tmp_path / "g")
    assert report["generator_sft"]["steps"] == 4 and [h["step"] for h in report["generator_sft"]["history"]] == [2, 4]
    assert json.loads((tmp_path / "g" / "generator" / "tango.json").read_text())["warmup_key"] == small.generator_key()

    shipped, shipped_report = warmed
    gen = tmp_path / "cache" / "generators" / WarmupSettings().generator_key()
    shutil.copytree(shipped / "generator", gen / "generator")
    (gen / "report.json").write_text(json.dumps({k: shipped_report[k] for k in ("generator_heldout", "vocab_size")}))
    for recipe in ("outcome", "self_check"):
        settings = WarmupSettings(
            verifier_recipe=recipe, verifier_solutions=48, verifier_sft=SFTSettings(max_steps=2, batch_size=4)
        )
        out, report = warmed_up_models(settings, root=tmp_path / "cache")
        assert report["verifier_sft"]["steps"] == 2 and report["verifier_data"]["used_per_class"] > 0
        assert report["generator_heldout"] == shipped_report["generator_heldout"]  # reused, not retrained
        assert {"format_rate", "balanced_accuracy"} <= set(report["verifier_heldout"])
        assert (out / "generator" / "model.safetensors").read_bytes() == (
            gen / "generator" / "model.safetensors"
        ).read_bytes()
        assert json.loads((out / "verifier" / "tango.json").read_text())["warmup_key"] == settings.key()

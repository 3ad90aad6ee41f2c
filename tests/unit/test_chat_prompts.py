"""Prompt formats (``ModelConfig.prompt_format``, issue #14): a chat model sees its chat template in every
stage that samples from it, and the update trains on exactly the prompt ids that were sampled from."""

from __future__ import annotations

import shutil

import pytest

from tango_steps.config import TangoConfig
from tango_steps.rollout import format_prompts, prepare_prompts
from tango_steps.rollout.hf import HFEngine
from tango_steps.round.in_process import InProcessRun
from tango_steps.training import update as training

# a template that changes the text (the tiny models' own template only concatenates the turns)
CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny random model with a chat template that wraps the prompt."""
    from tango_steps.models.loading import load_tokenizer

    out = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_model_dir, out)
    tok = load_tokenizer(str(out))
    tok.chat_template = CHAT
    tok.save_pretrained(out)
    return out


def test_format_prompts_per_setting(tiny_tokenizer, chat_model_dir):
    from tango_steps.models.loading import load_tokenizer

    chat_tok = load_tokenizer(str(chat_model_dir))
    prompts = ["Problem: 1 + 2\nSolution:\n"]
    assert format_prompts(chat_tok, prompts, "raw") == prompts
    assert format_prompts(chat_tok, prompts, "auto") == format_prompts(chat_tok, prompts, "chat")
    assert format_prompts(chat_tok, prompts, "chat") == ["<|user|>Problem: 1 + 2\nSolution:\n<|assistant|>"]
    # the tiny models' template only concatenates: auto leaves their prompts (and results) as they were
    assert format_prompts(tiny_tokenizer, prompts, "auto") == prompts
    tiny_tokenizer.chat_template, saved = None, tiny_tokenizer.chat_template
    try:
        assert format_prompts(tiny_tokenizer, prompts, "auto") == prompts
        with pytest.raises(ValueError, match=r"generator\.prompt_format is 'chat' but its tokenizer has no chat"):
            format_prompts(tiny_tokenizer, prompts, "chat", "generator")
    finally:
        tiny_tokenizer.chat_template = saved
    with pytest.raises(ValueError, match="prompt_format must be 'auto', 'chat' or 'raw'"):
        format_prompts(chat_tok, prompts, "chatml")
    ids, _ = prepare_prompts(chat_tok, prompts, 256, "truncate", "chat")
    assert ids[0] == chat_tok(format_prompts(chat_tok, prompts, "chat")[0], add_special_tokens=False)["input_ids"]
    assert ids[0] != prepare_prompts(chat_tok, prompts, 256, "truncate", "raw")[0][0]


def test_config_rejects_an_unknown_prompt_format():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"verifier\.prompt_format"):
        TangoConfig.model_validate({"verifier": {"prompt_format": "chatml"}})


@pytest.mark.parametrize("prompt_format", ["auto", "raw"])
def test_update_trains_on_the_prompt_ids_it_sampled_from(tmp_path, monkeypatch, chat_model_dir, prompt_format):
    """A verifier round and a generator round (with step rewards, so the verifier judges) and a held-out
    evaluation of a chat model: every prompt the update trains on is one the engine sampled from, and
    with ``auto`` each is the chat-formatted prompt (with ``raw``, the bare one)."""
    from tango_steps.models.loading import load_tokenizer
    from tango_steps.pipeline.driver import initial_checkpoints

    sampled: list[list[int]] = []
    trained: list[list[int]] = []
    generate_batch, pack = HFEngine._generate_batch, training.pack

    def record_generate(self, batch_ids, sampling):
        sampled.extend(list(x) for x in batch_ids)
        return generate_batch(self, batch_ids, sampling)

    def record_pack(batch, idx, pad_id, device):
        out = pack(batch, idx, pad_id, device)
        for r, i in enumerate(idx):  # the prompt part of the packed sequence the loss is computed on
            trained.append(out["ids"][r, : len(batch.prompt_ids[i])].tolist())
        return out

    monkeypatch.setattr(HFEngine, "_generate_batch", record_generate)
    monkeypatch.setattr(training, "pack", record_pack)
    model = {"path": str(chat_model_dir), "prompt_format": prompt_format}
    cfg = TangoConfig.model_validate(
        {
            "rounds": 2, "generator": model, "verifier": model,
            "rollout": {"engine": "hf", "max_prompt_tokens": 192},
            "generator_sampling": {"n": 2, "max_tokens": 16}, "verifier_sampling": {"n": 2, "max_tokens": 24},
            "batch": {"generator_prompts": 2, "verifier_prompts": 2},
            "schedule": {"verifier_warmup_rounds": 1, "generator_per_verifier": 3},
            "generator_update": {"micro_batch_size": 4}, "verifier_update": {"micro_batch_size": 4},
            "evaluation": {"heldout_problems": 3, "max_tokens": 16},
        }
    )  # fmt: skip
    run = InProcessRun(cfg, initial_checkpoints(cfg, tmp_path / "init", log=lambda s: None), tmp_path / "work")
    rounds = [run.round(), run.round()]
    run.evaluate()
    assert [r.plan.slot for r in rounds] == ["verifier", "generator"]
    assert trained and all(t in sampled for t in trained)
    tok = load_tokenizer(str(chat_model_dir))
    header = tok("<|user|>", add_special_tokens=False)["input_ids"]
    wrapped = [s[: len(header)] == header for s in sampled]
    assert all(wrapped) if prompt_format == "auto" else not any(wrapped)
    # the rollout table's ids are the formatted prompt's (what the update's batch is built from)
    ro = rounds[1].rollouts
    fmt = "chat" if prompt_format == "auto" else "raw"
    expected, _ = prepare_prompts(tok, list(ro["prompt"]), 192, "truncate", fmt)
    assert [list(x) for x in ro["prompt_ids"]] == expected

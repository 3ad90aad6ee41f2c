"""Tests of the RL update step (tango_steps.training.update, docs/method.md §6) on a tiny random Qwen2."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from helpers import UPDATE, update_batch
from safetensors.torch import load_file

from tango_steps.method.loss import ppo_clip_loss
from tango_steps.training.batch import RLBatch, pack
from tango_steps.training.checkpoint import init_checkpoint, load_policy, read_state, servable_model, write_checkpoint
from tango_steps.training.logprobs import sequence_logprobs
from tango_steps.training.settings import UpdateSettings
from tango_steps.training.update import rl_update

SETTINGS = UpdateSettings.of(**UPDATE)


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    return update_batch(tiny_tokenizer)


@pytest.fixture()
def ckpt0(tmp_path, tiny_model_dir):
    return init_checkpoint(str(tiny_model_dir), tmp_path / "ckpt0", SETTINGS)


def _surrogate(ckpt: Path, old_ckpt: Path, batch: RLBatch) -> float:
    """PPO-clip surrogate of the policy in ``ckpt`` relative to the one in ``old_ckpt`` on the batch."""
    s = UpdateSettings.of(clip_eps=0.2, kl_coef=0.0, entropy_coef=0.0)
    new, tok, _, _ = load_policy(ckpt, s)
    old, _, _, _ = load_policy(old_ckpt, s)
    t = pack(batch, list(range(len(batch))), tok.pad_token_id, "cpu")
    with torch.no_grad():
        lp, _ = sequence_logprobs(new, t["ids"], t["attn"], 64)
        old_lp, _ = sequence_logprobs(old, t["ids"], t["attn"], 64)
    loss, _ = ppo_clip_loss(lp, old_lp, t["adv"], t["resp"], clip_eps=0.2, kl_coef=0.0, entropy_coef=0.0)
    return loss.item()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_update_lowers_the_loss_on_a_fixed_batch(tmp_path, ckpt0, batch):
    before = _surrogate(ckpt0, ckpt0, batch)  # ratio 1: -token-mean(A)
    m = rl_update(ckpt0, batch, SETTINGS, tmp_path / "ckpt1")
    after = _surrogate(tmp_path / "ckpt1", ckpt0, batch)
    assert after < before - 1e-4
    assert m["updates"] == 1 and m["tokens"] == sum(len(r) for r in batch.response_ids)
    for k in ("loss", "pg_loss", "kl", "entropy", "clip_frac", "grad_norm", "seconds"):
        assert k in m
    assert m["clip_frac"] == 0.0  # one step, on-policy: ratio is exactly 1
    # a second update from the first goes further and counts on
    m2 = rl_update(tmp_path / "ckpt1", batch, SETTINGS, tmp_path / "ckpt2")
    assert m2["updates"] == 2 and m2["kl"] > 0
    assert _surrogate(tmp_path / "ckpt2", ckpt0, batch) < after


def test_update_is_deterministic_and_checkpoint_round_trips_bit_exactly(tmp_path, ckpt0, batch):
    rl_update(ckpt0, batch, SETTINGS, tmp_path / "a")
    rl_update(ckpt0, batch, SETTINGS, tmp_path / "b")
    wa, wb = load_file(tmp_path / "a/model/model.safetensors"), load_file(tmp_path / "b/model/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # load -> save gives identical weights, optimizer state and trainer state
    model, tok, opt, state = load_policy(tmp_path / "a", SETTINGS)
    write_checkpoint(tmp_path / "a2", model, tok, opt.state_dict(), state, SETTINGS)
    w2 = load_file(tmp_path / "a2/model/model.safetensors")
    assert wa.keys() == w2.keys() and all(torch.equal(wa[k], w2[k]) for k in wa)
    o1, o2 = torch.load(tmp_path / "a/optimizer.pt"), torch.load(tmp_path / "a2/optimizer.pt")
    for k in o1["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(o1["state"][k][name], o2["state"][k][name])
    assert read_state(tmp_path / "a") == read_state(tmp_path / "a2")
    # the saved model is a standard HF checkpoint
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "a/model")
    assert torch.equal(hf.state_dict()["lm_head.weight"], wa["lm_head.weight"])


def test_multiple_optimizer_steps_and_gradient_accumulation(tmp_path, ckpt0, batch):
    two = UpdateSettings.of(learning_rate=5e-3, kl_coef=0.0, entropy_coef=0.0, optimizer_steps=2, micro_batch_size=1)
    m = rl_update(ckpt0, batch, two, tmp_path / "two")
    assert m["updates"] == 2
    assert m["clip_frac"] >= 0.0  # second step uses the old log-probs computed before the first
    # micro-batch size must not change the result of a single step (token-mean over the whole batch)
    one_a = UpdateSettings.of(learning_rate=5e-3, kl_coef=0.0, entropy_coef=0.0, micro_batch_size=1)
    one_b = UpdateSettings.of(learning_rate=5e-3, kl_coef=0.0, entropy_coef=0.0, micro_batch_size=6)
    ma = rl_update(ckpt0, batch, one_a, tmp_path / "mb1")
    mb = rl_update(ckpt0, batch, one_b, tmp_path / "mb6")
    # the gradient (norm before clipping) is scale-sensitive, unlike Adam's first step
    assert ma["grad_norm"] == pytest.approx(mb["grad_norm"], rel=1e-5)
    assert ma["loss"] == pytest.approx(mb["loss"], abs=1e-6)
    wa = load_file(tmp_path / "mb1/model/model.safetensors")
    wb = load_file(tmp_path / "mb6/model/model.safetensors")
    # Adam's first step is g / (|g| + eps): parameters with |g| ~ 1e-9 may move differently (<= 1e-3 of lr)
    assert all(torch.allclose(wa[k], wb[k], atol=5e-6) for k in wa)


def test_several_optimizer_steps_with_micro_batches_of_mixed_lengths(tmp_path, ckpt0, batch):
    # old and reference log-probs are computed over other micro-batches than the training ones, so
    # their padded widths differ (this raised "stack expects each tensor to be equal size" before)
    s = UpdateSettings.of(learning_rate=5e-3, kl_coef=0.01, entropy_coef=0.0, optimizer_steps=2, micro_batch_size=2)
    m = rl_update(ckpt0, batch, s, tmp_path / "two")
    assert m["updates"] == 2
    assert math.isfinite(m["loss"]) and m["kl"] >= 0.0


def test_ratio_to_current_makes_each_optimizer_step_a_plain_gradient_step(tmp_path, ckpt0, batch):
    """The sft objective (ratio_to_current): 3 steps in one update == 3 chained one-step updates on the slices.

    Without it, steps 2-3 compare against the policy before step 1 and the PPO clip drops tokens
    whose probability rose past 1 + eps (large learning rate here, so it happens).
    """
    ones = RLBatch(batch.prompt_ids, batch.response_ids, [[1.0] * len(r) for r in batch.response_ids])
    kw = {"learning_rate": 5e-2, "kl_coef": 0.0, "entropy_coef": 0.0, "micro_batch_size": 2}
    fresh = UpdateSettings.of(optimizer_steps=3, ratio_to_current=True, **kw)
    m = rl_update(ckpt0, ones, fresh, tmp_path / "fresh")
    assert m["updates"] == 3 and m["clip_frac"] == 0.0
    prev = ckpt0
    for s in range(3):  # the same slices rl_update takes (all_idx[s::3]), AdamW state carried by the checkpoint
        idx = list(range(len(ones)))[s::3]
        part = RLBatch(*([getattr(ones, f)[i] for i in idx] for f in ("prompt_ids", "response_ids", "advantages")))
        rl_update(prev, part, UpdateSettings.of(**kw), tmp_path / f"step{s}")
        prev = tmp_path / f"step{s}"
    wa, wb = load_file(tmp_path / "fresh/model/model.safetensors"), load_file(prev / "model/model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    clipped = rl_update(ckpt0, ones, UpdateSettings.of(optimizer_steps=3, **kw), tmp_path / "clipped")
    assert clipped["clip_frac"] > 0.0


def test_nan_loss_fails_clearly_and_leaves_checkpoint_intact(tmp_path, ckpt0, batch):
    before = _digest(ckpt0)
    bad = RLBatch(batch.prompt_ids, batch.response_ids, [[float("nan")] * len(r) for r in batch.response_ids])
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* left as it was"):
        rl_update(ckpt0, bad, SETTINGS, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]  # no half-written temp dir
    assert _digest(ckpt0) == before


def test_existing_output_is_never_overwritten(tmp_path, ckpt0, batch):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        rl_update(ckpt0, batch, SETTINGS, tmp_path / "taken")


def test_lora_update_reference_is_base_with_adapters_disabled(tmp_path, tiny_model_dir, batch, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TANGO_CACHE", str(tmp_path / "cache"))  # where merged models are built
    lora = UpdateSettings.of(learning_rate=2e-2, kl_coef=0.05, entropy_coef=0.0, lora={"r": 4, "alpha": 8})
    c0 = init_checkpoint(str(tiny_model_dir), tmp_path / "l0", lora)
    assert read_state(c0).lora_base is not None
    m = rl_update(c0, batch, lora, tmp_path / "l1")
    assert m["kl"] == 0.0  # first step: adapter B = 0, policy equals the base
    m2 = rl_update(tmp_path / "l1", batch, lora, tmp_path / "l2")
    assert m2["kl"] > 0.0
    # after the first checkpoint (the base), a LoRA checkpoint holds the adapter only: small I/O per update
    size = lambda d: sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())  # noqa: E731
    assert not list((tmp_path / "l2/model").glob("*.safetensors")) and (tmp_path / "l2/adapter").exists()
    assert size(tmp_path / "l2/adapter") < size(tmp_path / "l0/model") / 5
    # engines load the base with the adapter merged, built once per adapter and reused
    served = servable_model(tmp_path / "l2")
    assert servable_model(tmp_path / "l2") == served and servable_model(c0) == c0 / "model"
    base = load_file(Path(tiny_model_dir) / "model.safetensors")
    merged = load_file(served / "model.safetensors")
    assert set(base) == set(merged)  # merged weights in the standard layout: HF and vLLM load it as is
    assert any(not torch.equal(base[k], merged[k]) for k in base)
    # the merged model computes what the policy (base + adapter) computes
    policy = load_policy(tmp_path / "l2", lora)[0].eval()
    ids = torch.tensor([batch.prompt_ids[0] + batch.response_ids[0]])
    with torch.no_grad():
        want = policy(ids).logits
        got = AutoModelForCausalLM.from_pretrained(served)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="holds a LoRA adapter but the settings ask for full fine-tuning"):
        load_policy(tmp_path / "l2", SETTINGS)


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"learning_rate": 0}, "learning_rate: Input should be greater than 0"),
        ({"optimizer_steps": 0}, "optimizer_steps: Input should be greater than or equal to 1"),
        ({"dtype": "fp8"}, "dtype: Input should be 'auto', 'float32' or 'bfloat16'"),
        ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
    ],
)
def test_settings_errors(kwargs, msg):
    """The settings are the schema's section: a bad value is refused by the schema, naming the field."""
    with pytest.raises(ValueError, match=msg):
        UpdateSettings.of(**kwargs)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        UpdateSettings.of(temperature=0.0)


def test_batch_errors():
    with pytest.raises(ValueError, match="sample 0: 2 response tokens but 1 advantages"):
        RLBatch([[1]], [[1, 2]], [[0.0]])
    with pytest.raises(ValueError, match="empty prompt"):
        RLBatch([[]], [[1]], [[0.0]])
    with pytest.raises(ValueError, match="RLBatch is empty"):
        RLBatch([], [], [])


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="is not a policy checkpoint"):
        load_policy(tmp_path, SETTINGS)


def test_reference_model_can_be_overridden(tmp_path, ckpt0, batch, tiny_model_dir):
    m_same = rl_update(ckpt0, batch, SETTINGS, tmp_path / "same")
    assert m_same["kl"] == 0.0  # the first checkpoint IS the reference
    other = rl_update(ckpt0, batch, SETTINGS, tmp_path / "other")  # a different model to serve as reference
    assert other["updates"] == 1
    m_moved = rl_update(ckpt0, batch, SETTINGS, tmp_path / "moved", reference_model=str(tmp_path / "other/model"))
    assert m_moved["kl"] > 0.0
    assert read_state(tmp_path / "moved").reference_model == str(tmp_path / "other/model")


def test_update_after_another_accelerator_in_the_same_process(tmp_path, ckpt0, batch):
    """A TRL trainer (the warm-up) or a user's Accelerator created first must not break the update."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # as in a fresh process
    Accelerator(cpu=True, mixed_precision="bf16")
    m = rl_update(ckpt0, batch, SETTINGS, tmp_path / "after")
    assert m["updates"] == 1.0


def test_lora_rounds_sample_from_the_merged_adapter(tmp_path, tiny_model_dir, monkeypatch):
    """Rounds with LoRA updates (both models): after an update the checkpoint holds the adapter only, and
    the next round's rollout and the evaluation load the base with that adapter merged."""
    from tango_steps.config import TangoConfig
    from tango_steps.pipeline.driver import initial_checkpoints
    from tango_steps.round.in_process import InProcessRun

    monkeypatch.setenv("TANGO_CACHE", str(tmp_path / "cache"))
    model = {"path": str(tiny_model_dir)}
    update = {"learning_rate": 1e-2, "micro_batch_size": 4, "lora": {"r": 4, "alpha": 8}}
    cfg = TangoConfig.model_validate(
        {
            "rounds": 3, "generator": model, "verifier": model, "rollout": {"engine": "hf", "max_prompt_tokens": 192},
            "generator_sampling": {"n": 2, "max_tokens": 16}, "verifier_sampling": {"n": 2, "max_tokens": 24},
            "batch": {"generator_prompts": 2, "verifier_prompts": 2},
            "schedule": {"verifier_warmup_rounds": 1, "generator_per_verifier": 3},
            "generator_update": update, "verifier_update": update,
            "evaluation": {"heldout_problems": 3, "max_tokens": 16},
        }
    )  # fmt: skip
    run = InProcessRun(cfg, initial_checkpoints(cfg, tmp_path / "init", log=lambda s: None), tmp_path / "work")
    slots = [run.round().plan.slot for _ in range(3)]
    assert slots == ["verifier", "generator", "generator"]
    for ckpt in (run.generator, run.verifier):
        assert (ckpt / "adapter").exists() and not list((ckpt / "model").glob("*.safetensors"))
    _, res = run.evaluate()
    assert 0 <= res.metrics["eval/generator_accuracy"] <= 1
    # round 3 sampled from round 2's merged generator; the evaluation from round 3's; one verifier update. An
    # update whose advantages were all zero (2 prompts x 2 samples: often) leaves its adapter as it was, and the
    # merged model is cached by the adapter's bytes: one merge per DISTINCT adapter
    work = tmp_path / "work"
    adapters = {
        b"".join(f.read_bytes() for f in sorted((work / r / role / "adapter").glob("*")))
        for r, role in (("r2", "generator"), ("r3", "generator"), ("r1", "verifier"))
    }
    assert len(list((tmp_path / "cache" / "merged").glob("*/config.json"))) == len(adapters) >= 2


def test_an_update_whose_advantages_are_all_zero_takes_no_optimizer_step(tmp_path, ckpt0, batch):
    """Issue #36: with every advantage zero there is no policy-gradient signal, yet the KL and entropy terms would move
    every weight by about the learning rate (AdamW normalises the step; the SmolLM2 run's answers shrank from 215 to 64
    tokens that way). Such a step is skipped and said; a step with signal beside it is still taken."""
    from safetensors.torch import load_file

    settings = SETTINGS.with_section(entropy_coef=0.01, kl_coef=0.01, optimizer_steps=2)
    flat = RLBatch(batch.prompt_ids, batch.response_ids, [[0.0] * len(r) for r in batch.response_ids])
    lines: list[str] = []
    m = rl_update(ckpt0, flat, settings, tmp_path / "flat", log=lines.append)
    assert m["skipped_steps"] == 2 and m["updates"] == 0
    assert any("every advantage is zero; optimizer step skipped" in line for line in lines), lines
    w0, w1 = load_file(ckpt0 / "model/model.safetensors"), load_file(tmp_path / "flat/model/model.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # the first step's samples (interleaved slices: the even ones) without signal, the second's with: it is taken
    half = [[0.0] * len(r) if i % 2 == 0 else batch.advantages[i] for i, r in enumerate(batch.response_ids)]
    m = rl_update(ckpt0, RLBatch(batch.prompt_ids, batch.response_ids, half), settings, tmp_path / "half")
    assert m["skipped_steps"] == 1 and m["updates"] == 1

"""Issue #15: the recipes' update layouts fit their GPUs by tango_steps.pipeline.layout's estimate, and their
sampling shards all have work."""

from __future__ import annotations

from pathlib import Path

import pytest

from tango_steps.config import load_config
from tango_steps.pipeline.layout import SHAPES, fits, recipe_update_memory, sampling_layout, update_memory_gib

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
H100_GIB = 80


def _recipe(name: str, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1 + 1?", "answer": "#### 2"}\n')
    return load_config(CONFIGS / name, {"task.params.path": str(data), "task.params.benchmark": "gsm8k"})


@pytest.mark.parametrize("role", ["generator", "verifier"])
def test_the_paper_recipe_updates_fit_an_80gb_gpu_only_because_they_are_sharded(role, tmp_path):
    cfg = _recipe("qwen2.5-7b-paper.yaml", tmp_path)
    u = getattr(cfg, f"{role}_update")
    assert (u.processes, u.strategy) == (8, "fsdp") and cfg.resources[f"{role}_update"].gpu == 8
    est = recipe_update_memory(cfg, role, SHAPES["qwen2.5-7b"])
    assert fits(est["total"], H100_GIB), est
    # the same update replicated (ddp) needs the whole 122 GB of fp32 weights, gradients and AdamW per GPU
    ddp = cfg.model_copy(update={f"{role}_update": u.model_copy(update={"strategy": "ddp"})})
    replicated = recipe_update_memory(ddp, role, SHAPES["qwen2.5-7b"])
    assert replicated["weights, gradients, AdamW"] > H100_GIB and not fits(replicated["total"], H100_GIB)


def test_the_one_gpu_recipe_fits_one_gpu(tmp_path):
    cfg = _recipe("qwen2.5-1.5b-1gpu.yaml", tmp_path)
    for role in ("generator", "verifier"):
        est = recipe_update_memory(cfg, role, SHAPES["qwen2.5-1.5b"])
        assert fits(est["total"], H100_GIB), (role, est)


def test_the_estimate_scales_the_way_the_layouts_do():
    shape = SHAPES["qwen2.5-7b"]
    one = update_memory_gib(shape, 1, "fsdp", 4, 4096)
    eight = update_memory_gib(shape, 8, "fsdp", 4, 4096)
    assert eight["weights, gradients, AdamW"] == pytest.approx(one["weights, gradients, AdamW"] / 8)
    assert eight["KL reference"] == one["KL reference"]  # the reference is not sharded
    assert one["weights, gradients, AdamW"] == pytest.approx(16 * 7.62e9 / 2**30)
    no_ckpt = update_memory_gib(shape, 8, "fsdp", 4, 4096, gradient_checkpointing=False)
    assert no_ckpt["activations"] > 10 * eight["activations"]
    lora = update_memory_gib(shape, 1, "ddp", 4, 4096, lora=True)
    assert lora["weights, gradients, AdamW"] == pytest.approx(one["weights, gradients, AdamW"] / 4)
    assert lora["KL reference"] == 0
    with pytest.raises(ValueError, match="strategy"):
        update_memory_gib(shape, 2, "zero3", 4, 4096)


def test_the_paper_recipe_samples_on_one_node_of_shards_that_all_have_work(tmp_path):
    cfg = _recipe("qwen2.5-7b-paper.yaml", tmp_path)
    lay = sampling_layout(cfg)
    assert lay["gpus_per_shard"] == cfg.resources["rollout"].gpu == 2  # one shard task's GPUs = its engine's
    assert lay["gpus"] == 8  # sampling fills one 8-GPU node, as each update does
    assert lay["busy_shards_generator_round"] == lay["busy_shards_verifier_round"] == lay["shards"] == 4
    # 1,280 samples of a generator round in calls of 80: each engine keeps a large batch
    assert (lay["generator_round_calls"], lay["verifier_round_calls"]) == (16, 4)
    one = sampling_layout(_recipe("qwen2.5-1.5b-1gpu.yaml", tmp_path))
    assert (one["shards"], one["gpus"]) == (1, 1)

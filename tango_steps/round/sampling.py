"""Sampling through a rollout engine for the round's stages (docs/method.md §3): engines over checkpoints, seeded
chunks of engine calls, shards made of whole calls."""

from __future__ import annotations

import time
from pathlib import Path

from tango_steps.config import TangoConfig
from tango_steps.process import progress_bar
from tango_steps.round.plan import Log, stage_seed


def engine_for(cfg: TangoConfig, role: str, model_dir: Path, seed: int):
    """The rollout engine over a checkpoint of ``role`` ("generator" / "verifier"), in that model's prompt format."""
    from tango_steps.rollout import engine_from_config

    return engine_from_config(cfg.rollout, str(model_dir), seed=seed, prompt_format=getattr(cfg, role).prompt_format)


def servable(ckpt: Path) -> Path:
    """The model an engine loads for a policy checkpoint (a LoRA adapter merged into its base, once)."""
    from tango_steps.training.checkpoint import servable_model

    return servable_model(ckpt)


def sampling_chunks(n_prompts: int, n: int, chunk_samples: int) -> list[range]:
    """The prompts of each engine call of a stage: ``chunk_samples // n`` prompts a call (docs/method.md §3).

    Each call is seeded by the index of its first prompt (:func:`generate`), so what a prompt gets
    depends on the seed and this chunking only: a shard made of whole calls samples exactly what
    the unsharded stage does.
    """
    size = max(1, chunk_samples // max(1, n))
    return [range(i, min(i + size, n_prompts)) for i in range(0, n_prompts, size)]


def shard_range(n_prompts: int, n: int, chunk_samples: int, shard: int, shards: int) -> range:
    """The prompts of shard ``shard`` of ``shards``: a contiguous run of whole engine calls (possibly
    none when there are more shards than calls)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in [0, {shards}), got {shard}")
    chunks = sampling_chunks(n_prompts, n, chunk_samples)
    lo, hi = len(chunks) * shard // shards, len(chunks) * (shard + 1) // shards
    return range(chunks[lo].start, chunks[hi - 1].stop) if lo < hi else range(0)


def generate(engine, prompts: list[str], sampling, what: str, log: Log, first: int = 0, chunk_samples: int = 256):
    """Generate in chunks of ``chunk_samples`` samples with a progress line per chunk (counts and rate).

    ``prompts`` are the full list's prompts from index ``first`` on (a shard starts at a chunk
    boundary); each chunk is seeded by its first prompt's index in the full list.
    """
    from tango_steps.rollout import SamplingSettings

    out = []
    chunk = max(1, chunk_samples // max(1, sampling.n))
    if first % chunk:
        raise ValueError(f"a shard must start at a chunk boundary ({chunk} prompts), got prompt {first}")
    t0 = time.perf_counter()
    for i in range(0, len(prompts), chunk):
        s = SamplingSettings(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed + first + i,
        )
        out.extend(engine.generate(prompts[i : i + chunk], s))
        done = min(i + chunk, len(prompts)) * sampling.n
        dt = time.perf_counter() - t0
        log(f"{what}: {progress_bar(done, len(prompts) * sampling.n)} samples, {done / max(dt, 1e-9):.1f} samples/s")
    return out


def sample_role(
    cfg: TangoConfig,
    role: str,
    ckpt: Path,
    prompts: list[str],
    scfg,
    n: int,
    round_idx: int,
    what: str,
    log: Log,
    first: int = 0,
):
    """Sample ``n`` completions per prompt from a checkpoint of ``role``; return them, the prompt ids the
    engine used and the engine's tokenizer.

    The ids come from the engine itself (its tokenizer, prompt format and prompt-length policy), so the
    RL batch trains on exactly the prompts that were sampled from, chat template and truncation
    included (docs/method.md §3, §6).
    """
    from tango_steps.rollout import SamplingSettings

    seed = stage_seed(cfg, round_idx, what)
    with engine_for(cfg, role, servable(ckpt), seed) as engine:
        sampling = SamplingSettings(
            n=n, temperature=scfg.temperature, top_p=scfg.top_p, max_tokens=scfg.max_tokens, seed=seed
        )
        comps = generate(engine, prompts, sampling, what, log, first, cfg.rollout.chunk_samples)
        prompt_ids, _ = engine.prompt_ids(prompts)
    return comps, prompt_ids, engine.tokenizer

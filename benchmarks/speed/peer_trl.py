"""Our vanilla-GRPO round against TRL's ``GRPOTrainer`` step, same model, prompts, batch and reward (issue #13).

    python benchmarks/speed/peer_trl.py                      # 32 prompts x 8 samples, 96 tokens, 3 timed steps
    python benchmarks/speed/peer_trl.py --flow-rounds 4      # also a TangoFlow run of the same recipe
    python benchmarks/speed/peer_trl.py --smoke              # 4 prompts x 2, 16 tokens: checks that it runs

Both sides start from the tiny default's warmed-up generator (``data/tiny``), sample M completions
per prompt at temperature 1 up to N new tokens, reward each with the task's own checker (1 if
right, 0 otherwise), normalise within each prompt's group (GRPO) and take ONE optimizer step per
batch with the same learning rate and KL coefficient. Per step it prints:

- TRL: the wall time of ``GRPOTrainer.training_step`` (generation, reward, loss, backward, step);
- ours in process: ``tango_steps.round.in_process.InProcessRun`` rounds (rollout, reward, update; the judge is
  skipped without step rewards), i.e. the same stage functions the flow calls;
- ours through the flow (``--flow-rounds``): a TangoFlow run of the same recipe, the mean wall time
  of a round run (process starts, artifacts, cards, the held-out evaluation if the recipe makes one;
  ``evaluation.every`` is set past the run so only round 0 and the last round are evaluated), and
  the ratio flow round / TRL step, over the rounds that do not evaluate (like for like: neither TRL's
  step nor the in-process round evaluates) and over every round. The first step of each side is a
  warm-up and is not counted; ``--flow-rounds 6`` leaves 4 rounds without evaluation to average.

Figures depend on the machine and on what else runs on it: run it alone (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

REPO = Path(__file__).resolve().parents[2]


def recipe(prompts: int, samples: int, tokens: int, rounds: int) -> dict:
    """The vanilla-GRPO recipe both sides run: generator rounds only, no verifier in the loop."""
    return {
        "rounds": rounds,
        "rollout": {"engine": "hf", "max_prompt_tokens": 128},
        "generator_sampling": {"n": samples, "temperature": 1.0, "max_tokens": tokens},
        "batch": {"generator_prompts": prompts},
        "schedule": {"verifier_warmup_rounds": 0, "generator_per_verifier": 0, "train_verifier": False},
        "algorithm": {"step_rewards": False},
        "generator_update": {"learning_rate": 2.0e-4, "micro_batch_size": 64},
        "evaluation": {"heldout_problems": 50, "every": 1000, "max_tokens": tokens},
    }


def ours_in_process(cfg, steps: int) -> list[float]:
    """Seconds of each in-process round (rollout, reward, update)."""
    from tango_steps.pipeline.driver import initial_checkpoints
    from tango_steps.round.in_process import InProcessRun

    with tempfile.TemporaryDirectory() as tmp:
        run = InProcessRun(cfg, initial_checkpoints(cfg, Path(tmp) / "r0", log=lambda s: None), Path(tmp))
        return [run.round().train_seconds for _ in range(steps)]


def trl_steps(cfg, steps: int) -> list[float]:
    """Seconds of each ``GRPOTrainer.training_step`` on the same prompts, reward and batch."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tango_steps.models.loading import load_model, load_tokenizer
    from tango_steps.round.plan import round_problems
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template
    from tango_steps.training.warmup import warmed_up_models, warmup_settings

    warm, _ = warmed_up_models(warmup_settings(cfg), log=lambda s: None)
    model_dir = str(warm / "generator")
    task, template = get_task(cfg.task.name), get_template(cfg.template)
    n = cfg.batch.generator_prompts
    problems = [p for k in range(1, steps + 1) for p in round_problems(cfg, k, n)]  # the rounds' prompts
    data = Dataset.from_dict(
        {"prompt": [template.generator_prompt(p.question) for p in problems], "problem": list(range(len(problems)))}
    )

    def reward(prompts, completions, problem, **_):
        return [float(task.check(problems[i], c).correct) for i, c in zip(problem, completions, strict=True)]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.t0, self.seconds = 0.0, []

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.seconds.append(time.perf_counter() - self.t0)

    u = cfg.generator_update
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=n * cfg.generator_sampling.n,  # completions: n prompts x M
            num_generations=cfg.generator_sampling.n,
            max_completion_length=cfg.generator_sampling.max_tokens,
            temperature=cfg.generator_sampling.temperature,
            learning_rate=u.learning_rate,
            lr_scheduler_type="constant",
            beta=u.kl_coef,
            epsilon=u.clip_eps,
            max_grad_norm=u.grad_clip,
            max_steps=steps,
            shuffle_dataset=False,
            use_cpu=True,
            bf16=False,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=cfg.seed,
        )
        timer = Timer()
        trainer = GRPOTrainer(
            model=load_model(model_dir, "float32"),
            reward_funcs=reward,
            args=args,
            train_dataset=data,
            processing_class=load_tokenizer(model_dir),
            callbacks=[timer],
        )
        trainer.train()
    return timer.seconds


def flow_round_seconds(cfg_data: dict) -> list[tuple[float, bool]]:
    """Wall seconds of each round run of a TangoFlow run of the recipe (benchmarks/speed/round_overhead.py's clock),
    and whether the round ran the held-out evaluation (the last round always does)."""
    import yaml

    sys.path.insert(0, str(REPO / "benchmarks" / "speed"))
    from round_overhead import launch, step_times

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg_data, f)
    pathspec, _, _ = launch(cfg_data["rounds"], f.name)
    from metaflow import Run, namespace

    namespace(None)
    rounds = Run(pathspec)["end"].task["round_runs"].data
    out = []
    for rp in rounds:
        steps = step_times(Run(rp))
        out.append((sum(r["wall"] for r in steps), any(r["step"] == "evaluate" for r in steps)))
    return out


def _summary(xs: list[float]) -> str:
    timed = xs[1:] or xs  # the first step pays imports and first calls
    return f"{statistics.mean(timed):.2f} s (n={len(timed)}, min {min(timed):.2f}, max {max(timed):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8, help="M, completions per prompt")
    ap.add_argument("--tokens", type=int, default=96, help="new-token limit")
    ap.add_argument("--steps", type=int, default=4, help="steps per side (the first is not counted)")
    ap.add_argument("--flow-rounds", type=int, default=0, help="also run TangoFlow for this many rounds")
    ap.add_argument("--smoke", action="store_true", help="4 prompts x 2 samples, 16 tokens, 2 steps")
    args = ap.parse_args()
    if args.smoke:
        args.prompts, args.samples, args.tokens, args.steps = 4, 2, 16, 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tango_steps.config import TangoConfig

    data = recipe(args.prompts, args.samples, args.tokens, args.steps)
    cfg = TangoConfig.model_validate(data)
    print(f"vanilla GRPO, {args.prompts} prompts x {args.samples} samples, up to {args.tokens} tokens, "
          f"{os.cpu_count()} CPUs, torch threads from OMP_NUM_THREADS or all", flush=True)  # fmt: skip
    ours = ours_in_process(cfg, args.steps)
    print(f"ours, in process: {_summary(ours)} per round", flush=True)
    trl = trl_steps(cfg, args.steps)
    print(f"TRL GRPOTrainer: {_summary(trl)} per step", flush=True)
    rows = [("TRL GRPOTrainer step", trl), ("ours, in process (InProcessRun round)", ours)]
    if args.flow_rounds:
        flow = flow_round_seconds({**data, "rounds": args.flow_rounds})
        # like for like: neither TRL's step nor the in-process round evaluates; the flow's last round does
        train = [flow[0][0]] + [w for w, evaluated in flow[1:] if not evaluated]
        rows.append(("ours, through TangoFlow (round run wall, rounds without evaluation)", train))
        rows.append(("ours, through TangoFlow (round run wall, every round)", [w for w, _ in flow]))
    base = statistics.mean(trl[1:] or trl)
    print("\n| side | seconds per step (mean, first excluded) | / TRL step |\n|---|---|---|")
    for name, xs in rows:
        m = statistics.mean(xs[1:] or xs)
        print(f"| {name} | {m:.2f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()

"""Our vanilla-GRPO round against TRL's ``GRPOTrainer`` step, same model, prompts, batch and reward (issue #13).

    python benchmarks/speed/peer_trl.py                      # 32 prompts x 8 samples, 96 tokens, 3 timed steps
    python benchmarks/speed/peer_trl.py --flow-rounds 4      # also a TangoFlow run of the same recipe
    python benchmarks/speed/peer_trl.py --smoke              # 4 prompts x 2, 16 tokens: checks that it runs
    python benchmarks/speed/peer_trl.py --heldout 60 --csv stage_a.csv   # issue #36, Stage A: do both LEARN alike?

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

``--heldout U`` (issue #36, Stage A, pre-registered in docs/results.md) instead runs U updates of each side from the
same warmed generator on the same prompts (round k's problems for update k, on both sides), TRL's loss and scaling
set to ours (:func:`trl_config`), and measures both on the 500 held-out problems, greedy, at every
``--eval-every`` updates (0 included: the same model on both sides); ``--csv`` keeps every problem's result
(study_intervals.py's long format) and the script prints paired 95% bootstrap intervals of ours - TRL.
"""

from __future__ import annotations

import argparse
import math
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
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from tango_steps.models.loading import load_model, load_tokenizer
    from tango_steps.training.warmup import warmed_up_models, warmup_settings

    warm, _ = warmed_up_models(warmup_settings(cfg), log=lambda s: None)
    model_dir = str(warm / "generator")
    task, problems, data = trl_dataset(cfg, steps)

    def reward(prompts, completions, problem, **_):
        return [float(task.check(problems[i], c).correct) for i, c in zip(problem, completions, strict=True)]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.t0, self.seconds = 0.0, []

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.seconds.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        timer = Timer()
        trainer = GRPOTrainer(
            model=load_model(model_dir, "float32"),
            reward_funcs=reward,
            args=trl_config(cfg, steps, tmp),
            train_dataset=data,
            processing_class=load_tokenizer(model_dir),
            callbacks=[timer],
        )
        trainer.train()
    return timer.seconds


def trl_dataset(cfg, steps: int):
    """(the task, the problems, TRL's dataset): round k's problems for step k, in the order our rounds take them."""
    from datasets import Dataset

    from tango_steps.round.plan import round_problems
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template

    task, template = get_task(cfg.task.name), get_template(cfg.template)
    n = cfg.batch.generator_prompts
    problems = [p for k in range(1, steps + 1) for p in round_problems(cfg, k, n)]
    data = Dataset.from_dict(
        {"prompt": [template.generator_prompt(p.question) for p in problems], "problem": list(range(len(problems)))}
    )
    return task, problems, data


def trl_config(cfg, steps: int, output_dir: str, match: bool = False):
    """TRL's ``GRPOConfig`` for the recipe: the batch, sampling and update settings of ours. ``match`` (issue #36)
    also sets every loss and scaling switch where TRL's default differs from our update (docs/method.md §6): the
    entropy bonus (TRL's default 0), k3 KL without TRL's importance-ratio factor (``use_bias_correction_kl``), no
    gradient checkpointing, truncated completions trained on (their reward 0 comes from the reward function)."""
    from trl import GRPOConfig

    u = cfg.generator_update
    extra = {}
    if match:
        extra = dict(
            entropy_coef=u.entropy_coef, use_bias_correction_kl=False, loss_type="dapo", scale_rewards="group",
            num_iterations=1, epsilon_high=None, mask_truncated_completions=False, gradient_checkpointing=False,
            weight_decay=u.weight_decay, warmup_steps=0, top_p=1.0, top_k=0,
        )  # fmt: skip
    return GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch.generator_prompts * cfg.generator_sampling.n,  # completions: n x M
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
        **extra,
    )


def heldout_correct(cfg, ckpt: Path) -> dict[int, float]:
    """Each held-out problem's greedy correctness for the generator checkpoint ``ckpt`` (its ``model/``)."""
    from tango_steps.round.evaluate import heldout_solutions

    df = heldout_solutions(cfg, ckpt, log=lambda s: None)
    return dict(zip(df["prompt_id"], df["correct"].astype(float), strict=True))


def ours_curve(cfg, dirs: dict, updates: int, eval_at: list[int], work: Path) -> tuple[dict, list[float]]:
    """Our GRPO in process (``InProcessRun``: the flow's stage functions): {updates: per-problem correctness} at
    ``eval_at``, and each update's mean outcome reward."""
    from tango_steps.round.in_process import InProcessRun

    run = InProcessRun(cfg, dirs, work)
    curve, rewards = {0: heldout_correct(cfg, run.generator)}, []
    for k in range(1, updates + 1):
        out = run.round()
        rewards.append(out.rewards.metrics.get("reward/outcome_mean", math.nan))
        if k in eval_at:
            curve[k] = heldout_correct(cfg, run.generator)
            print(f"ours: {k} updates, held-out {statistics.mean(curve[k].values()):.3f}, "
                  f"train reward {statistics.mean(rewards[-10:]):.3f} (last 10)", flush=True)  # fmt: skip
    return curve, rewards


def trl_curve(cfg, dirs: dict, updates: int, eval_at: list[int], work: Path) -> tuple[dict, list[float]]:
    """TRL's GRPOTrainer on the same prompts (update k: round k's problems), from the same checkpoint, with
    :func:`trl_config` ``match=True``; evaluated like ours at ``eval_at`` (the model saved, then the same greedy
    held-out pass)."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from tango_steps.models.loading import load_model, load_tokenizer

    model_dir = str(Path(dirs["generator"]) / "model")
    task, problems, data = trl_dataset(cfg, updates)
    tok = load_tokenizer(model_dir)
    rewards: list[float] = []

    def reward(prompts, completions, problem, completion_ids, **_):
        # a completion cut at the token limit (no end token) scores 0, as our reward stage scores it
        out = [
            0.0 if tok.eos_token_id not in ids else float(task.check(problems[i], c).correct)
            for i, c, ids in zip(problem, completions, completion_ids, strict=True)
        ]
        rewards.append(statistics.mean(out))
        return out

    curve = {0: heldout_correct(cfg, Path(dirs["generator"]))}

    class Evaluate(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step in eval_at:
                d = work / f"trl{state.global_step}"
                model.save_pretrained(d / "model", safe_serialization=True)
                tok.save_pretrained(d / "model")
                acc = curve[state.global_step] = heldout_correct(cfg, d)
                print(f"TRL: {state.global_step} updates, held-out {statistics.mean(acc.values()):.3f}, "
                      f"train reward {statistics.mean(rewards[-10:]):.3f} (last 10)", flush=True)  # fmt: skip

    trainer = GRPOTrainer(
        model=load_model(model_dir, "float32"),
        reward_funcs=reward,
        args=trl_config(cfg, updates, str(work / "trl_out"), match=True),
        train_dataset=data,
        processing_class=tok,
        callbacks=[Evaluate()],
    )
    trainer.train()
    return curve, rewards


def paired_interval(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of mean(a) - mean(b) over problems (the same problems, in the same order)."""
    import numpy as np

    d = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def heldout_comparison(cfg, updates: int, every: int, csv: Path | None) -> None:
    """Stage A of issue #36: both sides' held-out curves, paired per problem, and ours - TRL at each check."""
    import pandas as pd

    from tango_steps.pipeline.budgets import check_budgets
    from tango_steps.pipeline.driver import initial_checkpoints

    check_budgets(cfg)
    eval_at = list(range(every, updates + 1, every))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dirs = initial_checkpoints(cfg, work / "r0", log=lambda s: None)
        t0 = time.perf_counter()
        ours, ours_r = ours_curve(cfg, dirs, updates, eval_at, work / "ours")
        t1 = time.perf_counter()
        trl, trl_r = trl_curve(cfg, dirs, updates, eval_at, work)
        t2 = time.perf_counter()
    print(f"\nours {t1 - t0:.0f} s, TRL {t2 - t1:.0f} s (evaluations included)")
    print(
        "\n| updates | ours | TRL | ours - TRL (points) | 95% paired interval | ours train reward | TRL train reward |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for k in [0, *eval_at]:
        ids = sorted(ours[k])
        a, b = [ours[k][i] for i in ids], [trl[k][i] for i in ids]
        lo, hi = paired_interval(a, b)
        window = slice(max(0, k - every), k)
        ro = statistics.mean(ours_r[window]) if k else math.nan
        rt = statistics.mean(trl_r[window]) if k else math.nan
        ma, mb = statistics.mean(a), statistics.mean(b)
        print(f"| {k} | {ma:.3f} | {mb:.3f} | {100 * (ma - mb):+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
              f"{ro:.3f} | {rt:.3f} |")  # fmt: skip
        for side, curve in (("ours", ours), ("trl", trl)):
            rows += [{"task": cfg.task.name, "variant": side, "seed": cfg.seed, "round": k, "generator_updates": k,
                      "run": f"peer_trl/{side}/u{k}", "prompt_id": i, "correct": curve[k][i]} for i in ids]  # fmt: skip
    if csv is not None:
        pd.DataFrame(rows).to_csv(csv, index=False)
        print(f"per-problem results: {csv}")


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
    ap.add_argument("--heldout", type=int, default=0, metavar="U", help="Stage A: U updates a side, held-out curves")
    ap.add_argument("--eval-every", type=int, default=20, help="with --heldout: evaluate every this many updates")
    ap.add_argument("--problems", type=int, default=500, help="with --heldout: held-out problems")
    ap.add_argument("--csv", type=Path, help="with --heldout: every problem's result at every check")
    args = ap.parse_args()
    if args.smoke:
        args.prompts, args.samples, args.tokens, args.steps = 4, 2, 16, 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tango_steps.config import TangoConfig

    data = recipe(args.prompts, args.samples, args.tokens, args.heldout or args.steps)
    if args.heldout:
        data["evaluation"]["heldout_problems"] = args.problems
        data["generator_update"]["micro_batch_size"] = 64
        heldout_comparison(TangoConfig.model_validate(data), args.heldout, args.eval_every, args.csv)
        return
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

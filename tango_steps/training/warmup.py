"""Warm-up of the tiny default models: generator SFT on gold solutions, verifier SFT on the format.

- Generator (docs/method.md §7 analogue of the paper's SFT stage): TRL ``SFTTrainer`` on the task's gold
  solutions, evaluated on held-out problems (greedy) every ``eval_every`` steps and STOPPED as soon
  as held-out accuracy reaches ``target_accuracy`` (default 0.3): RL needs headroom, so the
  generator must land between 20% and 70%, not at 100%.
- Verifier: the paper's verifier gets no SFT (a 7B base model follows the instruction); a tiny
  model cannot, so it is warmed up only to learn the OUTPUT FORMAT of docs/method.md §2, with OUTCOME
  labels only. Its data: solutions SAMPLED from the warmed-up generator on train problems, each
  labelled by whether its final answer is right (the same outcome label as r_out); the target is a
  verification whose final verdict is that label and whose step verdicts are derived from it
  alone: every step CORRECT for a correct solution; for a wrong one, every step CORRECT but the
  last, which is INCORRECT ("the error shows by the end at the latest"). No step label is ever
  used: learning WHICH step is wrong is left to RL from outcome rewards, the point of Tango
  (docs/method.md §1). Classes are balanced by subsampling.

Everything is seeded; the result is cached by a hash of the settings (the warm-up is the slowest
part of a tiny run, ENVIRONMENT.md), in two stages: the generator under a hash of the generator's
settings alone, so a new verifier recipe or verifier setting costs only the verifier's warm-up.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tango_steps.atomic import exclusive_lock
from tango_steps.config import ModelConfig
from tango_steps.method.formats import format_verification, parse_solution, parse_verification
from tango_steps.models.tiny import TinyModelSpec
from tango_steps.tasks import get_task
from tango_steps.tasks.base import Problem, Task
from tango_steps.tasks.templates import PromptTemplate, get_template

# Bump when the warm-up procedure changes: cached models are then rebuilt. 2: fp32 SFT without
# gradient checkpointing on CPU (TRL's SFTConfig defaults are bf16 and checkpointing, even on CPU).
WARMUP_VERSION = 2
# How the tiny verifier learns its output format (module doc): "outcome" (scratch model; step verdicts
# derived from the outcome) or "self_check" (initialised from the warmed-up generator; each step's
# verdict says whether the GENERATOR, redoing that step's claim, agrees with it).
# "self_check_and" (issue #36): self_check's step targets with the final target their AND, for a verifier whose final
# verdict is computed from its step verdicts (``verifier.final_from_steps``).
VERIFIER_RECIPES = ("outcome", "self_check", "self_check_and")
# The default warm-up's models, shipped in the repository (``python data/build_tiny_models.py``) so a
# fresh machine skips the slowest part of its first run. A folder is used only under its own key, so a
# stale one (warm-up settings or WARMUP_VERSION changed since) is never read: the models are rebuilt.
SHIPPED = Path(__file__).resolve().parents[2] / "data" / "tiny"
# The settings that only the verifier's warm-up reads (left out of the generator's cache key).
VERIFIER_FIELDS = ("verifier", "verifier_sft", "verifier_solutions", "verifier_recipe")


@dataclass(frozen=True)
class SFTSettings:
    """One SFT run (TRL SFTTrainer, docs/method.md §7 analogue).

    Attributes:
        max_steps: optimizer steps at most.
        batch_size: sequences per step.
        learning_rate: AdamW learning rate (tiny models need far more than 7B's 5e-6).
        warmup_steps: linear learning-rate warm-up.
        lr_scheduler: transformers scheduler name after the warm-up (``cosine`` decays to 0 at
            ``max_steps``; ``constant_with_warmup`` keeps the rate).
    """

    max_steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    lr_scheduler: str = "constant_with_warmup"


@dataclass(frozen=True)
class WarmupSettings:
    """Everything that determines the warmed-up tiny models and their cache key (docs/method.md §7 analogue).

    Attributes:
        task / task_params: the embedded task and its parameters.
        template: prompt template name (``compact`` for tiny models).
        vocab_size: BPE vocabulary size.
        generator / verifier: model shapes.
        generator_sft / verifier_sft: SFT settings.
        target_accuracy: stop the generator SFT once held-out greedy accuracy reaches it.
        eval_every / eval_problems: how often and on how many held-out problems to measure it.
        verifier_solutions: generator samples (before balancing) for the verifier's warm-up.
        max_new_tokens: generation limit while evaluating and sampling.
        seed: every random choice.
        verifier_recipe: how the verifier learns its format (:data:`VERIFIER_RECIPES`, module doc).
    """

    task: str = "arithmetic"
    task_params: dict[str, Any] = field(default_factory=dict)
    template: str = "compact"
    vocab_size: int = 512
    generator: TinyModelSpec = field(default_factory=TinyModelSpec)
    verifier: TinyModelSpec = field(default_factory=lambda: TinyModelSpec(seed=1))
    # A faster warm-up was measured and rejected (benchmarks/README.md): cosine from 3e-3 stops at 32%
    # after 1,100 steps and 150 verifier steps give a 55%-accurate verifier, in 429 s instead of ~690 s,
    # but RL from those models degraded both (the verifier collapsed to always INCORRECT).
    generator_sft: SFTSettings = field(default_factory=SFTSettings)
    verifier_sft: SFTSettings = field(default_factory=lambda: SFTSettings(max_steps=300))
    target_accuracy: float = 0.3
    eval_every: int = 100
    eval_problems: int = 200
    # 1,024 samples left ~200 per class after balancing, seen ~24 times in 300 steps: seed 0's verifier
    # then said INCORRECT to 98% of held-out solutions (balanced accuracy 0.513). 4,096 (~800 per
    # class, ~6 passes, 160 s more sampling): 0.64-0.70 from step 50 to 300 (docs/results.md).
    verifier_solutions: int = 4096
    max_new_tokens: int = 96
    seed: int = 0
    verifier_recipe: str = ModelConfig.model_fields["warmup"].default  # the config schema holds the default

    def __post_init__(self) -> None:
        if self.verifier_recipe not in VERIFIER_RECIPES:
            raise ValueError(f"unknown verifier warm-up '{self.verifier_recipe}'; known: {', '.join(VERIFIER_RECIPES)}")

    def key(self) -> str:
        """Cache key: a hash of every setting (docs/method.md §9 reproducibility).

        The task's RESOLVED parameters are hashed (so a change of a task default is a new key), and
        so is :data:`WARMUP_VERSION`, bumped whenever the warm-up procedure itself changes. The
        ``outcome`` recipe (the only one before recipes existed) is left out of the hash, so caches made
        before then stay valid.
        """
        settings = asdict(self)
        if settings["verifier_recipe"] == "outcome":
            del settings["verifier_recipe"]
        return self._digest(settings)

    def generator_key(self) -> str:
        """Cache key of the generator stage alone: the verifier's settings are left out of the hash, so a
        new verifier recipe or verifier setting reuses the (slow) generator warm-up (docs/method.md §7 analogue)."""
        return self._digest({k: v for k, v in asdict(self).items() if k not in VERIFIER_FIELDS})

    def _digest(self, settings: dict) -> str:
        task = get_task(self.task, **self.task_params)
        payload = {"version": WARMUP_VERSION, "settings": settings, "task": sorted(vars(task).items())}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generator_accuracy(
    engine, task: Task, template: PromptTemplate, problems: list[Problem], max_new_tokens: int
) -> dict:
    """Held-out greedy accuracy and format rate of a generator (docs/method.md §7 greedy pass@1)."""
    from tango_steps.rollout.base import SamplingSettings

    comps = engine.generate(
        [template.generator_prompt(p.question) for p in problems],
        SamplingSettings(n=1, temperature=0.0, max_tokens=max_new_tokens),
    )
    correct = [task.check(p, c[0].text).correct for p, c in zip(problems, comps, strict=True)]
    formats = [parse_solution(c[0].text).format_score for c in comps]
    return {"accuracy": sum(correct) / len(correct), "format_rate": sum(f == 1.0 for f in formats) / len(formats)}


def sft_config(sft: SFTSettings, seed: int, output_dir: str):
    """TRL's ``SFTConfig`` for one warm-up SFT run (docs/method.md §7 analogue): fp32 on CPU, completion-only loss."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        max_steps=sft.max_steps,
        per_device_train_batch_size=sft.batch_size,
        learning_rate=sft.learning_rate,
        warmup_steps=sft.warmup_steps,
        lr_scheduler_type=sft.lr_scheduler,
        weight_decay=0.0,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        # TRL's SFTConfig defaults to bf16=True and gradient_checkpointing=True, on CPU too. On a CPU
        # without native bf16 (no AVX512-BF16/AMX) bf16 matmuls are emulated, far slower than fp32,
        # and their rounding differs between CPUs, so two machines warmed up different models from
        # the same seed: train the tiny models in fp32 on CPU, without activation recomputation.
        bf16=torch.cuda.is_available(),
        gradient_checkpointing=False,
        completion_only_loss=True,
        max_length=512,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _sft(model, tokenizer, rows: list[dict], sft: SFTSettings, seed: int, callbacks=()) -> dict:
    """Run TRL's SFTTrainer (prompt-completion rows, loss on the completion only) on CPU or GPU."""
    from datasets import Dataset
    from trl import SFTTrainer

    from tango_steps.training.runtime import reset_accelerate_state

    reset_accelerate_state()  # an earlier update's Accelerator in this process must not leak into the trainer
    out = tempfile.mkdtemp(prefix="tango-sft-")
    try:
        cfg = sft_config(sft, seed, out)
        trainer = SFTTrainer(
            model=model,
            args=cfg,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=list(callbacks),
        )
        result = trainer.train()
        return {"steps": trainer.state.global_step, "train_loss": float(result.training_loss)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _accuracy_stop_callback(task, template, problems, max_new_tokens, every, target, tokenizer, history, log):
    from transformers import TrainerCallback

    from tango_steps.rollout.hf import HFEngine

    class AccuracyStop(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every:
                return control
            model.eval()
            engine = HFEngine("", model=model, tokenizer=tokenizer, device=str(next(model.parameters()).device))
            m = generator_accuracy(engine, task, template, problems, max_new_tokens)
            model.train()
            history.append({"step": state.global_step, **m})
            acc, fmt = m["accuracy"], m["format_rate"]
            log(f"generator SFT step {state.global_step}: held-out accuracy {acc:.3f}, format {fmt:.3f}")
            if m["accuracy"] >= target:
                control.should_training_stop = True
            return control

    return AccuracyStop()


def verifier_warmup_rows(
    task: Task, template: PromptTemplate, problems: list[Problem], texts: list[str], seed: int
) -> tuple[list[dict], dict]:
    """Rows for the verifier's format warm-up, from OUTCOME labels only (docs/method.md §1, §5; see module doc)."""
    rng = random.Random(seed)
    by_class: dict[bool, list[dict]] = {True: [], False: []}
    for p, text in zip(problems, texts, strict=True):
        parsed = parse_solution(text)
        correct = task.check(p, text).correct  # outcome label only; step labels are never read
        k = parsed.num_steps
        steps = [True] * k if correct else [True] * max(0, k - 1) + [False] * min(1, k)
        by_class[correct].append(
            {
                "prompt": template.verifier_prompt(p.question, parsed, text),
                "completion": format_verification(steps, correct),
            }
        )
    n = min(len(by_class[True]), len(by_class[False]))
    if n == 0:
        raise RuntimeError(
            f"verifier warm-up needs both correct and wrong generator samples; got {len(by_class[True])} correct "
            f"and {len(by_class[False])} wrong. The generator warm-up did not land in a usable accuracy band."
        )
    rows = rng.sample(by_class[True], n) + rng.sample(by_class[False], n)
    rng.shuffle(rows)
    return rows, {"correct": len(by_class[True]), "wrong": len(by_class[False]), "used_per_class": n}


def self_check_rows(
    task: Task,
    template: PromptTemplate,
    engine,
    problems: list[Problem],
    texts: list[str],
    seed: int,
    max_new_tokens: int = 16,
    final_from_steps: bool = False,
) -> tuple[list[dict], dict]:
    """Rows for the ``self_check`` verifier warm-up: outcome labels plus the generator's own re-check of each step.

    For step k of a sampled solution, split as ``(start, claim)`` by :meth:`Task.split_step` (e.g.
    ``"19 * 3 ="`` / ``"57"``), the GENERATOR is given the solution up to that step's start and its greedy
    continuation is read up to ``</step>``: the target's analysis for step k is what it wrote
    (``"19 * 3 = 57"``) and the step verdict is CORRECT when that agrees with the claim. The final
    verdict is the outcome label (docs/method.md §5). No step label is read: the verdicts are a model's
    opinion, which misses errors the model itself makes and any error carried over from an earlier
    step (a step computed right from a wrong running value is judged CORRECT). Classes are balanced by
    subsampling as in :func:`verifier_warmup_rows`. docs/method.md §1, §2.

    ``final_from_steps`` (recipe ``self_check_and``): the final verdict's target is the AND of the step targets, the
    rule of ``verifier.final_from_steps``, so the model is not taught a final verdict that rule ignores.
    """
    from tango_steps.rollout.base import SamplingSettings

    parsed = [parse_solution(t) for t in texts]
    queries: list[tuple[int, int, str]] = []  # (solution, step, prefix)
    claims: dict[tuple[int, int], tuple[str, str]] = {}
    for i, (p, t, s) in enumerate(zip(problems, texts, parsed, strict=True)):
        for k, (step, (start, _)) in enumerate(zip(s.steps, s.step_spans, strict=True)):
            split = task.split_step(step)
            if split is None:
                continue
            claims[(i, k)] = split
            queries.append((i, k, template.generator_prompt(p.question) + t[:start] + "<step>" + split[0]))
    comps = engine.generate(
        [q for _, _, q in queries], SamplingSettings(n=1, temperature=0.0, max_tokens=max_new_tokens)
    )
    redo = {(i, k): c[0].text.split("</step>")[0].strip() for (i, k, _), c in zip(queries, comps, strict=True)}
    rng = random.Random(seed)
    by_class: dict[bool, list[dict]] = {True: [], False: []}
    agree = total = 0
    for i, (p, t, s) in enumerate(zip(problems, texts, parsed, strict=True)):
        correct = task.check(p, t).correct  # outcome label only; step labels are never read
        verdicts, analyses = [], []
        for k in range(s.num_steps):
            if (i, k) in claims:
                start, claim = claims[(i, k)]
                mine = redo[(i, k)]
                ok = " ".join(mine.split()) == " ".join(claim.split())
                analyses.append(f"{start} {mine}")
                agree, total = agree + ok, total + 1
            else:  # nothing the model can redo: no evidence against the step
                ok = True
                analyses.append("")
            verdicts.append(ok)
        by_class[correct].append(
            {
                "prompt": template.verifier_prompt(p.question, s, t),
                "completion": format_verification(verdicts, all(verdicts) if final_from_steps else correct, analyses),
            }
        )
    n = min(len(by_class[True]), len(by_class[False]))
    if n == 0:
        raise RuntimeError(
            f"self-check verifier warm-up needs both correct and wrong generator samples; got {len(by_class[True])} "
            f"correct and {len(by_class[False])} wrong"
        )
    rows = rng.sample(by_class[True], n) + rng.sample(by_class[False], n)
    rng.shuffle(rows)
    counts = {"correct": len(by_class[True]), "wrong": len(by_class[False]), "used_per_class": n,
              "steps_rechecked": total, "steps_agreed": agree}  # fmt: skip
    return rows, counts


def verifier_quality(
    engine,
    task: Task,
    template: PromptTemplate,
    problems: list[Problem],
    texts: list[str],
    max_new_tokens: int,
    final_from_steps: bool = False,
) -> dict:
    """Format rate and final-verdict accuracy of a verifier on given solutions (docs/method.md §5 metrics); with
    ``final_from_steps`` the final verdict is the AND of its step verdicts (``verifier.final_from_steps``)."""
    from tango_steps.rollout.base import SamplingSettings

    parsed = [parse_solution(t) for t in texts]
    prompts = [template.verifier_prompt(p.question, s, t) for p, s, t in zip(problems, parsed, texts, strict=True)]
    comps = engine.generate(prompts, SamplingSettings(n=1, temperature=0.0, max_tokens=max_new_tokens))
    fmt = acc = 0
    right = {True: [0, 0], False: [0, 0]}  # class -> [right, total]
    for p, s, t, c in zip(problems, parsed, texts, comps, strict=True):
        v = parse_verification(c[0].text, s.num_steps, s.well_formed, final_from_steps)
        truth = task.check(p, t).correct
        ok = v.final_verdict is not None and v.final_verdict == truth
        fmt += v.format_score == 1.0
        acc += ok
        right[truth][0] += ok
        right[truth][1] += 1
    # accuracy alone hides an always-INCORRECT verifier when most solutions are wrong
    per_class = [r / n for r, n in right.values() if n]
    return {
        "format_rate": fmt / len(texts),
        "verdict_accuracy": acc / len(texts),
        "balanced_accuracy": sum(per_class) / len(per_class) if per_class else float("nan"),
    }


def _verifier_training_solutions(settings: WarmupSettings, task: Task, template: PromptTemplate, gen_engine):
    """Sampled generator solutions (4 per train problem) for the verifier's warm-up data
    (docs/method.md §7 analogue).
    """
    from tango_steps.rollout.base import SamplingSettings

    vprobs = task.problems(max(1, settings.verifier_solutions // 4), "train", settings.seed + 1)
    comps = gen_engine.generate(
        [template.generator_prompt(p.question) for p in vprobs],
        SamplingSettings(n=4, temperature=1.0, max_tokens=settings.max_new_tokens, seed=settings.seed),
    )
    return [p for p, cs in zip(vprobs, comps, strict=True) for _ in cs], [c.text for cs in comps for c in cs]


def _heldout_verifier_quality(
    settings: WarmupSettings, task: Task, template: PromptTemplate, gen_engine, verifier, heldout, max_tokens: int
) -> dict:
    """The warmed-up verifier on SAMPLED held-out generator solutions, so both classes appear (docs/method.md §5)."""
    from tango_steps.rollout.hf import HFEngine

    engine = HFEngine("", model=verifier, tokenizer=gen_engine.tokenizer, device=gen_engine.device)
    texts = heldout_samples(settings, template, gen_engine, heldout)
    rule = settings.verifier_recipe == "self_check_and"
    return verifier_quality(engine, task, template, heldout, texts, max_tokens, final_from_steps=rule)


def heldout_samples(settings: WarmupSettings, template: PromptTemplate, gen_engine, heldout) -> list[str]:
    """One SAMPLED generator solution per held-out problem, the warm-up's verifier check set (docs/method.md §5)."""
    from tango_steps.rollout.base import SamplingSettings

    comps = gen_engine.generate(
        [template.generator_prompt(p.question) for p in heldout],
        SamplingSettings(n=1, temperature=1.0, max_tokens=settings.max_new_tokens, seed=settings.seed + 2),
    )
    return [c[0].text for c in comps]


def warm_up_generator(settings: WarmupSettings, out_dir: str | Path, log=print) -> dict:
    """Build the tokenizer and the generator, SFT it until held-out accuracy reaches the target (docs/method.md §7).

    Saves ``out_dir/generator`` and returns its report (the cache writes ``report.json``, :func:`_cached`).
    """
    import torch

    from tango_steps.models.tiny import build_model, build_tokenizer, save_pretrained_atomic, tokenizer_corpus
    from tango_steps.rollout.hf import HFEngine

    out = Path(out_dir)
    task = get_task(settings.task, **settings.task_params)
    template = get_template(settings.template)
    t0 = time.perf_counter()
    tok = build_tokenizer(tokenizer_corpus(task, template, seed=settings.seed), settings.vocab_size)
    report: dict[str, Any] = {"vocab_size": len(tok)}
    torch.manual_seed(settings.seed)
    gen = build_model(settings.generator, len(tok), tok.eos_token_id, tok.pad_token_id)
    report["generator_params"] = sum(p.numel() for p in gen.parameters())
    # One epoch of fresh problems: repeating a small set (4 epochs of 16k tried) makes the model
    # memorise (93% token accuracy, 3% held-out after 1600 steps) instead of learning arithmetic.
    train = task.problems(settings.generator_sft.max_steps * settings.generator_sft.batch_size, "train", settings.seed)
    heldout = task.problems(settings.eval_problems, "heldout", settings.seed)
    rows = [{"prompt": template.generator_prompt(p.question), "completion": p.gold_solution} for p in train]
    history: list[dict] = []
    cb = _accuracy_stop_callback(
        task,
        template,
        heldout,
        settings.max_new_tokens,
        settings.eval_every,
        settings.target_accuracy,
        tok,
        history,
        log,
    )
    report["generator_sft"] = _sft(gen, tok, rows, settings.generator_sft, settings.seed, [cb])
    report["generator_sft"]["seconds"] = time.perf_counter() - t0
    report["generator_sft"]["history"] = history
    gen.eval()
    gen_engine = HFEngine("", model=gen, tokenizer=tok, device="cpu" if not torch.cuda.is_available() else None)
    report["generator_heldout"] = generator_accuracy(gen_engine, task, template, heldout, settings.max_new_tokens)
    log(f"generator warm-up done: {report['generator_heldout']}")
    key = settings.generator_key()
    save_pretrained_atomic(gen.cpu(), tok, out / "generator", extra={"role": "generator", "warmup_key": key})
    return report


def warm_up(settings: WarmupSettings, generator_dir: str | Path, out_dir: str | Path, log=print) -> dict:
    """Warm the verifier up on the warmed-up generator's samples (its recipe, module doc; docs/method.md §7).

    Writes ``out_dir/generator`` (a copy of ``generator_dir/generator``) and ``out_dir/verifier``; returns
    the verifier's report (data counts, SFT, held-out quality).
    """
    import torch

    from tango_steps.models.loading import load_model, load_tokenizer
    from tango_steps.models.tiny import build_model, save_pretrained_atomic
    from tango_steps.rollout.hf import HFEngine

    out, base = Path(out_dir), Path(generator_dir) / "generator"
    t0 = time.perf_counter()
    task = get_task(settings.task, **settings.task_params)
    template = get_template(settings.template)
    tok = load_tokenizer(str(base))
    gen = load_model(str(base), "float32").eval()
    gen_engine = HFEngine("", model=gen, tokenizer=tok, device="cpu" if not torch.cuda.is_available() else None)
    vp, vt = _verifier_training_solutions(settings, task, template, gen_engine)
    if settings.verifier_recipe in ("self_check", "self_check_and"):
        rule = settings.verifier_recipe == "self_check_and"
        rows, counts = self_check_rows(task, template, gen_engine, vp, vt, settings.seed, final_from_steps=rule)
        ver = load_model(str(base), "float32")  # initialised from the generator: it can compute
        max_tokens = 3 * settings.max_new_tokens  # each step's verdict follows its analysis
    else:  # "outcome": a scratch model learns the format from outcome labels only
        rows, counts = verifier_warmup_rows(task, template, vp, vt, settings.seed)
        torch.manual_seed(settings.seed + 1)
        ver = build_model(settings.verifier, len(tok), tok.eos_token_id, tok.pad_token_id)
        max_tokens = 2 * settings.max_new_tokens
    log(f"{settings.verifier_recipe} verifier data: {counts}")
    report: dict[str, Any] = {"verifier_data": counts, "verifier_params": sum(p.numel() for p in ver.parameters())}
    t1 = time.perf_counter()
    report["verifier_sft"] = _sft(ver, tok, rows, settings.verifier_sft, settings.seed + 1)
    report["verifier_sft"]["seconds"] = time.perf_counter() - t1
    ver.eval()
    heldout = task.problems(settings.eval_problems, "heldout", settings.seed)
    report["verifier_heldout"] = _heldout_verifier_quality(
        settings, task, template, gen_engine, ver, heldout, max_tokens
    )
    log(f"{settings.verifier_recipe} verifier warm-up done: {report['verifier_heldout']}")
    report["verifier_seconds"] = time.perf_counter() - t0
    shutil.copytree(base, out / "generator", dirs_exist_ok=True)
    save_pretrained_atomic(ver.cpu(), tok, out / "verifier", extra={"role": "verifier", "warmup_key": settings.key()})
    return report


def warmup_settings(cfg) -> WarmupSettings:
    """The warm-up of a run's tiny models (docs/method.md §7 analogue): its task, template and seed.

    The warm-up seed is the run's ``seed``, so runs with different seeds start from their own
    warm-ups (seed variance then includes the warm-up's, as it would across machines). Its
    generation limit is the run's (sampling or evaluation, the larger), never under the default:
    a task whose solutions are longer than 96 tokens (``last_letters``) must not be warmed up and
    checked on cut solutions, and the arithmetic recipes keep the default's key (shipped models).
    """
    return WarmupSettings(
        task=cfg.task.name,
        task_params=dict(cfg.task.params),
        template=cfg.template,
        seed=cfg.seed,
        verifier_recipe=cfg.verifier.warmup,
        max_new_tokens=max(WarmupSettings.max_new_tokens, cfg.generator_sampling.max_tokens, cfg.evaluation.max_tokens),
    )


def _cached(folder: Path, build, log) -> dict:
    """``folder/report.json``, built once by ``build(folder)``; concurrent callers wait for the first (a lock)."""
    report_file = folder / "report.json"
    if report_file.exists():
        return json.loads(report_file.read_text())
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Two processes (AblationFlow's parallel branches) must not warm up into the same folder: the
    # second waits for the first, then finds its result.
    lock = folder.with_name(folder.name + ".lock")
    with exclusive_lock(lock, f"another process is warming up {folder}; waiting for it", log):
        if report_file.exists():
            return json.loads(report_file.read_text())
        folder.mkdir(parents=True, exist_ok=True)
        report = build(folder)
        report_file.write_text(json.dumps(report, indent=2, default=str))  # last: its presence means "complete"
        return report


def warmed_up_generator(
    settings: WarmupSettings | None = None, root: str | Path | None = None, log=print
) -> tuple[Path, dict]:
    """The generator stage alone (docs/method.md §7): ``(<root>/generators/<generator_key>, its report)``, built once.

    ``root`` defaults to ``<cache_dir>/tiny``. The folder holds ``generator/``; a later
    :func:`warmed_up_models` with the same generator settings reuses it.
    """
    from tango_steps.models.loading import cache_dir

    settings = settings or WarmupSettings()
    base = Path(root) if root is not None else cache_dir() / "tiny"
    gen_dir = base / "generators" / settings.generator_key()
    shipped = shipped_generator(settings.generator_key()) if root is None else None
    if shipped is not None and not (gen_dir / "report.json").exists():
        return shipped  # a shipped pair's generator: a new verifier recipe or setting needs no generator warm-up
    return gen_dir, _cached(gen_dir, lambda d: warm_up_generator(settings, d, log=log), log)


def shipped_generator(generator_key: str) -> tuple[Path, dict] | None:
    """A :data:`SHIPPED` pair whose generator was warmed up under ``generator_key`` (its ``tango.json`` says so):
    (the pair's folder, which holds ``generator/``, and the generator's part of its report), or None."""
    for record in sorted(SHIPPED.glob("*/generator/tango.json")):
        if json.loads(record.read_text()).get("warmup_key") == generator_key:
            pair = record.parent.parent
            report = json.loads((pair / "report.json").read_text())
            return pair, {k: v for k, v in report.items() if k.startswith("generator") or k == "vocab_size"}
    return None


def warmed_up_models(
    settings: WarmupSettings | None = None, root: str | Path | None = None, log=print
) -> tuple[Path, dict]:
    """Directory holding the warmed-up ``generator/`` and ``verifier/`` for these settings, built once
    (docs/method.md §7).

    Taken from the repository's :data:`SHIPPED` models when they were built with exactly these
    settings; otherwise cached under ``root`` (default ``<cache_dir>/tiny``): the generator under
    ``generators/<generator_key>`` (shared by every verifier recipe and verifier setting), the pair under
    ``<key>``. The report merges both stages'.
    """
    from tango_steps.models.loading import cache_dir

    settings = settings or WarmupSettings()
    shipped = SHIPPED / settings.key()
    if root is None and (shipped / "report.json").exists():
        return shipped, json.loads((shipped / "report.json").read_text())
    base = Path(root) if root is not None else cache_dir() / "tiny"
    out = base / settings.key()
    if (out / "report.json").exists():
        return out, json.loads((out / "report.json").read_text())
    gen_dir, gen_report = warmed_up_generator(settings, base, log)
    report = _cached(
        out, lambda d: {"settings": asdict(settings), **gen_report, **warm_up(settings, gen_dir, d, log=log)}, log
    )
    return out, report

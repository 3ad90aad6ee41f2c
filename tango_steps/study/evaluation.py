"""Evaluation on benchmarks: generator greedy pass@1 and the verifier's ProcessBench score (docs/method.md §7-§8).

- :func:`evaluate_generator`: greedy pass@1 with the generator template through any rollout
  engine, graded by the core grader (gold first), read two ways: ``accuracy`` strict (the last
  ``\\boxed{}``, docs/method.md §2) and ``flexible_accuracy`` (the last number, as common harnesses read
  GSM8K), each with its unanswered rate; truncation rate (a truncated response is wrong), mean length.
- :func:`evaluate_processbench`: the verifier judges each ProcessBench solution (its paragraphs
  are the steps); predicted earliest error = first INCORRECT step verdict, -1 if none (an
  unparseable verification also predicts -1 and is counted); accuracy on erroneous and on correct
  samples and their harmonic mean, the process-level F1 (ProcessBench protocol).

The verifier's outcome metrics on the generator's own held-out samples, and process F1 on the
embedded task's exact labels, are computed each round by :func:`tango_steps.round.evaluate.evaluate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pandas as pd

from tango_steps.method.formats import ParsedSolution, last_boxed, parse_verification
from tango_steps.method.metrics import process_f1
from tango_steps.tasks.benchmarks import BenchmarkProblem, ProcessSample

Log = Callable[[str], None]


def evaluate_generator(
    engine, problems: Sequence[BenchmarkProblem], template, max_tokens: int, log: Log = print
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Greedy pass@1 of a generator on benchmark problems (docs/method.md §7); one row per problem.

    A completion that hits ``max_tokens`` counts as wrong (truncated), whatever it says.
    """
    from tango_steps.rollout import SamplingSettings
    from tango_steps.round.sampling import generate
    from tango_steps.tasks.grading import ANSWER_EXTRACTIONS, Grader, extract_answer

    if not problems:
        raise ValueError("no problems to evaluate")
    t0 = time.perf_counter()
    greedy = SamplingSettings(n=1, temperature=0.0, max_tokens=max_tokens)
    comps = generate(engine, [template.generator_prompt(p.question) for p in problems], greedy, "evaluate", log)
    texts = [c[0].text for c in comps]
    truncated = [c[0].truncated for c in comps]
    golds = [p.gold for p in problems]
    answers = {how: [extract_answer(t, how) for t in texts] for how in ANSWER_EXTRACTIONS}
    with Grader() as grader:
        graded = {how: grader.grade_answers(answers[how], golds) for how in ANSWER_EXTRACTIONS}
        stats = grader.stats.as_dict()
    # a response that hit the token limit is wrong whatever it says (counted in truncated_frac)
    correct = {how: [g and not t for g, t in zip(graded[how], truncated, strict=True)] for how in ANSWER_EXTRACTIONS}
    df = pd.DataFrame(
        {
            "benchmark": [p.benchmark for p in problems],
            "id": [p.id for p in problems],
            "question": [p.question for p in problems],
            "gold": golds,
            "text": texts,
            "predicted": answers["strict"],
            "predicted_flexible": answers["flexible"],
            "truncated": truncated,
            "length": [len(c[0].token_ids) for c in comps],
            "correct": correct["strict"],
            "correct_flexible": correct["flexible"],
        }
    )
    metrics = {
        "accuracy": float(df["correct"].mean()),
        "unanswered_frac": float(df["predicted"].isna().mean()),
        "flexible_accuracy": float(df["correct_flexible"].mean()),
        "flexible_unanswered_frac": float(df["predicted_flexible"].isna().mean()),
        "truncated_frac": float(df["truncated"].mean()),
        "mean_length": float(df["length"].mean()),
        "problems": len(df),
        "seconds": time.perf_counter() - t0,
        **{f"grading_{k}": v for k, v in stats.items()},
    }
    log(
        f"generator: accuracy {metrics['accuracy']:.3f} strict (boxed), {metrics['flexible_accuracy']:.3f} flexible "
        f"(last number), truncated {metrics['truncated_frac']:.3f}, on {len(df)} problems ({metrics['seconds']:.1f} s)"
    )
    return df, metrics


def processbench_solution(sample: ProcessSample) -> ParsedSolution:
    """A ProcessBench sample as a parsed solution: its paragraphs are the steps (docs/method.md §8)."""
    return ParsedSolution(
        steps=list(sample.steps),
        step_spans=[],
        answer=last_boxed(sample.steps[-1]) if sample.steps else None,
        format_score=1.0,
        well_formed=True,
    )


def evaluate_processbench(
    engine, samples: Sequence[ProcessSample], template, max_tokens: int, log: Log = print
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The verifier's process-level F1 on ProcessBench samples (docs/method.md §8 protocol)."""
    from tango_steps.rollout import SamplingSettings
    from tango_steps.round.sampling import generate

    if not samples:
        raise ValueError("no ProcessBench samples to evaluate")
    t0 = time.perf_counter()
    solutions = [processbench_solution(s) for s in samples]
    prompts = [template.verifier_prompt(s.problem, sol) for s, sol in zip(samples, solutions, strict=True)]
    greedy = SamplingSettings(n=1, temperature=0.0, max_tokens=max_tokens)
    comps = generate(engine, prompts, greedy, "processbench", log)
    rows = []
    for s, sol, c in zip(samples, solutions, comps, strict=True):
        v = parse_verification(c[0].text, sol.num_steps, True)
        pred = -1 if v.step_verdicts is None else next((k for k, ok in enumerate(v.step_verdicts) if not ok), -1)
        rows.append(
            {"subset": s.subset, "id": s.id, "label": s.label, "predicted": pred,
             "usable": v.step_verdicts is not None, "final_verdict": v.final_verdict, "text": c[0].text}
        )  # fmt: skip
    df = pd.DataFrame(rows)
    m = process_f1(list(df["predicted"]), list(df["label"]))
    metrics = {
        **m,
        "unusable_frac": float((~df["usable"]).mean()),
        "samples": len(df),
        "seconds": time.perf_counter() - t0,
    }
    log(f"processbench: F1 {m['process_f1']:.3f} on {len(df)} samples ({metrics['seconds']:.1f} s)")
    return df, metrics


# ----------------------------------------------------------------------------------------------
# What EvalFlow's steps call
# ----------------------------------------------------------------------------------------------


def resolve_model(ref: str, role: str) -> str:
    """A local model directory for ``ref`` (docs/method.md §7): a Tango run pathspec, a directory or a builtin.

    A TangoFlow / TangoRoundFlow pathspec (``Flow/run`` or a task) gives that run's ``role``
    (``generator`` or ``verifier``) model after the run / round.
    """
    from tango_steps.models.loading import resolve_model_ref

    if ref.split("/", 1)[0] in ("TangoFlow", "TangoRoundFlow"):
        from tango_steps.pipeline.driver import round_models
        from tango_steps.training.checkpoint import servable_model

        return str(servable_model(round_models(ref)[role]))
    return resolve_model_ref(ref)


def check_request(
    benchmarks: str, generator: str, verifier: str, template: str, engine: str, limit: int, max_tokens: int,
    prompt_format: str = "auto",
) -> list[str]:  # fmt: skip
    """Validate an EvalFlow request before any model is loaded (docs/method.md §7); returns the benchmark list.

    Unknown benchmark names are an error listing the known ones; ProcessBench entries need a verifier.
    """
    from tango_steps.config import ENGINES
    from tango_steps.registry import check_name
    from tango_steps.tasks.benchmarks import BENCHMARKS, PROCESSBENCH_SUBSETS, BenchmarkError
    from tango_steps.tasks.templates import get_template

    items = [b.strip() for b in benchmarks.split(",") if b.strip()]
    known = [*BENCHMARKS, *(f"processbench/{s}" for s in PROCESSBENCH_SUBSETS)]
    if not items:
        raise BenchmarkError(f"--benchmarks is empty; known: {', '.join(known)}")
    unknown = [b for b in items if b not in known]
    if unknown:
        raise BenchmarkError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if len(set(items)) != len(items):
        raise BenchmarkError(f"--benchmarks names a benchmark twice: {benchmarks}")
    if any(not b.startswith("processbench/") for b in items) and not generator:
        raise ValueError("--generator is required for generator benchmarks")
    if any(b.startswith("processbench/") for b in items) and not verifier:
        raise ValueError("--verifier is required for processbench/* entries")
    get_template(template)
    check_name(engine, ENGINES, "rollout engine")
    if prompt_format not in ("auto", "chat", "raw"):
        raise ValueError(f"--prompt-format must be auto, chat or raw, got {prompt_format!r}")
    if limit < 0 or max_tokens < 1:
        raise ValueError(f"--limit must be >= 0 and --max-tokens >= 1, got {limit} and {max_tokens}")
    return items


def run_item(
    item: str, generator: str, verifier: str, data: str | None, template: str, engine: str,
    limit: int | None, max_tokens: int, log: Log = print, prompt_format: str = "auto",
) -> tuple[pd.DataFrame, dict[str, float]]:  # fmt: skip
    """Evaluate one EvalFlow item (docs/method.md §7-§8): a generator benchmark or ``processbench/<subset>``;
    ``prompt_format`` as ``ModelConfig.prompt_format`` (both models)."""
    from tango_steps.config import RolloutConfig
    from tango_steps.rollout import engine_from_config
    from tango_steps.tasks.benchmarks import load_benchmark, load_processbench
    from tango_steps.tasks.templates import get_template

    tpl = get_template(template)
    rollout = RolloutConfig(engine=engine, max_prompt_tokens=2048, max_model_len=2048 + max_tokens)
    if item.startswith("processbench/"):
        samples, stats = load_processbench(item.split("/", 1)[1], data, limit)
        with engine_from_config(rollout, resolve_model(verifier, "verifier"), prompt_format=prompt_format) as eng:
            df, m = evaluate_processbench(eng, samples, tpl, max_tokens, log)
    else:
        problems, stats = load_benchmark(item, data, limit)
        with engine_from_config(rollout, resolve_model(generator, "generator"), prompt_format=prompt_format) as eng:
            df, m = evaluate_generator(eng, problems, tpl, max_tokens, log)
    m["rows_skipped"] = stats.skipped
    return df, m

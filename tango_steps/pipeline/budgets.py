"""Token budgets that a recipe must hold, measured on the task's gold solutions before any training (docs/method.md §3).

A generation limit below the length of the task's own gold solutions caps accuracy silently: a
solution cut at ``max_tokens`` scores 0 (docs/method.md §4), so a held-out set whose gold solutions run
past ``evaluation.max_tokens`` can never be solved, and a verifier prompt longer than
``rollout.max_prompt_tokens`` loses its start (the problem) in the engine. :func:`check_budgets`
measures, with the run's own tokenizer, the 99th percentile of

- the generator's prompts (train and held-out, in the generator's prompt format) against
  ``rollout.max_prompt_tokens``;
- the gold solutions of training problems against ``generator_sampling.max_tokens``, and of
  held-out problems against ``evaluation.max_tokens``;
- the verifier's prompt showing a gold solution against ``rollout.max_prompt_tokens``;
- a well-formed verification of a gold solution against ``verifier_sampling.max_tokens``;

and rejects the recipe when a percentile plus :data:`MARGIN` does not fit, naming the field and
the length it needs. A task without gold steps (``dataset``) is checked on its prompts only.
"""

from __future__ import annotations

import math
from typing import Any

from tango_steps.config import ConfigError, TangoConfig

PERCENTILE = 0.99
MARGIN = 0.10  # room above the gold length: sampled solutions run a little longer than the gold ones
SAMPLE = 500  # problems measured per split


def run_tokenizer(cfg: TangoConfig, role: str):
    """The tokenizer the run's ``role`` model will use (docs/method.md §7), without building or warming up the model.

    The tiny default's tokenizer is rebuilt exactly as its warm-up builds it (a pure function of the
    task, template and warm-up settings); any other model's is loaded from its path.
    """
    from tango_steps.models.loading import load_tokenizer, resolve_model_ref

    path = getattr(cfg, role).path
    if path == "tiny":
        from tango_steps.models.tiny import build_tokenizer, tokenizer_corpus
        from tango_steps.tasks import get_task
        from tango_steps.tasks.templates import get_template
        from tango_steps.training.warmup import warmup_settings

        ws = warmup_settings(cfg)
        task = get_task(ws.task, **ws.task_params)
        return build_tokenizer(tokenizer_corpus(task, get_template(ws.template), seed=ws.seed), ws.vocab_size)
    return load_tokenizer(resolve_model_ref(path))


def percentile(values: list[int], q: float = PERCENTILE) -> int:
    """The ``q`` quantile of ``values`` (nearest rank, docs/method.md §3 limits); 0 for no values."""
    if not values:
        return 0
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]


def needed(length: int) -> int:
    """The limit a p99 length needs: the length plus :data:`MARGIN` (docs/method.md §3)."""
    return length + math.ceil(round(length * MARGIN, 9))  # round: 100 * 0.1 is 10.000000000000002


def measure(cfg: TangoConfig, generator_tokenizer, verifier_tokenizer, sample: int = SAMPLE) -> dict[str, Any]:
    """The p99 token lengths of the task's prompts, gold solutions and verifications (docs/method.md §2-§3)."""
    from tango_steps.method.formats import format_verification, parse_solution
    from tango_steps.rollout.base import format_prompts
    from tango_steps.round.plan import heldout_problems
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template

    task = get_task(cfg.task.name, **cfg.task.params)
    template = get_template(cfg.template)

    def count(tok, text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def count_prompt(tok, role: str, text: str) -> int:  # as the engine sees it: in the model's prompt format
        return count(tok, format_prompts(tok, [text], getattr(cfg, role).prompt_format, role)[0])

    have = task.available("train")
    train = task.problems(sample if have is None else min(sample, have), "train", seed=cfg.seed)
    try:
        heldout = heldout_problems(cfg)[:sample]
    except ValueError as e:  # a data file with fewer held-out rows than the recipe evaluates on
        raise ConfigError(f"invalid configuration:\n  evaluation.heldout_problems: {e}") from None
    out: dict[str, Any] = {
        "generator_prompt": percentile(
            [
                count_prompt(generator_tokenizer, "generator", template.generator_prompt(p.question))
                for p in train + heldout
            ]
        ),
    }
    with_steps = [p for p in train if p.steps]
    if with_steps:
        eos = 1  # the sampled eos token counts against the limit too
        out["train_solution"] = percentile([count(generator_tokenizer, p.gold_solution) + eos for p in with_steps])
        out["heldout_solution"] = percentile(
            [count(generator_tokenizer, p.gold_solution) + eos for p in heldout if p.steps]
        )
        parsed = [(p, parse_solution(p.gold_solution)) for p in with_steps]
        out["verifier_prompt"] = percentile(
            [
                count_prompt(verifier_tokenizer, "verifier", template.verifier_prompt(p.question, s, p.gold_solution))
                for p, s in parsed
            ]
        )
        # a self_check verifier writes each step's redo as its analysis: about the step's own length
        analyses = (
            (lambda s: list(s.steps)) if cfg.verifier.warmup in ("self_check", "self_check_and") else (lambda s: None)
        )
        out["verification"] = percentile(
            [
                count(verifier_tokenizer, format_verification([True] * s.num_steps, True, analyses(s))) + eos
                for _, s in parsed
            ]
        )
    return out


def check_budgets(cfg: TangoConfig, generator_tokenizer=None, verifier_tokenizer=None) -> dict[str, Any]:
    """Reject a recipe whose token limits cannot hold the task's gold solutions (docs/method.md §3); return the lengths.

    Raises :class:`~tango_steps.config.ConfigError` listing every field that is too small, with the
    p99 length measured and the value it needs.
    """
    gtok = generator_tokenizer if generator_tokenizer is not None else run_tokenizer(cfg, "generator")
    if verifier_tokenizer is None:  # the same model path means the same tokenizer: build or load it once
        same = cfg.verifier.path == cfg.generator.path
        verifier_tokenizer = gtok if same else run_tokenizer(cfg, "verifier")
    vtok = verifier_tokenizer
    lengths = measure(cfg, gtok, vtok)
    checks = [
        ("rollout.max_prompt_tokens", cfg.rollout.max_prompt_tokens, "generator_prompt", "generator prompts"),
        (
            "generator_sampling.max_tokens",
            cfg.generator_sampling.max_tokens,
            "train_solution",
            "training gold solutions",
        ),
        ("evaluation.max_tokens", cfg.evaluation.max_tokens, "heldout_solution", "held-out gold solutions"),
        (
            "rollout.max_prompt_tokens",
            cfg.rollout.max_prompt_tokens,
            "verifier_prompt",
            "verifier prompts of gold solutions",
        ),
        (
            "verifier_sampling.max_tokens",
            cfg.verifier_sampling.max_tokens,
            "verification",
            "verifications of gold solutions",
        ),
    ]
    errors = []
    for field, limit, key, what in checks:
        if key in lengths and limit < needed(lengths[key]):
            errors.append(
                f"  {field}: {limit} is too small for task '{cfg.task.name}': the {what} are up to "
                f"{lengths[key]} tokens (99th percentile); set it to at least {needed(lengths[key])}"
            )
    if errors:
        raise ConfigError(
            "invalid configuration (token budgets, measured with the run's tokenizer):\n" + "\n".join(errors)
        )
    return lengths

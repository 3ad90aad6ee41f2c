"""The update stage (docs/method.md §6): one RL update of one model, in this process, in a process group of
this machine, or as one node of several."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from tango_steps.config import TangoConfig
from tango_steps.method.schedule import RoundPlan
from tango_steps.round.arms import GENERATOR_OBJECTIVES
from tango_steps.round.plan import Log, round_problems


def sft_batch(cfg: TangoConfig, round_idx: int, tokenizer) -> dict[str, Any]:
    """The ``sft`` study arm's generator batch: gold solutions of the round's fresh problems, advantage 1
    (docs/method.md §7).

    :func:`update` takes each optimizer step's current policy as the old one for this objective
    (``ratio_to_current``), and the PPO-clip surrogate's gradient at ratio 1 is
    -A * grad log p (docs/method.md §6), so advantage 1 on every gold token with ``kl_coef`` and
    ``entropy_coef`` 0 is exactly the SFT (token-mean negative log-likelihood) gradient: continued SFT
    runs through the same update code, checkpoints and RNG handling as RL. ``algorithm.sft_sequences``
    gold solutions are split over ``generator_update.optimizer_steps`` optimizer steps; the study sets
    both so that the arm uses the CPU seconds of ``tango``'s RL.
    """
    from tango_steps.rollout import prepare_prompts
    from tango_steps.tasks.templates import get_template

    template = get_template(cfg.template)
    problems = round_problems(cfg, round_idx, cfg.algorithm.sft_sequences)
    prompts = [template.generator_prompt(p.question) for p in problems]
    prompt_ids, _ = prepare_prompts(
        tokenizer, prompts, cfg.rollout.max_prompt_tokens, cfg.rollout.on_long_prompt, cfg.generator.prompt_format
    )
    responses = [
        tokenizer(p.gold_solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for p in problems
    ]
    return {
        "prompt_ids": [list(x) for x in prompt_ids],
        "response_ids": responses,
        "advantages": [[1.0] * len(r) for r in responses],
        "sample_weights": None,
    }


def update(
    cfg: TangoConfig,
    plan: RoundPlan,
    role: str,
    ckpt: Path,
    reference: Path | str,
    batch: dict[str, Any] | None,
    out_dir: Path,
    log: Log = print,
    node: tuple[int, int, str] | None = None,
) -> dict[str, float]:
    """One RL update of ``role`` ("generator" or "verifier") from ``ckpt`` into ``out_dir`` (docs/method.md §6).

    ``reference`` is the initial checkpoint (a folder: its ``model/``), or a model reference to that ``model/``
    (:func:`tango_steps.models.store.model_reference`): the frozen KL reference (full fine-tuning) or the LoRA
    base, recorded in the checkpoint the update writes. ``batch`` is :func:`reward`'s; for the ``sft`` objective it is
    None and the round's gold solutions are tokenised here (:func:`sft_batch`).

    ``node=(index, nodes, main_ip)``: this machine is node ``index`` of the ``update.nodes`` machines
    of one update (Metaflow ``@parallel``): it starts its ``update.processes`` processes of the one
    process group; node 0 holds global rank 0, which writes ``out_dir`` and returns the metrics (the
    other nodes return an empty dict and write nothing).
    """
    from tango_steps.models.loading import load_tokenizer
    from tango_steps.training.batch import RLBatch
    from tango_steps.training.launch import read_metrics, run_workers, torchrun_command, write_spec
    from tango_steps.training.settings import update_settings
    from tango_steps.training.update import rl_update

    if role not in ("generator", "verifier"):
        raise ValueError(f"role must be 'generator' or 'verifier', got {role!r}")
    ucfg = cfg.generator_update if role == "generator" else cfg.verifier_update
    sampling = cfg.generator_sampling if role == "generator" else cfg.verifier_sampling
    settings = update_settings(
        ucfg, temperature=sampling.temperature or 1.0, seed=cfg.seed, serving_dtype=cfg.rollout.dtype
    )
    objective = GENERATOR_OBJECTIVES[cfg.algorithm.generator_objective]
    if role == "generator" and objective.gold_solutions:  # continued SFT: NLL on every step (sft_batch)
        settings = replace(settings, ratio_to_current=objective.ratio_to_current)
        batch = sft_batch(cfg, plan.round_idx, load_tokenizer(str(ckpt / "model")))
    if batch is None:
        raise ValueError(f"no {role} batch for round {plan.round_idx}: the reward stage made none")
    rl_batch = RLBatch(**batch)
    log(f"{role} update: {len(rl_batch)} sequences, micro-batch {ucfg.micro_batch_size}")
    # a folder holding the round-0 checkpoint (its model/), or already a model reference (the flow's store one)
    ref_model = str(reference / "model") if isinstance(reference, Path) else reference
    lora_base = ref_model if ucfg.lora is not None else None
    if node is None:
        try:
            m = rl_update(ckpt, rl_batch, settings, out_dir, log=log, reference_model=ref_model, lora_base=lora_base)
        except FloatingPointError as e:  # nothing was written: name the round and the model (issue #17)
            raise FloatingPointError(f"round {plan.round_idx}, {role} update: {e}") from e
    else:
        index, nodes, main_ip = node
        if nodes != ucfg.nodes:
            raise ValueError(f"{role}_update.nodes is {ucfg.nodes} but the update runs on {nodes} nodes")
        with tempfile.TemporaryDirectory(prefix=".update-") as tmp:
            spec = write_spec(Path(tmp), ckpt, rl_batch, settings, out_dir, ref_model, lora_base)
            log(f"{role} update: node {index} of {nodes}, {ucfg.processes} processes here ({ucfg.strategy})")
            cmd = torchrun_command(spec, ucfg.processes, nodes, index, main_ip)
            run_workers(cmd, log, f"node {index} of the {nodes}-node update", Path(out_dir))
            if index > 0:
                return {}
            m = read_metrics(spec)
    skipped = int(m.get("skipped_steps", 0))
    note = f" ({skipped} of {ucfg.optimizer_steps} optimizer steps skipped: every advantage zero)" if skipped else ""
    log(
        f"{role} update: loss {m['loss']:.4f}, kl {m.get('kl', 0.0):.5f}, "
        f"grad norm {m['grad_norm']:.3f}, {m['seconds']:.1f} s{note}"
    )
    return {f"{role}_update/{k}": v for k, v in m.items()}

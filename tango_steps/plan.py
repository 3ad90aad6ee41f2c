"""A run's plan before it starts (docs/scaling.md): what each step of a round holds, moves and costs, and a refusal
of a recipe that cannot fit, naming the field, before any pod starts.

    python -m tango_steps.plan --config config configs/qwen2.5-7b-paper.yaml [--gpu h100] [--set key=value ...]

Per step of each kind of round: tasks x GPUs, the GPU memory estimate against the device, host memory and disk
against the step's request, bytes downloaded and uploaded, engine starts, and projected seconds split into
compute and fixed overhead (transfers, hashing, model loads, engine starts); per round and per run: hours and
GPU-hours. TangoFlow's ``start`` step runs :func:`check` on the recipe, so a recipe that does not fit fails there.

Every figure is an ESTIMATE from the recipe, the model's shape and the named throughputs of :class:`Assumptions`
(their public sources are in docs/scaling.md); nothing here has been measured on GPUs. What each step fetches is
what the flow's steps do (flows/tango_round_flow.py): an engine's step the serving weights only, an update the
training state (:func:`tango_steps.models.store.part_files`), downloaded into the cache and hashed once there; an
update writes its checkpoint from every process of its first node, hashed as it is written. ``--before`` plans
the design before issue #35 (whole checkpoints fetched by every step, staged then copied, hashed again).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tango_steps.config import TangoConfig, load_config
from tango_steps.pipeline.layout import GIB, SHAPES, ModelShape, fits, recipe_update_memory
from tango_steps.round.plan import needs_judge, rollout_size, round_plan, verifier_judges

GB = 1e9


@dataclass(frozen=True)
class Device:
    """One GPU model: what the plan checks memory against and divides compute by (vendors' datasheets)."""

    name: str
    memory_gib: float
    bf16_tflops: float  # dense bf16 tensor-core peak
    hbm_tbs: float  # memory bandwidth: what a decoding engine's speed is bound by


DEVICES = {
    "h100": Device("H100 SXM 80GB", 80.0, 989.0, 3.35),
    "h200": Device("H200 SXM 141GB", 141.0, 989.0, 4.8),
    "a100-80gb": Device("A100 SXM 80GB", 80.0, 312.0, 2.04),
}


@dataclass(frozen=True)
class Assumptions:
    """The throughputs the plan assumes (docs/scaling.md names each one's source). Change them with ``--set``."""

    train_mfu: float = 0.30  # the update's share of the bf16 peak (one H100 reached 25-40%: ENVIRONMENT.md)
    decode_efficiency: float = 0.4  # a decode step's share of HBM bandwidth spent reading weights
    object_store_gbs: float = 1.25  # download per pod (S3, parallel ranged GETs: ~10 Gb/s per client)
    upload_gbs: float = 0.6  # upload per pod
    disk_gbs: float = 1.0  # local disk write (a gp3/NVMe volume's sustained write)
    hash_gbs: float = 1.0  # sha256 over a checkpoint's files (several files at once)
    load_gbs: float = 2.0  # safetensors from local disk into GPU memory
    engine_start_s: float = 60.0  # vLLM's own start-up before weights: profiling, KV cache, CUDA graphs
    engine_cache_gb: float = 5.0  # local disk an engine's compile and CUDA-graph caches take
    prompt_fill: float = 0.25  # mean prompt length / rollout.max_prompt_tokens
    response_fill: float = 0.5  # mean response length / max_tokens


class PlanError(ValueError):
    """A recipe that cannot fit; the message names the recipe field to change."""


class UnsizedModel(PlanError):
    """A model whose shape the plan cannot tell from its name or a local config.json (the command takes ``--shape``)."""


@dataclass
class StepPlan:
    """One step of a round (``tasks`` tasks of it, each with ``gpus`` GPUs)."""

    step: str
    tasks: int = 1
    gpus: int = 0
    gpu_gib: float = 0.0  # estimated peak per GPU
    host_gib: float = 0.0  # estimated peak host memory per task
    host_request_gib: float = 0.0
    disk_gib: float = 0.0  # estimated peak local disk per task
    disk_request_gib: float = 0.0
    download_gb: float = 0.0  # per task
    upload_gb: float = 0.0
    engine_starts: int = 0  # per task
    model_loads: int = 0  # per task (HF loads for training; engines count above)
    compute_s: float = 0.0
    overhead_s: float = 0.0  # transfers, hashing, loads, engine starts

    @property
    def seconds(self) -> float:
        """Projected wall seconds of one task: compute and fixed overhead."""
        return self.compute_s + self.overhead_s

    @property
    def gpu_hours(self) -> float:
        """GPU-hours of all the step's tasks."""
        return self.tasks * self.gpus * self.seconds / 3600


@dataclass
class RunPlan:
    """The plan of a recipe: each kind of round's steps, how many rounds of each kind, and the totals."""

    device: Device
    generator_shape: ModelShape
    verifier_shape: ModelShape
    rounds: dict[str, list[StepPlan]] = field(default_factory=dict)  # kind -> steps
    counts: dict[str, int] = field(default_factory=dict)  # kind -> rounds of that kind in the run
    on_gpus: bool = True

    def round_seconds(self, kind: str) -> float:
        """Projected seconds of one round of ``kind``: its steps one after another (a foreach's tasks at once)."""
        return sum(s.seconds for s in self.rounds[kind])

    @property
    def hours(self) -> float:
        """Projected hours of the whole run."""
        return sum(self.counts[k] * self.round_seconds(k) for k in self.counts) / 3600

    @property
    def gpu_hours(self) -> float:
        """Projected GPU-hours of the whole run (what a cluster bills: every pod's GPUs for its step's time)."""
        return sum(self.counts[k] * sum(s.gpu_hours for s in self.rounds[k]) for k in self.counts)


def model_shape(path: str, role: str) -> ModelShape:
    """The shape of the model a recipe names: a published one by name, the builtins, or a local config.json."""
    name = path.lower()
    m = re.search(r"qwen2\.5-(\d+(?:\.\d+)?)b", name)
    if m and f"qwen2.5-{m.group(1)}b" in SHAPES:
        return SHAPES[f"qwen2.5-{m.group(1)}b"]
    if name in SHAPES:
        return SHAPES[name]
    config = Path(path).expanduser() / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        hidden, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        inter = c.get("intermediate_size", 4 * hidden)
        embed = vocab * hidden * (1 if c.get("tie_word_embeddings", False) else 2)
        return ModelShape(float(embed + layers * (4 * hidden * hidden + 3 * hidden * inter)), hidden, layers, vocab)
    known = ", ".join(SHAPES)
    raise UnsizedModel(
        f"{role}.path '{path}': cannot size this model (not one of {known}, and no config.json there); "
        f"give its shape with --shape {role}=<known shape>"
    )


@dataclass(frozen=True)
class Checkpoints:
    """What the steps fetch and write, in bytes, for one model: the design the code has (``parts``: a step fetches
    only the part it uses, into the cache directly) or the one before it (every step fetched whole checkpoints,
    staged by Metaflow and copied into the cache). docs/scaling.md compares the two."""

    serving: float  # an engine's fetch: model/ in the serving dtype (LoRA: the merged fp32 model, or adapter + base)
    training: float  # an update's fetch of the checkpoint it continues from
    reference: float  # an update's fetch of the round-0 checkpoint (the KL reference or the LoRA base)
    written: float  # the checkpoint an update writes and uploads
    staged: float  # the factor of disk a fetch holds at once: 1 (moved into the cache) or 2 (staged, then copied)
    merged: float = 0.0  # LoRA: the merged model an engine's step writes into the cache (base + adapter, fp32)


def checkpoints(shape: ModelShape, serving_dtype: str, lora: bool, parts: bool = True) -> Checkpoints:
    """The bytes of :class:`Checkpoints` for a model of ``shape`` (docs/scaling.md, "What a step moves")."""
    p = shape.params
    adapter = 0.02 * p  # LoRA r 64 on every linear layer of a 1.5B-7B model: ~1-2% of the parameters, fp32
    if lora:  # model/ holds the merged fp32 base once; later checkpoints only the adapter; serving merges with it
        first, later = 4 * p, adapter
        return Checkpoints(4 * p + later, first + later, first, later, 1 if parts else 2, merged=4 * p)
    fp32, serve = 4 * p, (2 if serving_dtype == "bfloat16" else 4) * p
    master = fp32 if serve != fp32 else 0.0  # master/ only when model/ is served in another dtype
    trained = serve + master + 8 * p  # model/ + master/ + two AdamW moments
    if not parts:  # before: every fetch was a whole fp32 checkpoint (model/ + moments), staged then copied
        return Checkpoints(12 * p, 12 * p, 4 * p, 12 * p, 2)
    return Checkpoints(serve, (master or fp32) + 8 * p, serve, trained, 1)


def _fetch(nbytes: float, c: Checkpoints, a: Assumptions) -> float:
    """Seconds to bring ``nbytes`` into the cache: download, hash once; before the parts design also a copy."""
    copy = nbytes / (a.disk_gbs * GB) if c.staged > 1 else 0.0
    return nbytes / (a.object_store_gbs * GB) + copy + nbytes / (a.hash_gbs * GB)


def _decode_seconds(shape: ModelShape, tp: int, sequences: int, max_tokens: int, chunk: int, dev: Device,
                    a: Assumptions) -> float:  # fmt: skip
    """An engine's time for ``sequences`` samples of up to ``max_tokens`` in calls of ``chunk``: each call decodes
    until its longest sample ends, and a decode step of a batch reads the (bf16) weights once."""
    step = 2 * shape.params / tp / (dev.hbm_tbs * 1e12 * a.decode_efficiency)
    calls = -(-sequences // max(chunk, 1))
    return calls * max_tokens * step


def _res(cfg: TangoConfig, step: str) -> tuple[int, float, float]:
    """(gpus, memory GiB, disk GiB) that ``resources.<step>`` requests (0 disk: not requested)."""
    from tango_steps.config import step_resources_entry

    r = step_resources_entry(cfg.resources, step)
    if r is None:
        return 0, 0.0, 0.0
    return r.gpu, r.memory * 1e6 / GIB, r.disk * 1e6 / GIB  # Metaflow's MB are what a pod gets: 10^6 bytes


def plan_run(cfg: TangoConfig, device: Device = DEVICES["h100"], a: Assumptions = Assumptions(),
             shapes: dict[str, ModelShape] | None = None, parts: bool = True) -> RunPlan:  # fmt: skip
    """The plan of a recipe (see the module docstring): every kind of round it runs, its steps, how many of each.
    ``parts`` False: what the steps moved before they fetched only the parts they use (docs/scaling.md)."""
    shapes = shapes or {}
    g = shapes.get("generator") or model_shape(cfg.generator.path, "generator")
    v = shapes.get("verifier") or model_shape(cfg.verifier.path, "verifier")
    run = RunPlan(device, g, v, on_gpus=any(r.gpu for r in cfg.resources.values()))
    counts: dict[str, int] = {}
    for r in range(1, cfg.rounds + 1):
        plan = round_plan(cfg, r)
        kind = f"{plan.slot} round" + (" + evaluation" if plan.evaluate else "")
        counts[kind] = counts.get(kind, 0) + 1
        if kind not in run.rounds:
            run.rounds[kind] = _round_steps(cfg, plan, g, v, device, a, parts)
    run.rounds = {"round 0 (start)": [_round_zero(cfg, g, v, device, a, parts)], **run.rounds}
    run.counts = {"round 0 (start)": 1, **counts}
    if not run.on_gpus:  # a CPU recipe: the throughputs above are GPUs'; its times are measured, not projected
        for steps in run.rounds.values():
            for s in steps:
                s.compute_s = s.overhead_s = 0.0
    return run


def _runtime_gib(gpus: int) -> float:
    """Host memory a step's process takes besides the models: python, torch and its libraries (and, with GPUs, the
    CUDA context and pinned buffers)."""
    return 4.0 if gpus else 1.5


def on_cluster(cfg: TangoConfig) -> bool:
    """Whether the rounds run on Kubernetes or AWS Batch (``round_with``), where each step gets what its
    ``resources`` request; a local run ignores them (Metaflow's ``@resources``), so they are not checked there."""
    return any(w.split(":")[0] in ("kubernetes", "batch") for w in cfg.round_with)


def _round_zero(cfg, g: ModelShape, v: ModelShape, dev: Device, a: Assumptions, parts: bool) -> StepPlan:
    """TangoFlow's ``start`` in a new run: both source models, their first checkpoints written and stored, then
    round 0's evaluation (both models served, one after the other). A fork's start fetches its source's state
    instead, at most the same."""
    gpus, mem, disk = _res(cfg, "round0")
    step = StepPlan("start (round 0)", gpus=gpus, host_request_gib=mem, disk_request_gib=disk, engine_starts=2)
    dtype = cfg.rollout.dtype if cfg.rollout.dtype != "auto" else ("bfloat16" if gpus else "float32")
    written = 0.0
    for shape, u in ((g, cfg.generator_update), (v, cfg.verifier_update)):
        c = checkpoints(shape, dtype, u.lora is not None, parts)
        first = c.reference + (4 * shape.params if c.reference < 4 * shape.params and parts else 0.0)  # + master/
        written += first
        step.download_gb += 2 * shape.params / GB  # the source, in bf16 as published (an estimate)
        step.disk_gib += (2 * shape.params + first) / GIB
    step.upload_gb = written / GB
    step.disk_gib += a.engine_cache_gb * GB / GIB
    step.host_gib = 4 * max(g.params, v.params) / GIB + _runtime_gib(gpus)  # a source in fp32 for its checkpoint
    step.gpu_gib = cfg.rollout.gpu_memory_utilization * dev.memory_gib if gpus else 0.0
    e, r = cfg.evaluation, cfg.rollout
    step.compute_s = sum(
        _decode_seconds(shape, r.tensor_parallel_size, e.heldout_problems, tokens, r.chunk_samples, dev, a)
        for shape, tokens in ((g, e.max_tokens), (v, cfg.verifier_sampling.max_tokens))
    )
    step.overhead_s = step.download_gb * GB / (a.object_store_gbs * GB) + written / (a.upload_gbs * GB)
    step.overhead_s += (0.0 if parts else written / (a.hash_gbs * GB)) + 2 * a.engine_start_s  # hashed as written
    return step


def _round_steps(cfg, plan, g: ModelShape, v: ModelShape, dev: Device, a: Assumptions, parts: bool) -> list[StepPlan]:
    """The steps of one round with ``plan`` (its slot, whether it judges, updates and evaluates)."""
    r = cfg.rollout
    shards = r.shards
    prompts, n = rollout_size(cfg, plan)
    solutions = prompts * n
    judges = verifier_judges(cfg, plan) and needs_judge(cfg, plan)
    verifications = solutions * (1 if plan.slot == "generator" else cfg.verifier_sampling.n) if judges else 0
    dtype = cfg.rollout.dtype if cfg.rollout.dtype != "auto" else ("bfloat16" if _res(cfg, "rollout")[0] else "float32")
    gc = checkpoints(g, dtype, cfg.generator_update.lora is not None, parts)
    vc = checkpoints(v, dtype, cfg.verifier_update.lora is not None, parts)
    steps: list[StepPlan] = []

    # sampling (and, with shards, judging in the same task): one engine per model served
    served = [(g, gc, cfg.generator_sampling.max_tokens, solutions)]
    if judges:
        served.append((v, vc, cfg.verifier_sampling.max_tokens, verifications))
    names = ["sample_shard"] if shards > 1 else ["rollout", "judge"][: len(served)]
    per_task = [served] if shards > 1 else [[s] for s in served]
    for name, models in zip(names, per_task, strict=True):
        gpus, mem, disk = _res(cfg, "rollout" if name != "judge" else "judge")
        step = StepPlan(name, tasks=shards, gpus=gpus, host_request_gib=mem, disk_request_gib=disk)
        fetched = sum(c.serving for _, c, _, _ in models)
        step.download_gb = fetched / GB
        # the cache keeps what it fetched; before, a fetch was staged by Metaflow then copied (twice at once)
        step.disk_gib = (fetched + max(c.serving * (c.staged - 1) for _, c, _, _ in models)) / GIB
        step.disk_gib += sum(c.merged for _, c, _, _ in models) / GIB
        step.engine_starts = len(models)
        step.disk_gib += a.engine_cache_gb * GB / GIB
        step.gpu_gib = r.gpu_memory_utilization * dev.memory_gib if gpus else 0.0
        step.host_gib = max(2 * shape.params for shape, _, _, _ in models) / GIB + _runtime_gib(gpus)  # staged
        for shape, c, max_tokens, count in models:
            per_shard = -(-count // shards)
            mean_tokens = max(1, int(max_tokens * a.response_fill))
            step.compute_s += _decode_seconds(shape, r.tensor_parallel_size, per_shard, mean_tokens, r.chunk_samples,
                                              dev, a)  # fmt: skip
            step.overhead_s += _fetch(c.serving, c, a) + c.serving / (a.load_gbs * GB) + a.engine_start_s
        steps.append(step)
    if shards > 1:
        steps.append(StepPlan("join_shards"))
    steps.append(StepPlan("reward"))

    if plan.update is not None:
        role = plan.update
        shape = g if role == "generator" else v
        u = getattr(cfg, f"{role}_update")
        sampling = cfg.generator_sampling if role == "generator" else cfg.verifier_sampling
        step_name = "update_nodes" if u.nodes > 1 else f"{role}_update"
        gpus, mem, disk = _res(cfg, step_name)
        step = StepPlan(step_name, tasks=u.nodes, gpus=gpus, host_request_gib=mem, disk_request_gib=disk)
        step.gpu_gib = recipe_update_memory(cfg, role, shape)["total"] if gpus else 0.0
        lora = u.lora is not None
        c = gc if role == "generator" else vc
        fetched = c.training + c.reference
        step.download_gb, step.upload_gb = fetched / GB, c.written / GB
        # both fetches in the cache (the larger staged twice before), and the new checkpoint written
        step.disk_gib = (fetched + (c.staged - 1) * c.training + c.written) / GIB
        # the processes of a node gather the full fp32 weights and AdamW moments to host memory to write them
        # (each its share since issue #35; rank 0 all of it before): the same bytes per node either way
        step.host_gib = (4 * shape.params + (0 if lora else 8 * shape.params)) / GIB + 2 * _runtime_gib(gpus)
        step.model_loads = 2 if (u.kl_coef > 0 and not lora) else 1
        samples = solutions if role == "generator" else verifications
        tokens = samples * (cfg.rollout.max_prompt_tokens * a.prompt_fill + sampling.max_tokens * a.response_fill)
        flop_per_token = 6 + (2 if u.kl_coef > 0 else 0) + (2 if u.gradient_checkpointing else 0)
        processes = u.processes * u.nodes
        step.compute_s = tokens * shape.params * flop_per_token / (processes * dev.bf16_tflops * 1e12 * a.train_mfu)
        # hashed while written (the parts design) or in a pass of its own before the upload (before)
        hashing = 0.0 if parts else c.written / (a.hash_gbs * GB)
        write = c.written / (a.disk_gbs * GB) + hashing + c.written / (a.upload_gbs * GB)
        step.overhead_s = _fetch(fetched, c, a) + write + fetched / (a.load_gbs * GB)
        steps.append(step)

    if plan.evaluate:
        gpus, mem, disk = _res(cfg, "evaluate")
        e = cfg.evaluation
        step = StepPlan("evaluate", gpus=gpus, host_request_gib=mem, disk_request_gib=disk, engine_starts=2)
        fetched = gc.serving + vc.serving
        step.download_gb = fetched / GB
        step.disk_gib = (fetched + max(gc.serving * (gc.staged - 1), vc.serving * (vc.staged - 1))) / GIB
        step.disk_gib += (gc.merged + vc.merged + a.engine_cache_gb * GB) / GIB
        step.gpu_gib = r.gpu_memory_utilization * dev.memory_gib if gpus else 0.0
        step.host_gib = 2 * max(g.params, v.params) / GIB + _runtime_gib(gpus)
        step.compute_s = _decode_seconds(g, r.tensor_parallel_size, e.heldout_problems, e.max_tokens, r.chunk_samples,
                                         dev, a) + _decode_seconds(v, r.tensor_parallel_size, e.heldout_problems,
                                                                   cfg.verifier_sampling.max_tokens, r.chunk_samples,
                                                                   dev, a)  # fmt: skip
        step.overhead_s = _fetch(gc.serving, gc, a) + _fetch(vc.serving, vc, a) + fetched / (a.load_gbs * GB)
        step.overhead_s += 2 * a.engine_start_s
        steps.append(step)
    return steps


def refusals(cfg: TangoConfig, run: RunPlan, visible_gpus: int | None = None) -> list[str]:
    """What in ``cfg`` cannot fit, each naming the field to change (empty: it fits)."""
    out = []
    dev = run.device
    for role, shape in (("generator", run.generator_shape), ("verifier", run.verifier_shape)):
        u = getattr(cfg, f"{role}_update")
        step = "update_nodes" if u.nodes > 1 else f"{role}_update"
        if _res(cfg, step)[0]:
            total = recipe_update_memory(cfg, role, shape)["total"]
            if not fits(total, dev.memory_gib):
                out.append(
                    f"{role}_update: an update process needs ~{total:.0f} GiB, over 85% of the {dev.name}'s "
                    f"{dev.memory_gib:.0f} GiB; raise {role}_update.processes (strategy fsdp), turn on "
                    f"{role}_update.gradient_checkpointing, lower {role}_update.micro_batch_size or use "
                    f"{role}_update.lora"
                )
        serving = 2 * shape.params / cfg.rollout.tensor_parallel_size / GIB
        budget = cfg.rollout.gpu_memory_utilization * dev.memory_gib
        if _res(cfg, "rollout")[0] and serving > 0.9 * budget:
            out.append(
                f"rollout.gpu_memory_utilization: the {role}'s bf16 weights take {serving:.0f} GiB per GPU, leaving "
                f"no KV cache in {budget:.0f} GiB; raise rollout.gpu_memory_utilization or rollout.tensor_parallel_size"
            )
    tp = cfg.rollout.tensor_parallel_size
    for step in ("rollout", "judge", "evaluate") if on_cluster(cfg) else ():
        gpus = _res(cfg, step)[0]
        if gpus and tp > gpus:
            out.append(
                f"rollout.tensor_parallel_size is {tp} but resources.{step}.gpu is {gpus}: an engine spans TP GPUs"
            )
    if visible_gpus is not None and not on_cluster(cfg) and visible_gpus > 0:
        need = cfg.rollout.shards * tp
        if need > visible_gpus:
            out.append(
                f"rollout.shards x rollout.tensor_parallel_size = {need} GPUs, but this machine has {visible_gpus}: "
                "run on a cluster (round_with) or lower rollout.shards"
            )
    seen = set() if on_cluster(cfg) else {s.step for steps in run.rounds.values() for s in steps}  # local: ignored
    for steps in run.rounds.values():
        for s in steps:
            if s.step in seen:
                continue
            seen.add(s.step)
            res_step = {"sample_shard": "rollout", "start (round 0)": "round0"}.get(s.step, s.step)
            if s.disk_request_gib and s.disk_gib > s.disk_request_gib:
                out.append(
                    f"resources.{res_step}.disk: the {s.step} step needs ~{s.disk_gib:.0f} GiB of local disk, "
                    f"the recipe requests {s.disk_request_gib:.0f} GiB"
                )
            if s.host_request_gib and s.host_gib > s.host_request_gib:
                out.append(
                    f"resources.{res_step}.memory: the {s.step} step needs ~{s.host_gib:.0f} GiB of host memory, "
                    f"the recipe requests {s.host_request_gib:.0f} GiB"
                )
    return out


def local_gpus(cfg: TangoConfig) -> int | None:
    """The GPUs a run's rounds share on this machine: None when they run on a cluster (``round_with``: each pod has
    its own) or there is no GPU here."""
    import torch

    if on_cluster(cfg) or not torch.cuda.is_available():
        return None
    return torch.cuda.device_count()


def check(cfg: TangoConfig, device: Device = DEVICES["h100"], visible_gpus: int | None = None) -> RunPlan:
    """The recipe's plan, or :class:`PlanError` listing every field that cannot fit (TangoFlow's ``start``)."""
    run = plan_run(cfg, device)
    problems = refusals(cfg, run, visible_gpus)
    if problems:
        raise PlanError("the recipe cannot fit:\n  - " + "\n  - ".join(problems))
    return run


def start_check(cfg: TangoConfig) -> str:
    """TangoFlow's ``start``: :func:`check` on this machine's GPUs, and the line it prints. A recipe that cannot fit
    raises :class:`PlanError`; a model the plan cannot size (a hub name it does not know) is said, not refused:
    the run itself needs no shape."""
    try:
        run = check(cfg, visible_gpus=local_gpus(cfg))
    except UnsizedModel as e:
        return f"plan: not checked ({e})"
    if not run.on_gpus:
        return "plan: fits (a CPU recipe: no GPU projection)"
    return (
        f"plan: fits; ~{run.hours:.0f} hours, ~{run.gpu_hours:,.0f} GPU-hours (python -m tango_steps.plan: the steps)"
    )


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if not x else f"{x:,.{digits}f}"


def report(cfg: TangoConfig, run: RunPlan) -> str:
    """The plan as markdown tables: per kind of round its steps, then the run's totals."""
    lines = [
        f"# Plan: {cfg.rounds} rounds, generator {cfg.generator.path} ({_size(run.generator_shape.params)}), "
        f"verifier {cfg.verifier.path} ({_size(run.verifier_shape.params)}), GPU {run.device.name}",
        "",
        "Estimates (tango_steps/plan.py, assumptions in docs/scaling.md), not measurements.",
    ]
    if not run.on_gpus:
        lines.append(
            "This recipe requests no GPUs: memory, disk and bytes moved are shown; times are projected for GPU steps "
            "only (docs/performance.md has this machine's measured ones)."
        )
    cols = ["step", "tasks x GPUs", "GPU GiB (est / device)", "host GiB (est / request)", "disk GiB (est / request)",
            "download GB", "upload GB", "engine starts", "compute s", "overhead s", "GPU-h"]  # fmt: skip
    for kind, steps in run.rounds.items():
        lines += ["", f"## {kind} (x {run.counts[kind]})", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for s in steps:
            lines.append("| " + " | ".join([
                s.step, f"{s.tasks} x {s.gpus}", f"{_fmt(s.gpu_gib)} / {run.device.memory_gib:.0f}" if s.gpus else "-",
                f"{_fmt(s.host_gib)} / {_fmt(s.host_request_gib, 0)}",
                f"{_fmt(s.disk_gib)} / {_fmt(s.disk_request_gib, 0)}",
                _fmt(s.download_gb), _fmt(s.upload_gb), str(s.engine_starts or "-"), _fmt(s.compute_s, 0),
                _fmt(s.overhead_s, 0), _fmt(s.gpu_hours, 2),
            ]) + " |")  # fmt: skip
        compute = sum(s.compute_s for s in steps)
        overhead = sum(s.overhead_s for s in steps)
        if compute:
            lines.append(
                f"\nround: {run.round_seconds(kind) / 60:.1f} min (compute {compute / 60:.1f}, fixed overhead "
                f"{overhead / 60:.1f}: {100 * overhead / compute:.0f}% of compute), "
                f"{sum(s.gpu_hours for s in steps):.2f} GPU-h"
            )
    if run.on_gpus:
        lines += ["", f"**run: {run.hours:.1f} hours, {run.gpu_hours:,.0f} GPU-hours** (steps one after another)"]
    return "\n".join(lines)


def _size(params: float) -> str:
    return f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"


def main(argv: list[str] | None = None) -> None:
    """The command line (module docstring): print the plan; exit 2 when the recipe cannot fit."""
    ap = argparse.ArgumentParser(prog="python -m tango_steps.plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", nargs="+", required=True, metavar="[config] PATH",
                    help="the recipe (as TangoFlow takes it: --config config PATH)")  # fmt: skip
    ap.add_argument("--gpu", default="h100", choices=sorted(DEVICES), help="the GPU model the steps get")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override (as a dotted key) or an assumption (assume.<name>=value)")  # fmt: skip
    ap.add_argument("--shape", action="append", default=[], metavar="ROLE=SHAPE", help=f"one of {', '.join(SHAPES)}")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    ap.add_argument("--before", action="store_true", help="what the steps moved before they fetched only their part")
    args = ap.parse_args(argv)
    overrides, assume = {}, {}
    for item in args.set:
        key, _, value = item.partition("=")
        target = assume if key.startswith("assume.") else overrides
        try:  # a number, true/false, null, a list or a mapping; anything else is the text as written
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        target[key.removeprefix("assume.")] = parsed
    try:
        cfg = load_config(args.config[-1], overrides, check_data=False)  # sizes only: no data read
        shapes = {}
        for item in args.shape:
            role, _, name = item.partition("=")
            if name not in SHAPES:
                raise PlanError(f"--shape {item}: unknown shape; known: {', '.join(SHAPES)}")
            shapes[role] = SHAPES[name]
        run = plan_run(cfg, DEVICES[args.gpu], replace(Assumptions(), **assume), shapes, parts=not args.before)
        problems = refusals(cfg, run)
    except (PlanError, ValueError) as e:
        raise SystemExit(f"plan: {e}") from None
    if args.json:
        out = {k: [dict(asdict(s), seconds=s.seconds) for s in v] for k, v in run.rounds.items()}
        print(json.dumps({"rounds": out, "counts": run.counts, "hours": run.hours, "gpu_hours": run.gpu_hours}))
    else:
        print(report(cfg, run))
    if problems:
        print("\nREFUSED: the recipe cannot fit:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()

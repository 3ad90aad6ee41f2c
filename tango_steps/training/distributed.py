"""One RL update on several processes: data parallel (DDP) or fully sharded (FSDP2) (TANGO.md §6, §7).

The paper's update runs on 32 GPUs; here ``update.processes: P`` runs the SAME update function
(:func:`tango_steps.training.update.rl_update`) on P processes launched by ``torchrun`` inside the update
step (``gloo`` on CPU, ``nccl`` on GPUs). Each optimizer step's samples are dealt out over the
processes (sample i to process i mod P), each process accumulates the gradient of its share over
micro-batches of ``micro_batch_size`` (a per-process size, as in every DP trainer), and the
gradients are averaged across processes once per optimizer step. Every process normalises its loss
by the GLOBAL token count of the step and multiplies it by P (the all-reduce averages), so the
summed gradient is the single-process one: P = 1 and P = 2 end with the same weights up to float
summation order (tested).

``ddp`` keeps a full replica of the model and optimizer on each process; ``fsdp`` shards parameters,
gradients and AdamW state over them (``torch.distributed.fsdp.fully_shard``, one unit per decoder
layer plus the root), which is what lets a 7B model's optimizer state fit (docs/scaling.md).
Checkpoints stay the single-process format either way: rank 0 writes the FULL model and the
optimizer state keyed as a one-process optimizer keys it, so rollouts, `resume`, forks and a later
update with any P read them unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

STRATEGIES = ("ddp", "fsdp")
WRAPPED = "policy."  # how LogprobModule's parameters are named: its attribute `policy`
FAIL_RANK_ENV = "TANGO_FAIL_UPDATE_RANK"  # test-only switch: that process of a multi-process update raises


# ----------------------------------------------------------------------------------------------
# Who does what
# ----------------------------------------------------------------------------------------------


def rank_micro_batches(indices: list[int], size: int, rank: int, world: int) -> list[list[int]]:
    """This process's micro-batches of one optimizer step: samples ``indices[rank::world]`` in
    micro-batches of ``size``, padded with empty ones to the count of the busiest process.

    Every process must run as many forwards and backwards (FSDP all-gathers parameters in each
    forward, DDP reduces gradients in one backward per step), so a process with fewer samples runs
    an empty micro-batch: a forward whose loss is multiplied by zero.
    """
    from tango_steps.training.update import _micro_batches

    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    count = max(-(-len(indices[r::world]) // size) for r in range(world))
    mine = _micro_batches(indices[rank::world], size)
    return mine + [[] for _ in range(count - len(mine))]


class LogprobModule(torch.nn.Module):
    """The policy's token log-probs and entropies as ONE module forward (what DDP and FSDP wrap).

    :func:`~tango_steps.training.update.sequence_logprobs` calls the decoder and the LM head separately
    (chunked, never full logits); DDP prepares its gradient reduction and FSDP all-gathers the root's
    parameters (embeddings, final norm, head) only inside the wrapped module's forward, so that call
    is this module's forward.
    """

    def __init__(self, policy: torch.nn.Module, chunk_size: int, temperature: float, backend: str = "chunked") -> None:
        super().__init__()
        self.policy = policy
        self.chunk_size = chunk_size
        self.temperature = temperature
        self.backend = backend

    def forward(self, ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L-1) log-probs and entropies of tokens 1..L-1, as ``sequence_logprobs``."""
        from tango_steps.training.update import sequence_logprobs

        logp, entropy = sequence_logprobs(self.policy, ids, attn, self.chunk_size, self.temperature, self.backend)
        # FSDP hooks the outputs for its backward; a view's hook would be lost to an in-place op
        return logp.clone(), entropy.clone()


def decoder_layers(policy: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM (the FSDP units), found by the model's own
    ``_no_split_modules`` class names (every HF decoder model lists its block class there)."""
    from tango_steps.training.update import _causal_lm

    lm = _causal_lm(policy)
    names = set(getattr(lm, "_no_split_modules", None) or [])
    layers = [m for m in lm.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(lm).__name__} names no decoder block class (_no_split_modules); cannot shard it")
    return layers


class Runtime:
    """What ``rl_update`` needs of ``accelerate.Accelerator``, for a torchrun process group."""

    def __init__(self, bf16: bool) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.bf16 = bf16

    def autocast(self):
        """bf16 autocast on the process's device when the update runs in bf16, else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @staticmethod
    def backward(loss: torch.Tensor) -> None:
        """Backpropagate (DDP and FSDP reduce gradients in their own hooks)."""
        loss.backward()


def wrap_policy(policy: torch.nn.Module, strategy: str, settings, device) -> torch.nn.Module:
    """``policy`` inside a :class:`LogprobModule`, replicated (``ddp``) or sharded (``fsdp``)."""
    module = LogprobModule(policy, settings.logprob_chunk_size, settings.temperature, settings.logprob_backend)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # no buffer broadcast: the only buffers (rotary tables) are constants, and a broadcast in
        # every forward would be a collective the padded micro-batches would have to match
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in decoder_layers(policy):
            fully_shard(layer)
        return fully_shard(module)
    raise ValueError(f"update.strategy must be one of {STRATEGIES}, got {strategy!r}")


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, strategy: str, sync: bool):
    """Accumulate this micro-batch's gradient locally (``sync`` False) or reduce across processes."""
    if strategy == "ddp" and not sync:
        with model.no_sync():
            yield
        return
    if strategy == "fsdp":
        model.set_requires_gradient_sync(sync)
    yield


def all_reduce_sums(sums: dict[str, float], tokens: int) -> tuple[dict[str, float], int]:
    """Metric sums and token counts added over the processes (every process gets the totals)."""
    # a process whose share was empty (fewer samples than processes) has no metric keys of its own
    names: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(names, sorted(sums))
    keys = sorted(set().union(*names))
    t = torch.tensor([sums.get(k, 0.0) for k in keys] + [float(tokens)], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t[:-1], strict=True)}, int(t[-1])


# ----------------------------------------------------------------------------------------------
# Optimizer state in the one-process format
# ----------------------------------------------------------------------------------------------


def trainable_names(policy: torch.nn.Module, prefix: str = "") -> list[str]:
    """Names of the trainable parameters, in the order the optimizer holds them (its integer ids);
    ``prefix`` names them as the :class:`LogprobModule` around the policy does (``"policy."``)."""
    return [prefix + n for n, p in policy.named_parameters() if p.requires_grad]


def optimizer_state_by_name(state: dict, names: list[str]) -> dict:
    """A one-process ``optimizer.state_dict()`` (parameters by position) keyed by parameter name."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def optimizer_state_by_position(state: dict, names: list[str]) -> dict:
    """The inverse of :func:`optimizer_state_by_name`: what ``optimizer.pt`` holds."""
    pos = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [pos[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {pos[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def load_sharded_optimizer(model, optimizer, policy, ckpt: Path) -> None:
    """Load ``ckpt/optimizer.pt`` (full, by position) into an optimizer over FSDP-sharded parameters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    path = Path(ckpt) / "optimizer.pt"
    if not path.exists():
        return
    full = torch.load(path, map_location="cpu", weights_only=True)
    by_name = optimizer_state_by_name(full, trainable_names(policy, WRAPPED))
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def full_states(model, optimizer, policy, strategy: str) -> tuple[dict | None, dict]:
    """The full model state dict (None: save the policy as it is) and the one-process optimizer state.

    Under FSDP this is a collective: every process calls it, rank 0 ends with the gathered tensors.
    """
    if strategy != "fsdp":
        return None, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    if dist.get_rank() != 0:  # cpu_offload gathers onto rank 0 only
        return None, {}
    model_sd = {k.removeprefix(WRAPPED): v for k, v in model_sd.items()}
    return model_sd, optimizer_state_by_position(optim_sd, trainable_names(policy, WRAPPED))


# ----------------------------------------------------------------------------------------------
# Launching: the update step starts torchrun; each process runs rl_update
# ----------------------------------------------------------------------------------------------


def write_spec(
    folder: Path,
    ckpt: str | Path,
    batch,
    settings,
    out_dir: str | Path,
    reference_model: str | None = None,
    lora_base: str | None = None,
) -> Path:
    """What each worker process of one update reads (``main``): ``folder/spec.pt``; rank 0 writes
    ``out_dir`` and ``folder/metrics.json``. Any launcher can start the workers on it: ``torchrun`` on
    one machine (:func:`launch_update`), ``@torchrun`` across Metaflow ``@parallel`` nodes."""
    spec = Path(folder) / "spec.pt"
    torch.save(
        {
            "ckpt": str(ckpt),
            "batch": asdict(batch),
            "settings": asdict(settings),
            "out_dir": str(out_dir),
            "reference_model": reference_model,
            "lora_base": lora_base,
            "metrics": str(Path(folder) / "metrics.json"),
        },
        spec,
    )
    return spec


def read_metrics(spec: Path) -> dict[str, float]:
    """The update's metrics, as rank 0 recorded them beside ``spec``."""
    return json.loads((Path(spec).parent / "metrics.json").read_text())


def launch_update(
    ckpt: str | Path,
    batch,
    settings,
    out_dir: str | Path,
    log=None,
    reference_model: str | None = None,
    lora_base: str | None = None,
) -> dict[str, float]:
    """:func:`~tango_steps.training.update.rl_update` on ``settings.processes`` processes (``torchrun``).

    Same arguments and result as ``rl_update``; the worker processes' output is passed to ``log``
    line by line (rank 0 logs progress). A failed worker fails the call with its output's tail and
    leaves ``out_dir`` unwritten (rank 0 writes it atomically, last).
    """
    log = log or print
    out_dir = Path(out_dir)
    if torch.cuda.is_available() and settings.processes > torch.cuda.device_count():
        raise ValueError(
            f"update.processes is {settings.processes} but this machine has {torch.cuda.device_count()} GPUs "
            "(one process per GPU)"
        )
    if out_dir.exists():
        raise FileExistsError(f"checkpoint directory '{out_dir}' already exists; refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)  # as the one-process update's atomic write does
    with tempfile.TemporaryDirectory(prefix=".update-", dir=out_dir.parent) as tmp:
        spec = write_spec(Path(tmp), ckpt, batch, settings, out_dir, reference_model, lora_base)
        t0 = time.perf_counter()
        log(f"update on {settings.processes} processes ({settings.strategy}), torchrun")
        what = f"the {settings.processes}-process update"
        run_workers(torchrun_command(spec, settings.processes), log, what, out_dir)
        metrics = read_metrics(spec)
    metrics["launch_seconds"] = time.perf_counter() - t0 - metrics["seconds"]
    return metrics


def torchrun_command(
    spec: Path, processes_per_node: int, nodes: int = 1, node_rank: int = 0, main_addr: str = "", port: int = 29517
) -> list[str]:
    """The torchrun command that starts this machine's worker processes of one update: one machine
    (``--standalone``), or node ``node_rank`` of ``nodes`` meeting at ``main_addr:port``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes_per_node}"]
    if nodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={nodes}", f"--node-rank={node_rank}", f"--master-addr={main_addr}", f"--master-port={port}"]
    return [*cmd, "-m", "tango_steps.training.distributed", str(spec)]


def run_workers(cmd: list[str], log, what: str, out_dir: Path) -> None:
    """Run ``cmd`` (a torchrun), pass rank 0's progress lines to ``log``; raise with the output's tail
    if it fails (``out_dir`` is then unwritten: rank 0 writes it atomically, last)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, said here so it is not a warning
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: collections.deque[str] = collections.deque(maxlen=200)
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        if line.startswith("[rank0] "):
            log(line[len("[rank0] ") :])
    rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"{what} exited with {rc}; '{out_dir}' was not written. Its last lines:\n" + "\n".join(tail))


def main(spec_path: str) -> None:
    """A torchrun worker: join the process group, run ``rl_update``, rank 0 records the metrics."""
    from tango_steps.training.update import LoraSettings, RLBatch, UpdateSettings, rl_update

    spec = torch.load(spec_path, weights_only=False)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank = dist.get_rank()
    try:
        if os.environ.get(FAIL_RANK_ENV) == str(rank):
            raise RuntimeError(f"failure injected by {FAIL_RANK_ENV}={rank} (test-only switch)")
        data = dict(spec["settings"])
        lora = LoraSettings(**data.pop("lora")) if data.get("lora") else None
        data.pop("lora", None)
        settings = replace(UpdateSettings(**{**data, "betas": tuple(data["betas"])}), lora=lora)
        log = (lambda msg: print(f"[rank0] {msg}", flush=True)) if rank == 0 else None
        metrics = rl_update(
            spec["ckpt"],
            RLBatch(**spec["batch"]),
            settings,
            spec["out_dir"],
            log=log,
            reference_model=spec["reference_model"],
            lora_base=spec["lora_base"],
        )
        if rank == 0:
            Path(spec["metrics"]).write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# The @parallel check (flows/parallel_update_flow.py)
# ----------------------------------------------------------------------------------------------


def check_case(folder: Path, processes: int, strategy: str = "ddp"):
    """A small fixed update to run on N nodes: a random tiny model's first checkpoint, a batch that
    gives some process an empty micro-batch, settings with two optimizer steps and a KL term, and
    the same update on ONE process (the reference). Returns (ckpt0, batch, settings, reference)."""
    from tango_steps.models.tiny import (
        TinyModelSpec,
        build_model,
        build_tokenizer,
        save_pretrained_atomic,
        tokenizer_corpus,
    )
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template
    from tango_steps.training.update import RLBatch, UpdateSettings, init_checkpoint, rl_update

    folder = Path(folder)
    tok = build_tokenizer(tokenizer_corpus(get_task("arithmetic"), get_template("compact"), n=300), vocab_size=384)
    spec = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=128, seed=3)
    model_dir = save_pretrained_atomic(
        build_model(spec, len(tok), tok.eos_token_id, tok.pad_token_id), tok, folder / "model"
    )
    settings = UpdateSettings(learning_rate=5e-3, kl_coef=0.01, micro_batch_size=2, optimizer_steps=2)
    g = torch.Generator().manual_seed(0)
    prompts = [tok(f"Problem: {i} + 1\nSolution:\n")["input_ids"] for i in range(10)]
    responses = [torch.randint(3, len(tok), (n,), generator=g).tolist() for n in (5, 9, 3, 7, 8, 4, 6, 2, 9, 5)]
    advantages = [[(1.0 if i % 3 else -1.0) * (1 + 0.1 * t) for t in range(len(r))] for i, r in enumerate(responses)]
    batch = RLBatch(prompts, responses, advantages)
    ckpt0 = init_checkpoint(str(model_dir), folder / "ckpt0", settings)
    reference = folder / "reference"
    rl_update(ckpt0, batch, settings, reference)
    return ckpt0, batch, replace(settings, processes=processes, strategy=strategy), reference


def max_weight_difference(a: Path, b: Path) -> float:
    """The largest |a - b| over all weights of two checkpoints."""
    from safetensors.torch import load_file

    wa, wb = (load_file(Path(c) / "model" / "model.safetensors") for c in (a, b))
    if wa.keys() != wb.keys():
        raise ValueError(f"checkpoints '{a}' and '{b}' hold different tensors")
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def compare_with_one_process(updated: Path, reference: Path, start: Path, learning_rate: float) -> dict[str, Any]:
    """Whether an update on several processes/nodes matches the one-process ``reference`` from ``start``.

    AdamW moves a weight by up to lr a step whatever the gradient's size, so gradients summed in
    another order can move a weight whose gradient is near zero by a visible fraction of lr: the
    weights must agree to 1% of lr, and the update must have moved them by far more than that.
    """
    diff, moved, tolerance = (
        max_weight_difference(updated, reference),
        max_weight_difference(reference, start),
        0.01 * learning_rate,
    )
    return {"max_difference": diff, "moved": moved, "tolerance": tolerance, "matches": diff <= tolerance < moved / 100}


def _run_main(argv: list[str]) -> Any:
    if len(argv) != 1:
        raise SystemExit("usage: python -m torch.distributed.run ... -m tango_steps.training.distributed SPEC.pt")
    return main(argv[0])


if __name__ == "__main__":
    _run_main(sys.argv[1:])

"""One RL update on several processes: data parallel (DDP) or fully sharded (FSDP2) (docs/method.md §6, §7).

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
Checkpoints hold FULL tensors either way, written in parallel by the processes on rank 0's machine, each a
share of the parameters (:func:`gather_share`, :mod:`tango_steps.training.checkpoint_files`): rollouts,
`resume`, forks and a later update with any P read them.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch
import torch.distributed as dist

from tango_steps.training.checkpoint import causal_lm, weight_tensors
from tango_steps.training.checkpoint_files import (
    optimizer_state_by_position,
    read_optimizer_state,
    writer_shares,
)
from tango_steps.training.logprobs import LogprobModule

STRATEGIES = ("ddp", "fsdp")

# Check switch (the multi-process tests turn it on): NCCL has no CPU collectives, gloo accepts any device, so a
# tensor made without a device passes every CPU test and raises on the first GPU round. Under the switch each of
# our collectives runs with the default device set to "meta" and refuses a tensor off the group's device: a
# tensor that names no device fails here on CPU exactly where NCCL would fail on a GPU.
STRICT_COLLECTIVES_ENV = "TANGO_STRICT_COLLECTIVES"
_CHECKED = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "reduce")


def group_device() -> torch.device:
    """The device the process group's collectives take tensors on: this process's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def collective(fn):
    """Mark a function that calls collectives: under :data:`STRICT_COLLECTIVES_ENV` its tensors must be on
    :func:`group_device` (checked at each collective) and a tensor made without a device lands on "meta"."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if os.environ.get(STRICT_COLLECTIVES_ENV) != "1":
            return fn(*args, **kwargs)
        want = group_device()
        originals = {name: getattr(dist, name) for name in _CHECKED}

        def checked(name, original):
            def call(tensor, *a, **kw):
                for t in tensor if isinstance(tensor, list | tuple) else [tensor]:
                    if isinstance(t, torch.Tensor) and t.device != want:
                        raise RuntimeError(
                            f"{fn.__qualname__}: dist.{name} got a tensor on {t.device}, but the process group's "
                            f"device is {want} (NCCL has no collectives for CPU tensors; {STRICT_COLLECTIVES_ENV})"
                        )
                return original(tensor, *a, **kw)

            return call

        try:
            for name, original in originals.items():
                setattr(dist, name, checked(name, original))
            with torch.device("meta"):
                return fn(*args, **kwargs)
        finally:
            for name, original in originals.items():
                setattr(dist, name, original)

    return wrapper


WRAPPED = "policy."  # how LogprobModule's parameters are named: its attribute `policy`


def decoder_layers(policy: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM (the FSDP units), found by the model's own
    ``_no_split_modules`` class names (every HF decoder model lists its block class there)."""

    lm = causal_lm(policy)
    names = set(getattr(lm, "_no_split_modules", None) or [])
    layers = [m for m in lm.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(lm).__name__} names no decoder block class (_no_split_modules); cannot shard it")
    return layers


def wrap_policy(policy: torch.nn.Module, strategy: str, settings, device, bf16: bool = False) -> torch.nn.Module:
    """``policy`` inside a :class:`LogprobModule`, replicated (``ddp``) or sharded (``fsdp``).

    ``bf16`` (the update runs in bf16): FSDP2 gathers each layer's parameters in bf16 and reduces gradients in
    fp32 (``MixedPrecisionPolicy``): half the all-gather traffic and gathered-layer memory, fp32 master weights,
    gradients and AdamW state kept in the shards.
    """
    s = settings.section
    module = LogprobModule(policy, s.logprob_chunk_size, settings.temperature, s.logprob_backend)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # no buffer broadcast: the only buffers (rotary tables) are constants, and a broadcast in
        # every forward would be a collective the padded micro-batches would have to match;
        # gradients as views of the reduction buckets: one copy of the gradients, not two
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
        kwargs = {"mp_policy": mp} if mp is not None else {}
        for layer in decoder_layers(policy):
            fully_shard(layer, **kwargs)
        return fully_shard(module, **kwargs)
    raise ValueError(f"update.strategy must be one of {STRATEGIES}, got {strategy!r}")


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, strategy: str, sync: bool):
    """Accumulate this micro-batch's gradient locally (``sync`` False) or reduce across processes.

    Only DDP skips a reduction: its local gradient is a full replica either way. FSDP2 reduce-scatters EVERY
    micro-batch: with the sync off it would keep each parameter's UNSHARDED fp32 gradient on every process until
    the step's last micro-batch (4 bytes x all parameters: 28 GiB per GPU for 7B), which its sharding exists to
    avoid (docs/scaling.md).
    """
    if strategy == "ddp" and not sync:
        with model.no_sync():
            yield
        return
    yield


@collective
def all_reduce_sums(sums: dict[str, float], tokens: int) -> tuple[dict[str, float], int]:
    """Metric sums and token counts added over the processes (every process gets the totals)."""
    # a process whose share was empty (fewer samples than processes) has no metric keys of its own
    names: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(names, sorted(sums))
    keys = sorted(set().union(*names))
    values = [sums.get(k, 0.0) for k in keys] + [float(tokens)]
    t = torch.tensor(values, dtype=torch.float64, device=group_device())  # NCCL: on the GPU, never the CPU
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t[:-1], strict=True)}, int(t[-1])


def trainable_names(policy: torch.nn.Module, prefix: str = "") -> list[str]:
    """Names of the trainable parameters, in the order the optimizer holds them (its integer ids);
    ``prefix`` names them as the :class:`LogprobModule` around the policy does (``"policy."``)."""
    return [prefix + n for n, p in policy.named_parameters() if p.requires_grad]


def load_sharded_optimizer(model, optimizer, policy, ckpt: Path) -> None:
    """Load a checkpoint's full optimizer state (one file by position, or several writers' by name) into an
    optimizer over FSDP-sharded parameters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    saved = read_optimizer_state(ckpt, trainable_names(policy))
    if saved is None:
        return
    by_name = {
        "state": {WRAPPED + n: v for n, v in saved["state"].items()},
        "param_groups": [{**g, "params": [WRAPPED + n for n in g["params"]]} for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _full(t: torch.Tensor) -> torch.Tensor:
    """The full tensor of a shard (an all-gather: every process calls it in the same order), else ``t``."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def gather_share(policy, optimizer, writers: int) -> tuple[list[list[str]], dict[str, int], dict, dict]:
    """This process's share of the next checkpoint, as full tensors on the CPU (issue #35, defect 5).

    Every process calls it (under FSDP each weight and moment is all-gathered, one at a time, in the same order
    everywhere); processes ``0 .. writers-1`` keep their share, split by bytes
    (:func:`~tango_steps.training.checkpoint_files.writer_shares`), the others nothing. Returns (the weight names
    of each share, each weight's element count, this share's weights, this share's optimizer state by parameter
    name with every parameter group).
    """
    rank = dist.get_rank()
    sd = weight_tensors(policy)
    numels = {n: t.numel() for n, t in sd.items()}
    share_names = writer_shares({n: t.numel() * t.element_size() for n, t in sd.items()}, writers)
    owner = {n: k for k, names in enumerate(share_names) for n in names}
    weights = {}
    for n, t in sd.items():
        full = _full(t.detach())
        if owner[n] == rank:
            weights[n] = full.to("cpu", copy=full.device.type == "cpu")  # a copy: never a view of a live parameter
    names = trainable_names(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    state = {}
    for n, p in zip(names, params, strict=True):
        mine = owner.get(n, 0) == rank  # (a trainable name is a weight's: a tied weight is one parameter)
        entry = {}
        for key, v in sorted(optimizer.state.get(p, {}).items()):
            full = _full(v) if isinstance(v, torch.Tensor) else v
            if mine:
                entry[key] = full.to("cpu", copy=True) if isinstance(full, torch.Tensor) else full
        if entry:
            state[n] = entry
    name_of = {id(p): n for n, p in zip(names, params, strict=True)}
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [name_of[id(p)] for p in g["params"]]}
        for g in optimizer.param_groups
    ]
    return share_names, numels, weights, {"state": state, "param_groups": groups}


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

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
Checkpoints stay the single-process format either way: rank 0 writes the FULL model and the
optimizer state keyed as a one-process optimizer keys it, so rollouts, `resume`, forks and a later
update with any P read them unchanged.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist

from tango_steps.training.checkpoint import causal_lm
from tango_steps.training.logprobs import LogprobModule

STRATEGIES = ("ddp", "fsdp")


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


def wrap_policy(policy: torch.nn.Module, strategy: str, settings, device) -> torch.nn.Module:
    """``policy`` inside a :class:`LogprobModule`, replicated (``ddp``) or sharded (``fsdp``)."""
    s = settings.section
    module = LogprobModule(policy, s.logprob_chunk_size, settings.temperature, s.logprob_backend)
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

"""Where an update runs: this process alone, or one process of a torchrun group (docs/method.md §6).

The update loop (:func:`tango_steps.training.update.rl_update`) is the same on one process and on many, as
nanoGPT's is with and without DDP: everything that differs sits behind one runtime object, never behind
``if world == 1`` at a call site. Both runtimes offer the same methods:

- ``prepare``: load the policy (and optimizer) of a checkpoint onto the device, wrapped for training;
- ``autocast`` / ``backward``: bf16 autocast when the update runs in bf16; backpropagate one loss;
- ``logprobs``: a micro-batch's token log-probs through the (possibly wrapped) model;
- ``micro_batches`` / ``frozen_micro_batches``: this process's share of a step, of the frozen passes;
- ``gradient_sync``: accumulate locally or reduce across processes in a micro-batch's backward;
- ``clip_grad_norm``: clip the (reduced) gradient, returning its norm;
- ``reduce``: the metric sums over processes;
- ``write_checkpoint``: the next checkpoint, written by this process alone or by every process on rank 0's
  machine in parallel, each its share (:mod:`tango_steps.training.checkpoint_files`).

:class:`OneProcess` is accelerate's ``Accelerator`` (bf16 on GPU, fp32 on CPU); :class:`ProcessGroup` runs
DDP or FSDP2 over the group (:mod:`tango_steps.training.distributed`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.distributed as dist

from tango_steps.training import checkpoint_files as files
from tango_steps.training import distributed
from tango_steps.training.batch import micro_batches, rank_micro_batches, step_slices
from tango_steps.training.checkpoint import (
    TrainerState,
    adamw,
    apply_optimizer_settings,
    causal_lm,
    checkpoint_bytes,
    finish_checkpoint,
    load_policy,
    write_checkpoint,
    write_checkpoint_share,
)
from tango_steps.training.launch import FAIL_RANK_ENV, in_update_group
from tango_steps.training.logprobs import sequence_logprobs
from tango_steps.training.settings import UpdateSettings


def runtime_for(settings: UpdateSettings) -> OneProcess | ProcessGroup:
    """The runtime of an update with ``settings`` in this process: its process group when this process is in one
    (torchrun started it), else this process alone. bf16 when asked, or on a GPU under ``dtype: auto``."""
    bf16 = settings.section.dtype == "bfloat16" or (settings.section.dtype == "auto" and torch.cuda.is_available())
    if in_update_group():  # a worker torchrun started: a process group, even of one (FORCE_GROUP_ENV)
        return ProcessGroup(bf16, settings)
    return OneProcess(bf16)


def ready_to_train(model, state: TrainerState, ckpt, settings: UpdateSettings, reference_model: str | None) -> None:
    """What every process does to a loaded policy before training: the reference override, the seed
    when the checkpoint has no RNG state, gradient checkpointing."""
    if reference_model is not None:
        state.reference_model = reference_model
    if not (Path(ckpt) / "rng_state.pt").exists():
        torch.manual_seed(settings.seed)
    if settings.section.gradient_checkpointing:
        causal_lm(model).gradient_checkpointing_enable()


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state: each update (and each warm-up trainer) is a single-process job
    with its own settings, and an earlier ``Accelerator`` in this process (a TRL trainer, another update) must
    not leak its settings in."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


class OneProcess:
    """The update on this process alone, through accelerate's ``Accelerator``."""

    rank = 0
    world = 1
    empty_forwards = False  # never an empty micro-batch: this process has every sample

    def __init__(self, bf16: bool) -> None:
        from accelerate import Accelerator

        reset_accelerate_state()
        self.bf16 = bf16
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if bf16 else "no")
        self.device = self.accelerator.device

    def prepare(self, ckpt, settings: UpdateSettings, reference_model: str | None, lora_base: str | None):
        """(model, policy, tokenizer, optimizer, state) of ``ckpt`` on this device; ``model`` is ``policy``
        prepared by accelerate."""
        policy, tok, optimizer, state = load_policy(ckpt, settings, self.device, lora_base=lora_base)
        ready_to_train(policy, state, ckpt, settings, reference_model)
        model, optimizer = self.accelerator.prepare(policy, optimizer)
        return model, self.accelerator.unwrap_model(model), tok, optimizer, state

    def autocast(self):
        """bf16 autocast when the update runs in bf16 (accelerate's), else nothing."""
        return self.accelerator.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate one micro-batch's loss."""
        self.accelerator.backward(loss)

    def logprobs(self, model, ids: torch.Tensor, attn: torch.Tensor, settings: UpdateSettings, with_entropy=True):
        """(B, L-1) token log-probs and entropies of the policy ``model``."""
        s = settings.section
        return sequence_logprobs(
            model, ids, attn, s.logprob_chunk_size, settings.temperature, s.logprob_backend, with_entropy
        )

    def micro_batches(self, mini: list[int], settings: UpdateSettings) -> list[list[int]]:
        """The micro-batches of one optimizer step's samples ``mini``."""
        return micro_batches(mini, settings.section.micro_batch_size)

    def frozen_micro_batches(self, n: int, settings: UpdateSettings) -> list[list[int]]:
        """The micro-batches of the frozen (old and reference) log-prob passes over the whole batch of ``n``."""
        return micro_batches(list(range(n)), settings.section.micro_batch_size)

    @staticmethod
    def frozen_model(model):
        """What the frozen passes run through: the model itself."""
        return model

    @staticmethod
    def gradient_sync(model, last: bool):
        """Nothing to reduce on one process."""
        return contextlib.nullcontext()

    def clip_grad_norm(self, model, max_norm: float) -> float:
        """Clip the gradient to ``max_norm``; its norm before clipping."""
        return float(self.accelerator.clip_grad_norm_(model.parameters(), max_norm))

    @staticmethod
    def reduce(sums: dict[str, float], tokens: int) -> tuple[dict[str, float], int]:
        """The metric sums and token count of the update: this process's."""
        return sums, tokens

    @staticmethod
    def write_checkpoint(out_dir: Path, model, policy, tok, optimizer, state: TrainerState, settings) -> None:
        """Write the next checkpoint (atomically: a temporary sibling renamed into place)."""
        write_checkpoint(out_dir, policy, tok, optimizer.state_dict(), state, settings)


class ProcessGroup:
    """The update on one process of a torchrun group: the policy wrapped for DDP or sharded by FSDP2, gradients
    averaged across processes once per optimizer step (:mod:`tango_steps.training.distributed`)."""

    def __init__(self, bf16: bool, settings: UpdateSettings) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.world != settings.processes:
            raise ValueError(f"update.processes is {settings.processes} but the process group has {self.world}")
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.bf16 = bf16
        self.strategy = settings.section.strategy
        # an FSDP forward all-gathers parameters: a process without samples still runs one (on a dummy sample)
        self.empty_forwards = self.strategy == "fsdp"

    def prepare(self, ckpt, settings: UpdateSettings, reference_model: str | None, lora_base: str | None):
        """(model, policy, tokenizer, optimizer, state) of ``ckpt`` on this process's device; ``model`` is the
        DDP- or FSDP-wrapped :class:`~tango_steps.training.logprobs.LogprobModule` around ``policy``."""
        fsdp = self.strategy == "fsdp"
        policy, tok, optimizer, state = load_policy(
            ckpt, settings, self.device, lora_base=lora_base, with_optimizer=not fsdp
        )
        ready_to_train(policy, state, ckpt, settings, reference_model)
        model = distributed.wrap_policy(policy, self.strategy, settings, self.device, self.bf16)
        if fsdp:  # AdamW over the shards; the saved full state is scattered onto them
            optimizer = adamw(policy, settings)
            distributed.load_sharded_optimizer(model, optimizer, policy, Path(ckpt))
            apply_optimizer_settings(optimizer, settings)
        return model, policy, tok, optimizer, state

    def autocast(self):
        """bf16 autocast on the process's device when the update runs in bf16, else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate; DDP and FSDP average the processes' gradients in their own hooks, so the loss is taken
        times P: their sum is the one-process gradient."""
        (loss * self.world).backward()

    @staticmethod
    def logprobs(model, ids: torch.Tensor, attn: torch.Tensor, settings: UpdateSettings, with_entropy=True):
        """Token log-probs and entropies through the wrapped module's forward (what DDP and FSDP hook)."""
        return model(ids, attn)

    def micro_batches(self, mini: list[int], settings: UpdateSettings) -> list[list[int]]:
        """This process's micro-batches of one step: samples ``mini[rank::world]``, padded with empty ones to the
        busiest process's count (every process must run as many forwards and backwards)."""
        return rank_micro_batches(mini, settings.section.micro_batch_size, self.rank, self.world)

    def frozen_micro_batches(self, n: int, settings: UpdateSettings) -> list[list[int]]:
        """Only this process's samples: its micro-batches of every step."""
        return [mb for mini in step_slices(n, settings) for mb in self.micro_batches(mini, settings)]

    def frozen_model(self, model):
        """FSDP's sharded module (its forward all-gathers); DDP's replica without its wrapper (no collective)."""
        return model if self.strategy == "fsdp" else model.module

    def gradient_sync(self, model, last: bool):
        """DDP: reduce gradients only in each step's last backward; FSDP: in every backward (gradients stay sharded)."""
        return distributed.gradient_sync(model, self.strategy, sync=last)

    @staticmethod
    def clip_grad_norm(model, max_norm: float) -> float:
        """Clip the reduced gradient to ``max_norm``; its norm before clipping, the same on every process."""
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor

    @staticmethod
    def reduce(sums: dict[str, float], tokens: int) -> tuple[dict[str, float], int]:
        """The metric sums and token counts added over the processes (every process gets the totals)."""
        return distributed.all_reduce_sums(sums, tokens)

    def write_checkpoint(self, out_dir: Path, model, policy, tok, optimizer, state: TrainerState, settings) -> None:
        """Write the next checkpoint: a collective, every process calls it and returns once the checkpoint exists.

        Full fine-tuning: each process on rank 0's machine writes a share of the weights and optimizer state in
        parallel (FSDP gathers each weight in turn, the share's owner keeps it; issue #35, defect 5) into a folder
        that rank 0 made beside ``out_dir``, then rank 0 writes the small files and renames the folder into place.
        A process that fails is seen by torchrun, which stops the others; the launcher removes the folder
        (:func:`tango_steps.training.launch.remove_staging`). LoRA (an adapter: small) is gathered and written by
        rank 0.
        """
        if settings.section.lora is not None:
            model_state, optimizer_state = distributed.full_states(model, optimizer, policy, self.strategy)
            if self.rank == 0:
                write_checkpoint(out_dir, policy, tok, optimizer_state, state, settings, model_state)
            dist.barrier()  # no process reports success before the checkpoint exists
            return
        writers = files.local_writers(self.world)
        share_names, numels, weights, optimizer_state = distributed.gather_share(policy, optimizer, writers)
        if writers == 1:  # one writer: the one-process layout, optimizer.pt by position
            optimizer_state = files.optimizer_state_by_position(optimizer_state, distributed.trainable_names(policy))
        staging: list[str | None] = [None]
        if self.rank == 0:  # fp32 weights and, after an update, two AdamW moments of the same size
            fp32 = 4 * sum(numels.values())
            staging[0] = str(files.start_staging(out_dir, checkpoint_bytes(fp32, 2 * fp32, settings)))
        dist.broadcast_object_list(staging)
        tmp = Path(staging[0])
        hashes = {}
        if os.environ.get(FAIL_RANK_ENV) == f"{self.rank}:write":  # test-only: a writer dies mid-checkpoint
            raise RuntimeError(f"failure injected by {FAIL_RANK_ENV}={self.rank}:write (test-only switch)")
        if self.rank < writers:
            hashes = write_checkpoint_share(tmp, weights, optimizer_state, self.rank, writers, settings)
        del weights, optimizer_state
        everyone: list[dict] = [{} for _ in range(self.world)]
        dist.all_gather_object(everyone, hashes)
        if self.rank == 0:
            merged = {k: v for h in everyone for k, v in h.items()}
            with files.removed_on_error(tmp):
                finish_checkpoint(tmp, policy, tok, state, settings, share_names, numels, merged)
                files.publish_staging(tmp, out_dir)
        dist.barrier()  # no process reports success before the checkpoint exists


Runtime = OneProcess | ProcessGroup

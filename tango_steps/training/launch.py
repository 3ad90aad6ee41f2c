"""Starting one update's processes (docs/method.md §6): a spec file the workers read, torchrun on this machine or as
one node of several, their output passed on, their metrics read back.

Any launcher can start the workers (:mod:`tango_steps.training.worker`) on a spec: ``torchrun`` on one machine
(:func:`launch_update`), ``@torchrun`` across Metaflow ``@parallel`` nodes.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

FAIL_RANK_ENV = "TANGO_FAIL_UPDATE_RANK"  # test-only switch: that process of a multi-process update raises
# (at its start; "<rank>:write": while it writes its share of the checkpoint)
# check switch: an update with ``processes: 1`` still goes through torchrun and a process group of one, so the
# multi-process code path (its collectives on NCCL, FSDP2's wrapping) can be checked on a machine with one GPU
FORCE_GROUP_ENV = "TANGO_FORCE_PROCESS_GROUP"


# set in the environment of the workers this module starts: "this process is one of an update's process group".
# Not ``dist.is_initialized()``: an in-process vLLM engine initialises a process group of its own
WORKER_ENV = "TANGO_UPDATE_WORKER"


def in_update_group() -> bool:
    """Whether this process is a worker of a multi-process update (started by :func:`run_workers`)."""
    return os.environ.get(WORKER_ENV) == "1"


def needs_launch(settings) -> bool:
    """Whether an update with ``settings`` runs in processes of its own (torchrun) rather than in this one."""
    return (settings.processes > 1 or os.environ.get(FORCE_GROUP_ENV) == "1") and not in_update_group()


# What the checkpoint write may take before the other processes, waiting at a barrier, give up: NCCL's default
# collective timeout is 10 minutes, and a 7B checkpoint is ~106 GB (fp32 weights + two AdamW moments + the bf16
# serving copy). The processes of rank 0's machine write it in parallel, each a share, but they share one disk:
# sized from ALL the bytes at a slow disk's rate, with a margin, never below the default.
WRITE_BYTES_PER_SECOND = 100e6  # a network disk's sustained write (a local NVMe does 1-3 GB/s)
MIN_TIMEOUT_SECONDS = 600.0


def collective_timeout_seconds(ckpt: str | Path, lora: bool = False) -> float:
    """The process group's timeout for an update from ``ckpt``: room to write the next checkpoint on one disk.

    Full fine-tuning writes the weights and, once there is an optimizer, two AdamW moments of the same size (3 x
    the fp32 weights of ``ckpt``, :func:`~tango_steps.training.checkpoint.master_weights`; the serving copy beside
    them is smaller); LoRA writes an adapter (the weights once bound it).
    """
    from tango_steps.training.checkpoint import master_weights

    weights = sum(f.stat().st_size for f in master_weights(ckpt).glob("*.safetensors"))
    written = weights if lora else 3 * weights
    return max(MIN_TIMEOUT_SECONDS, 3.0 * written / WRITE_BYTES_PER_SECOND)


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
            "settings": settings.to_dict(),
            "out_dir": str(out_dir),
            "reference_model": reference_model,
            "lora_base": lora_base,
            "metrics": str(Path(folder) / "metrics.json"),
            "timeout_seconds": collective_timeout_seconds(ckpt, settings.section.lora is not None),
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
        log(f"update on {settings.processes} processes ({settings.section.strategy}), torchrun")
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
    return [*cmd, "-m", "tango_steps.training.worker", str(spec)]


def run_workers(cmd: list[str], log, what: str, out_dir: Path) -> None:
    """Run ``cmd`` (a torchrun), pass rank 0's progress lines to ``log``; raise with the output's tail
    if it fails (``out_dir`` is then unwritten: rank 0 writes it atomically, last)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", WORKER_ENV: "1"}
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
        from tango_steps.training.checkpoint_files import remove_staging

        remove_staging(out_dir)  # the writers' half-written checkpoint, if they had started it
        raise RuntimeError(f"{what} exited with {rc}; '{out_dir}' was not written. Its last lines:\n" + "\n".join(tail))

"""Which GPUs a step's process may use when Metaflow runs several of them side by side on one machine.

A round's sampling shards (a ``foreach``) and an update's ``@parallel`` nodes are separate processes. On a
cluster each is a pod or a job with GPUs of its own; run locally they are processes of one machine, and
nothing narrows ``CUDA_VISIBLE_DEVICES`` for them (torchrun does not either): every shard's engine and every
node's ranks would land on the same first GPUs. :func:`pin_local_devices` gives process ``index`` of
``groups`` its own ``per_group`` devices, or refuses a layout that needs more GPUs than the machine shows
(docs/scaling.md). It must run before anything in the process initialises CUDA: the driver reads
``CUDA_VISIBLE_DEVICES`` once, when it starts.

The rule itself, :func:`local_devices`, is a pure function of its arguments.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

# Metaflow's cluster runtimes set these in every task they start (metaflow/plugins/kubernetes/kubernetes.py,
# plugins/aws/batch/batch.py, argo_workflows.py, airflow.py); a local run has none of them (its
# METAFLOW_RUNTIME_ENVIRONMENT is unset, read as "local", as parallel_decorator.py does).
RUNTIME_ENV = "METAFLOW_RUNTIME_ENVIRONMENT"
KUBERNETES_ENV = "METAFLOW_KUBERNETES_WORKLOAD"
BATCH_ENV = "AWS_BATCH_JOB_ID"


def on_cluster(environ: Mapping[str, str]) -> bool:
    """Whether this task runs where Metaflow's Kubernetes or AWS Batch runtime gave it devices of its own."""
    return environ.get(RUNTIME_ENV, "local") != "local" or KUBERNETES_ENV in environ or BATCH_ENV in environ


def visible_list(visible: str | int) -> list[str]:
    """The devices a process sees: ``CUDA_VISIBLE_DEVICES``'s entries (indices or ``GPU-...`` UUIDs, kept as
    written) or, given a device count, ``0 .. count-1``.

    As CUDA does, the list ends at the first invalid entry: ``""`` and ``"-1"`` show no device.
    """
    if isinstance(visible, int):
        return [str(i) for i in range(visible)]
    devices = []
    for entry in visible.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        devices.append(entry)
    return devices


def local_devices(
    index: int, groups: int, per_group: int, visible: str | int, cluster: bool, fields: tuple[str, str]
) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` value of process ``index`` of ``groups`` that share one machine, each
    using ``per_group`` devices; None where nothing is to be set.

    Args:
        index / groups: this shard (or node) and how many run side by side.
        per_group: the devices each uses (a shard: ``rollout.tensor_parallel_size``; a node:
            ``update.processes``).
        visible: ``CUDA_VISIBLE_DEVICES`` as set, or the machine's device count when it is not set.
        cluster: the task runs on Kubernetes or Batch (:func:`on_cluster`): its pod or job has devices
            of its own, so nothing is narrowed (None).
        fields: the settings that give ``groups`` and ``per_group`` (named in the refusal).

    Returns None on a cluster and where no device is visible (a CPU run: the processes share the CPU);
    else process ``index``'s contiguous slice of the visible devices, as written there. Raises
    ValueError, naming ``fields``, when ``groups x per_group`` is more than the visible devices.
    """
    if not 0 <= index < groups:
        raise ValueError(f"{fields[0]}: process index {index} is not in [0, {groups})")
    if per_group < 1:
        raise ValueError(f"{fields[1]} must be >= 1, got {per_group}")
    if cluster:
        return None
    devices = visible_list(visible)
    if not devices:
        return None
    need = groups * per_group
    if need > len(devices):
        seen = f"CUDA_VISIBLE_DEVICES={visible!r}" if isinstance(visible, str) else "the machine's device count"
        raise ValueError(
            f"{fields[0]} x {fields[1]} = {groups} x {per_group} = {need} GPUs, but {len(devices)} are visible "
            f"({seen}): run locally, they share this machine, each on GPUs of its own. Lower {fields[0]} or "
            f"{fields[1]}, or run on a cluster (--with kubernetes), where each gets GPUs of its own"
        )
    return ",".join(devices[index * per_group : (index + 1) * per_group])


def device_count() -> int:
    """The machine's CUDA devices, counted without initialising CUDA.

    Before CUDA is initialised, ``torch.cuda.device_count`` counts with NVML and does not cache the count
    (torch/cuda/__init__.py: "the number of devices can change due to changes to CUDA_VISIBLE_DEVICES
    setting prior to CUDA initialization"), so a ``CUDA_VISIBLE_DEVICES`` set after it still applies.
    A CPU build of torch counts 0.
    """
    import torch

    return torch.cuda.device_count()


def pin_local_devices(
    index: int,
    groups: int,
    per_group: int,
    fields: tuple[str, str],
    log: Callable[[str], Any] = print,
    environ: MutableMapping[str, str] | None = None,
) -> str | None:
    """Narrow this process to its own devices (:func:`local_devices`) by setting ``CUDA_VISIBLE_DEVICES``;
    return what was set, or None where nothing was (a cluster, a CPU run).

    Call it first in a shard's or node's work. A process whose CUDA is already initialised is refused:
    the new value would not apply to it, and the process would use the first GPUs while claiming others.
    """
    environ = os.environ if environ is None else environ
    cluster = on_cluster(environ)
    if cluster:  # the pod or job's devices are its own: nothing to count or narrow
        return local_devices(index, groups, per_group, 0, cluster, fields)
    visible = environ["CUDA_VISIBLE_DEVICES"] if "CUDA_VISIBLE_DEVICES" in environ else device_count()
    devices = local_devices(index, groups, per_group, visible, cluster, fields)
    if devices is None:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError(
            f"CUDA is already initialised in this process: {fields[0]} {index} cannot be narrowed to GPUs "
            f"{devices} any more (pin_local_devices must run before anything uses CUDA)"
        )
    environ["CUDA_VISIBLE_DEVICES"] = devices
    log(f"{fields[0]}: process {index} of {groups} on GPUs {devices} (CUDA_VISIBLE_DEVICES; a local run)")
    return devices


def pin_update_node(cfg, role: str, index: int, nodes: int, log: Callable[[str], Any] = print) -> str | None:
    """:func:`pin_local_devices` for node ``index`` of a ``role`` update's ``nodes`` ``@parallel`` nodes: each
    node's ``{role}_update.processes`` ranks on its own GPUs. The ranks are torchrun's children and inherit the
    narrowed list; each takes device ``LOCAL_RANK`` of it (``training.runtime``)."""
    section = f"{role}_update"
    per_node = getattr(cfg, section).processes
    return pin_local_devices(index, nodes, per_node, (f"{section}.nodes", f"{section}.processes"), log)

"""Issue #35, defect 7: a local run's sampling shards and @parallel update nodes (processes of one machine) each get
GPUs of their own through CUDA_VISIBLE_DEVICES, set before their first engine starts, or the layout is refused
naming its fields; on a cluster (a pod or job each) nothing is narrowed (tango_steps.rollout.devices)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import tango_steps.round.sampling as sampling
from tango_steps.config import TangoConfig
from tango_steps.rollout.devices import local_devices, on_cluster, pin_local_devices, pin_update_node, visible_list
from tango_steps.round.plan import round_plan
from tango_steps.round.shards import sample_shard
from tango_steps.training.checkpoint import init_checkpoint
from tango_steps.training.settings import UpdateSettings

SHARDS = ("rollout.shards", "rollout.tensor_parallel_size")
NODES = ("generator_update.nodes", "generator_update.processes")


@pytest.mark.parametrize(
    ("index", "groups", "per_group", "visible", "expected"),
    [
        (0, 4, 1, 4, "0"),
        (3, 4, 1, 4, "3"),
        (1, 4, 2, 8, "2,3"),  # the 7B recipe's layout: 4 shards x TP 2 on 8 GPUs
        (3, 4, 2, 8, "6,7"),
        (1, 2, 2, "4,5,6,7", "6,7"),  # a machine already narrowed: its own numbering is kept
        (1, 2, 1, "GPU-aa, GPU-bb", "GPU-bb"),  # UUIDs as written
        (0, 2, 1, "3,1,-1,0", "3"),  # CUDA's list ends at the first invalid entry
        (1, 3, 1, 3, "1"),
    ],
)
def test_each_local_process_gets_its_own_devices(index, groups, per_group, visible, expected):
    assert local_devices(index, groups, per_group, visible, False, SHARDS) == expected


def test_the_slices_of_all_processes_cover_distinct_devices():
    slices = [local_devices(k, 4, 2, "0,1,2,3,4,5,6,7", False, SHARDS) for k in range(4)]
    devices = [d for s in slices for d in s.split(",")]
    assert sorted(devices) == [str(i) for i in range(8)] and len(set(devices)) == 8


@pytest.mark.parametrize("visible", [0, "", "-1"])
def test_no_visible_device_pins_nothing(visible):
    """A CPU run (tests, CI): the processes share the CPU; nothing to narrow and nothing refused."""
    assert local_devices(1, 4, 2, visible, False, SHARDS) is None


def test_a_cluster_pins_nothing():
    """Kubernetes and Batch give each pod its own GPUs: even a layout a single machine could not hold passes."""
    assert local_devices(3, 4, 2, "0", True, SHARDS) is None


@pytest.mark.parametrize(("index", "visible"), [(0, 4), (2, "0,1,2,3")])
def test_more_gpus_than_visible_is_refused_by_every_process(index, visible):
    with pytest.raises(ValueError, match=r"rollout\.shards x rollout\.tensor_parallel_size = 3 x 2 = 6 GPUs, but 4"):
        local_devices(index, 3, 2, visible, False, SHARDS)
    with pytest.raises(ValueError, match=r"generator_update\.nodes x generator_update\.processes = 2 x 4 = 8 GPUs"):
        local_devices(index % 2, 2, 4, visible, False, NODES)


def test_bad_indices_are_refused():
    with pytest.raises(ValueError, match=r"rollout\.shards: process index 4 is not in \[0, 4\)"):
        local_devices(4, 4, 1, 8, False, SHARDS)
    with pytest.raises(ValueError, match=r"rollout\.tensor_parallel_size must be >= 1"):
        local_devices(0, 4, 0, 8, False, SHARDS)


def test_visible_list():
    assert visible_list(3) == ["0", "1", "2"]
    assert visible_list(" 2, 5 ") == ["2", "5"]
    assert visible_list("") == []


@pytest.mark.parametrize(
    ("environ", "cluster"),
    [
        ({}, False),
        ({"METAFLOW_RUNTIME_ENVIRONMENT": "local"}, False),
        ({"METAFLOW_RUNTIME_ENVIRONMENT": "kubernetes"}, True),
        ({"METAFLOW_RUNTIME_ENVIRONMENT": "aws-batch"}, True),
        ({"METAFLOW_KUBERNETES_WORKLOAD": "1"}, True),
        ({"AWS_BATCH_JOB_ID": "abc"}, True),
    ],
)
def test_on_cluster(environ, cluster):
    assert on_cluster(environ) is cluster


def test_the_cluster_markers_are_the_ones_metaflow_sets():
    """The names are read from the installed Metaflow's own runtimes: a rename there fails here."""
    root = Path(importlib.util.find_spec("metaflow").origin).parent / "plugins"
    k8s = (root / "kubernetes" / "kubernetes.py").read_text()
    batch = (root / "aws" / "batch" / "batch.py").read_text()
    parallel = (root / "parallel_decorator.py").read_text()
    assert '.environment_variable("METAFLOW_KUBERNETES_WORKLOAD", 1)' in k8s
    assert '.environment_variable("METAFLOW_RUNTIME_ENVIRONMENT", "kubernetes")' in k8s
    assert '.environment_variable("METAFLOW_RUNTIME_ENVIRONMENT", "aws-batch")' in batch
    assert 'os.environ.get("METAFLOW_RUNTIME_ENVIRONMENT", "local") == "local"' in parallel  # local @parallel


def test_pinning_sets_the_environment_and_says_so():
    environ = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    said = []
    assert pin_local_devices(1, 2, 2, SHARDS, said.append, environ) == "2,3"
    assert environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert said == ["rollout.shards: process 1 of 2 on GPUs 2,3 (CUDA_VISIBLE_DEVICES; a local run)"]
    cluster = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "METAFLOW_RUNTIME_ENVIRONMENT": "kubernetes"}
    assert pin_local_devices(1, 2, 2, SHARDS, said.append, cluster) is None
    assert cluster["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def test_pinning_counts_the_machines_devices_when_nothing_narrows_them():
    """Unset CUDA_VISIBLE_DEVICES: torch's count (NVML before CUDA starts); a CPU build counts 0, so nothing is set."""
    environ: dict[str, str] = {}
    assert torch.cuda.device_count() == 0  # this machine: a CPU build
    assert pin_local_devices(1, 2, 1, SHARDS, print, environ) is None
    assert "CUDA_VISIBLE_DEVICES" not in environ


def test_pinning_after_cuda_started_is_refused(monkeypatch):
    """Once CUDA is initialised the driver has read CUDA_VISIBLE_DEVICES: a later value would claim GPUs the process
    does not use. (``torch.cuda.is_initialized`` is faked: it is what torch reports after its lazy CUDA init.)"""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    environ = {"CUDA_VISIBLE_DEVICES": "0,1"}
    with pytest.raises(RuntimeError, match=r"CUDA is already initialised in this process: rollout\.shards 1"):
        pin_local_devices(1, 2, 1, SHARDS, print, environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == "0,1"


@pytest.fixture
def local_run(monkeypatch):
    """This process as a local Metaflow task: none of the cluster runtimes' markers."""
    for name in ("METAFLOW_RUNTIME_ENVIRONMENT", "METAFLOW_KUBERNETES_WORKLOAD", "AWS_BATCH_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def test_an_update_node_is_pinned_to_its_processes_gpus(local_run, monkeypatch):
    """Node 1 of 2 local @parallel nodes of 2 processes each: GPUs 2,3, which its torchrun's ranks inherit."""
    cfg = TangoConfig.model_validate({"generator_update": {"processes": 2, "nodes": 2}})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    with pytest.raises(ValueError, match=r"generator_update\.nodes x generator_update\.processes = 2 x 2 = 4 GPUs"):
        pin_update_node(cfg, "generator", 0, 2)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert pin_update_node(cfg, "generator", 1, 2) == "2,3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


# ---- the shard stage itself: pinned before its first engine starts (the tiny model on the HF engine, on CPU)

CFG = TangoConfig.model_validate(
    {
        "rollout": {"engine": "hf", "max_prompt_tokens": 128, "chunk_samples": 4, "shards": 2,
                    "tensor_parallel_size": 2},
        "generator_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 8},
        "verifier_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 8},
        "batch": {"generator_prompts": 4, "verifier_prompts": 4},
    }
)  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_model_dir):
    return init_checkpoint(str(tiny_model_dir), tmp_path_factory.mktemp("devices") / "ckpt", UpdateSettings.of())


@pytest.fixture
def engines_seen(local_run, monkeypatch):
    """Each engine the stage starts, with the CUDA_VISIBLE_DEVICES it started under (the real engines run)."""
    seen: list[tuple[str, str | None]] = []
    real = sampling.engine_for

    def engine_for(cfg, role, model_dir, seed):
        seen.append((role, os.environ.get("CUDA_VISIBLE_DEVICES")))
        return real(cfg, role, model_dir, seed)

    monkeypatch.setattr(sampling, "engine_for", engine_for)
    return seen


def test_a_shard_task_runs_its_engines_on_its_own_gpus(ckpt, engines_seen, monkeypatch):
    """Shard 1 of 2 with tensor parallel 2 on a machine showing 4 GPUs: both its engines (generator, then
    verifier) start with GPUs 2,3, and the process keeps them."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    plan = round_plan(CFG, 2)  # a verifier round: the verifier judges the shard's solutions, N = 2 each
    part = sample_shard(CFG, plan, ckpt, ckpt, (1, 2), log=lambda m: None, pin_devices=True)
    assert engines_seen == [("generator", "2,3"), ("verifier", "2,3")]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert len(part.rollouts) == 4 and len(part.judgments) == 8


def test_a_shard_layout_the_machine_cannot_hold_is_refused_before_any_engine(ckpt, engines_seen, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    plan = round_plan(CFG, 2)
    with pytest.raises(ValueError, match=r"rollout\.shards x rollout\.tensor_parallel_size = 2 x 2 = 4 GPUs, but 3"):
        sample_shard(CFG, plan, ckpt, ckpt, (0, 2), log=lambda m: None, pin_devices=True)
    assert engines_seen == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2"


def test_shards_in_one_process_are_not_pinned(ckpt, engines_seen, monkeypatch):
    """round.in_process runs the shards one after another in one process: no pinning there (the default)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    plan = round_plan(CFG, 2)
    sample_shard(CFG, plan, ckpt, ckpt, (1, 2), log=lambda m: None)
    assert engines_seen == [("generator", "0,1,2,3"), ("verifier", "0,1,2,3")]

"""Shared fixtures: a tiny random Qwen2 checkpoint built offline in seconds."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# every multi-process update in the tests checks that its collectives take tensors on the group's device (NCCL
# would refuse a CPU tensor; gloo takes any): tango_steps.training.distributed.STRICT_COLLECTIVES_ENV
os.environ.setdefault("TANGO_STRICT_COLLECTIVES", "1")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Two workers each start torch processes with the default thread count: OpenMP threads that
    # spin while waiting would take the cores the other worker's threads need. Numbers are unchanged.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# pytest-xdist (README: `-n 2`): a module whose tests share a costly module-scoped fixture runs on
# one worker, so the fixture is built once (`pytest_xdist_make_scheduler`); every other test goes to
# whichever worker is free. The baseline TangoFlow run is shared across workers instead (`baseline`).
ONE_WORKER_MODULES = ("test_forks.py", "test_ablation_flow.py", "test_distributed.py", "test_rollout.py")
# Tests that load the real SmolLM2-135M: one at a time, on one worker. Each needs several GB of memory
# and writes 0.5-4 GB of checkpoints; two at once filled a CI disk (torch.save: "unexpected pos").
ONE_AT_A_TIME_PREFIX = "test_smollm2_"
FIRST_MODULES = ("test_flows.py", "test_forks.py", "test_ablation_flow.py")  # minutes each: started first


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: unknown (and unused) without it
def pytest_xdist_make_scheduler(config, log):
    """xdist's load-by-scope scheduler, with a scope per test except ONE_WORKER_MODULES' (a scope each)
    and the SmolLM2 tests' (one scope for all: ``ONE_AT_A_TIME_PREFIX``).

    (Not ``xdist_group`` marks: pytest-xdist 3.8 tags a grouped test by rewriting ``item._nodeid``,
    which pytest 9.2 no longer reads, so the marks group nothing.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, name = nodeid.partition("::")
            if name.startswith(ONE_AT_A_TIME_PREFIX):
                return ONE_AT_A_TIME_PREFIX
            return path if Path(path).name in ONE_WORKER_MODULES else nodeid

    config.option.loadscopereorder = False  # keep pytest_collection_modifyitems' order (long tests first)
    return ModuleGroups(config, log)


def pytest_collection_modifyitems(config, items):
    """Order the long Metaflow tests first (the scheduler hands out scopes in this order)."""
    # The first user of the shared baseline starts it at once; its other users come after every
    # test that does not need it, so no worker waits on it.
    first_baseline = next((i for i in items if "baseline" in i.fixturenames), None)

    def order(item) -> tuple[int, int]:
        module = FIRST_MODULES.index(item.path.name) if item.path.name in FIRST_MODULES else len(FIRST_MODULES)
        baseline = 0 if item is first_baseline else (2 if "baseline" in item.fixturenames else 1)
        return (module, baseline if module == 0 else 0)

    items.sort(key=order)  # stable: the file order within each class


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, warmed):
    """An uninterrupted 2-round TangoFlow run of ``test_flows.SMALL`` (a verifier round, then a generator
    round): its Datastore and final results. Run once per session, shared by every xdist worker (the
    tests only read it)."""
    from flowtools import SMALL, Datastore, _ok

    def build(folder: Path) -> dict:
        ds = Datastore(folder)
        _ok(ds.flow("--config", "config", str(ds.config(SMALL)), "run"))
        return {"root": str(folder), "final": ds.query("final_run")}

    built = shared_once(tmp_path_factory, "baseline", build)
    return Datastore(Path(built["root"])), built["final"]


def shared_once(tmp_path_factory, name: str, build):
    """``build(folder)``'s JSON-able result, computed once per test session even across xdist workers
    (an exclusive lock in the session's common temporary folder); later callers read it back."""
    import json

    from tango_steps.atomic import exclusive_lock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's basetemp is a child of the session's
    folder, result = root / name, root / f"{name}.json"
    with exclusive_lock(root / f"{name}.lock", f"waiting for another worker's {name}"):
        if not result.exists():
            value = build(folder)
            result.write_text(json.dumps(value))
    return json.loads(result.read_text())


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tango_steps.models.tiny import build_tokenizer, tokenizer_corpus
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template

    return build_tokenizer(tokenizer_corpus(get_task("arithmetic"), get_template("compact"), n=300), vocab_size=384)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A randomly initialised 2-layer Qwen2 (hidden 64, head_dim 32, untied) saved as safetensors."""
    from tango_steps.models.tiny import TinyModelSpec, build_model, save_pretrained_atomic

    spec = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=128, seed=3)
    model = build_model(spec, len(tiny_tokenizer), tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id)
    return save_pretrained_atomic(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def warmed():
    """The tiny default's warmed-up models (built once per TANGO_CACHE, minutes on 2 cores)."""
    from tango_steps.training.warmup import WarmupSettings, warmed_up_models

    return warmed_up_models(WarmupSettings())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.1)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


@pytest.fixture
def s3_server():
    """A real local S3 server (moto's server mode) on a free port; its URL."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(exe).exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]'; .ci/run installs it)")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def metadata_service(tmp_path):
    """A real Metaflow metadata service (``metaflow-local-service``'s app under uvicorn) on a free port,
    recording into ``tmp_path/service``; its URL."""
    pytest.importorskip("metaflow_local_service", reason="metaflow-local-service is not installed (the dev extra)")
    port = _free_port()
    code = (
        "import uvicorn\nfrom metaflow_local_service.server import create_app\n"
        f"uvicorn.run(create_app({str(tmp_path / 'service')!r}), host='127.0.0.1', port={port}, log_level='warning')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(mb)``: a size-limited tmpfs mounted for the test (issue #17's full disk), unmounted
    after it. Mounting needs root (CAP_SYS_ADMIN), which CI's machine gives; elsewhere the test is
    skipped with that reason (shown by ``-ra``)."""
    mounted: list[Path] = []

    def mount(mb: int) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)], capture_output=True, text=True
        )
        if out.returncode != 0:
            pytest.skip(f"cannot mount a {mb} MB tmpfs here ({out.stderr.strip()}): the full-disk tests need root")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
